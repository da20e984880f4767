"""Resuming from damaged checkpoints: the newest that reads back whole wins,
with a warning naming the damaged file; none readable is a one-line error.

A one-layer network stands in for the MTL: the checkpoint machinery does not
depend on what is trained, and it keeps every run a fraction of a second.
"""
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import config
from conftest import ROOT, TINY, run_python
from utils import distribute, settings
from utils.train import state as train_state, tasks
from utils.train.loop import Loop
from utils.train.trainer import Trainer
from utils.errors import CheckpointError


class TinyTask(tasks.MTLTask):
    """The MTL stage with a one-layer network and no validation."""

    def __init__(self, cfg, best_path):
        super().__init__(cfg)
        self._best = best_path

    def weights_path(self, validated=True):
        return self._best

    def build_model(self):
        self.mtl = keras.Sequential([keras.Input((config.cropSize, config.cropSize, 3)),
                                     keras.layers.Conv2D(1, 3, padding='same')])
        return self.mtl

    def loss_fns(self):
        def terms(batch, training):
            error = tf.abs(self.mtl(batch['image'], training=training) - batch['height'])
            return {'dsm': tf.reduce_mean(error, axis=[1, 2, 3])}
        return terms, lambda t: t['dsm']

    def validate(self, strategy):
        return None


def tiny_loop(tmp_path):
    return Loop(Trainer(TinyTask(config, str(tmp_path / 'best.weights.h5')),
                        distribute.get_strategy(config)))


@pytest.fixture
def two_checkpoints(tmp_path, synthetic_root):
    """A finished tiny run with train_state/ckpt-1 and ckpt-2; returns the folder."""
    settings.apply(TINY + [f'shortcut_path={synthetic_root}', f'checkpoint_root={tmp_path}',
                           'batch_size=4', 'steps_per_execution=1', 'checkpoint_every=1',
                           'max_steps=2'])
    tiny_loop(tmp_path).fit()
    state = tmp_path / 'synthetic' / 'mtl' / 'train_state'
    assert [os.path.basename(p) for p in tf.train.get_checkpoint_state(
        str(state)).all_model_checkpoint_paths] == ['ckpt-1', 'ckpt-2']
    return state


def truncate_data(prefix):
    data, = glob.glob(f'{prefix}.data-*')
    with open(data, 'r+b') as f:
        f.truncate(os.path.getsize(data) // 2)
    return os.path.basename(data)


def spoil_index(prefix):
    with open(f'{prefix}.index', 'r+b') as f:
        content = bytearray(f.read())
        content[-48:] = bytes(48)          # the table footer: no valid index any more
        f.seek(0)
        f.write(content)
    return os.path.basename(prefix) + '.index'


def saved_values(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k not in ('_CHECKPOINTABLE_OBJECT_GRAPH',)
            and not k.startswith('save_counter')}


@pytest.mark.parametrize('damage', ['truncated data', 'spoilt index', 'half-read'])
def test_damaged_newest_checkpoint_resumes_from_the_one_before(
        two_checkpoints, tmp_path, capsys, monkeypatch, damage):
    state = str(two_checkpoints)
    first, newest = os.path.join(state, 'ckpt-1'), os.path.join(state, 'ckpt-2')
    expected = saved_values(first)
    assert not all(np.array_equal(v, saved_values(newest)[k]) for k, v in expected.items())
    if damage == 'spoilt index':
        name = spoil_index(newest)
    else:
        name = truncate_data(newest)
    if damage == 'half-read':
        # Skip the check before restoring: the restore itself fails part way,
        # after assigning some variables (the step among them) from ckpt-2.
        monkeypatch.setattr(train_state, '_damage', lambda prefix: None)
        name = 'ckpt-2.*'
    capsys.readouterr()

    loop = tiny_loop(tmp_path)
    loop.restore_or_start()
    out = capsys.readouterr().out
    assert f"warning: {name} in {state} is damaged" in out
    assert f"resuming from {first} at step 1" in out
    # Every variable (weights, Adam slots, counters) is ckpt-1's, whatever
    # the failed attempt had assigned: write them out and compare.
    restored = saved_values(loop.state.checkpoint.write(str(tmp_path / 'now' / 'ckpt')))
    assert restored.keys() == expected.keys() and len(expected) > 5
    for key, value in expected.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    # The manager forgot the damaged one: the run goes on and ends with two
    # good checkpoints, without a second warning.
    assert loop.state.manager.checkpoints == [first]
    monkeypatch.undo()
    config.max_steps = 3
    capsys.readouterr()
    loop = tiny_loop(tmp_path)
    loop.fit()
    out = capsys.readouterr().out
    assert 'warning' not in out and f"resuming from {first} at step 1" in out
    assert loop.state.manager.checkpoints == [newest, os.path.join(state, 'ckpt-3')]
    assert all(train_state._damage(p) is None for p in loop.state.manager.checkpoints)


def test_a_loop_saves_before_fit(tmp_path):
    """Everything a save needs is built with the loop."""
    settings.apply(TINY + [f'checkpoint_root={tmp_path}'])
    loop = tiny_loop(tmp_path)
    loop.save()
    assert loop.state.manager.checkpoints == [os.path.join(loop.dir, 'train_state', 'ckpt-0')]
    assert loop.history == []


def test_no_readable_checkpoint_is_a_one_line_error(two_checkpoints, tmp_path):
    state = str(two_checkpoints)
    spoil_index(os.path.join(state, 'ckpt-2'))
    truncate_data(os.path.join(state, 'ckpt-1'))
    with pytest.raises(CheckpointError) as caught:
        tiny_loop(tmp_path).restore_or_start()
    message = str(caught.value)
    assert '\n' not in message
    assert message.startswith(f"no readable checkpoint in {state}: ckpt-2.index, "
                              f"ckpt-1.data-00000-of-00001 damaged")
    assert 'resume = False' in message


def test_lost_bookkeeping_file_still_resumes(two_checkpoints, tmp_path):
    os.remove(two_checkpoints / 'checkpoint')
    loop = tiny_loop(tmp_path)
    loop.restore_or_start()
    assert int(loop.trainer.step.numpy()) == 2
    assert loop.state.manager.checkpoints == [str(two_checkpoints / f'ckpt-{n}') for n in (1, 2)]


def test_script_stops_with_the_error_line(tmp_path, synthetic_root):
    """train_mtl.py on a run folder whose only checkpoint is garbage."""
    state = tmp_path / 'synthetic' / 'mtl' / 'train_state'
    state.mkdir(parents=True)
    (state / 'ckpt-5.index').write_bytes(b'\0' * 100)
    (state / 'ckpt-5.data-00000-of-00001').write_bytes(b'\0' * 100)
    result = run_python([os.path.join(ROOT, 'train_mtl.py'), *[
        f'--set={s}' for s in TINY + [f'shortcut_path={synthetic_root}',
                                      f'checkpoint_root={tmp_path}']]], stand_in=True)
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(error) == 1
    assert error[0].startswith(f"error: no readable checkpoint in {state}: "
                               f"ckpt-5.index damaged (")
    assert 'resume = False' in error[0]
