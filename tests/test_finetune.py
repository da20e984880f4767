"""Fine-tuning (mtl_init_weights, dae_init_weights): a training starts from
a trained best-weights file, on 1 and 2 replicas, with the class list of the
file or another one.

The first step's loss is that of the file's weights on the batch, computed
by a model Keras loads from the file itself, and not that of a freshly built
model (tests/finetune_run.py). With another class list the semantic head
starts afresh, so the height and normal terms match the file's model and
the semantic term does not; for the DAE the reference takes the file's
kernel for every input channel but the new semantic ones.
"""
import json
import os

import pytest

from conftest import ROOT, TINY, run_python
from stand_in import small_encoder
import config
from utils import distribute, settings
from utils.model import weights
from utils.train import benchmark
from utils.train.trainer import Trainer
from utils.errors import CheckpointError

RUN = os.path.join(ROOT, 'tests', 'finetune_run.py')


def _run(tmp_path, cases, *sets):
    result = run_python([RUN, str(tmp_path), cases, *sets], timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _close(a, b):
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))


def _check(results, replicas):
    for case, record in results.items():
        assert record['replicas'] == replicas
        first, loaded, fresh = record['first'], record['loaded'], record['fresh']
        same = ('dsm', 'norm') if case == 'mtl_changed' else tuple(loaded)
        for term in same:
            assert _close(first[term], loaded[term]), (case, term, first, loaded)
        assert abs(first['dsm'] - fresh['dsm']) > 1, (case, first, fresh)
        notes = dict(record['notes'])['starts from']
        if case == 'mtl_changed':
            assert not _close(first['sem'], loaded['sem'])
            assert notes.endswith('sem re-initialised, every other layer loaded')
        elif case == 'dae_changed':
            assert 'enc1_conv1 (the semantic input channels) re-initialised' in notes
        else:
            assert notes.endswith('(every layer)')


# Each network, and a changed class list, on 1 and on 2 replicas: the four
# cases split over the two processes (each case costs its own networks).
@pytest.mark.slow
def test_fine_tuning_starts_from_the_file_on_one_replica(tmp_path):
    results = _run(tmp_path, 'mtl,dae_changed')
    assert set(results) == {'mtl', 'dae_changed'}
    _check(results, 1)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_file_on_two_replicas(tmp_path):
    results = _run(tmp_path, 'mtl_changed,dae', 'multi_gpu_enabled=True', 'cpu_replicas=2',
                   'batch_size=4')
    assert set(results) == {'mtl_changed', 'dae'}
    _check(results, 2)


def test_a_setting_that_shapes_the_network_must_match(tmp_path):
    settings.apply(TINY + [f'checkpoint_root={tmp_path}'])
    path = str(tmp_path / 'a.weights.h5')
    with small_encoder():
        weights.save(Trainer(benchmark.steps_only_task('mtl', config),
                             distribute.get_strategy(config)).model, path, 'mtl', config)
        settings.apply([f'mtl_init_weights={path}', 'mtl_decoder_scale=0.125'])
        with pytest.raises(CheckpointError) as err:
            Trainer(benchmark.steps_only_task('mtl', config), distribute.get_strategy(config))
        assert str(err.value).startswith(f"mtl_init_weights = {path!r} was trained with "
                                         f"mtl_decoder_scale=0.0625 but the settings have "
                                         f"mtl_decoder_scale=0.125")
        assert '\n' not in str(err.value)
        settings.apply(['mtl_decoder_scale=0.0625', 'norm_flag=False'])
        with pytest.raises(CheckpointError, match='norm_flag=True'):
            Trainer(benchmark.steps_only_task('mtl', config), distribute.get_strategy(config))
        settings.apply([f'dae_init_weights={tmp_path}/none.weights.h5'])
        with pytest.raises(CheckpointError, match=r"dae_init_weights = .*: no such file"):
            Trainer(benchmark.steps_only_task('dae', config), distribute.get_strategy(config))
    assert config.mtl_init_weights == path
