"""utils/tasks.py: what each stage trains, from which weights, saved where."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import config
from conftest import TINY, small_encoder
from utils import benchmark, checkpoints, datasets, distribute, inference, settings, tasks
from utils.training import Trainer
from utils.errors import CheckpointError


@pytest.fixture
def tiny(tmp_path):
    # Which network each stage builds, loads and trains is under test, not
    # DenseNet121: the MTL is built on conftest's stand-in encoder.
    settings.apply(TINY + [f'checkpoint_root={tmp_path}'])
    with small_encoder():
        yield
    keras.backend.clear_session()


def test_the_dae_stage_trains_the_dae_on_the_trained_mtl_frozen(tiny):
    strategy = distribute.get_strategy(config)
    with pytest.raises(CheckpointError, match='predCheckPointPath'):
        Trainer(tasks.DAETask(config), strategy)          # no MTL weights yet
    saved = Trainer(tasks.MTLTask(config), strategy).model
    checkpoints.save_weights(saved, config.predCheckPointPath, 'mtl')

    trainer = Trainer(tasks.DAETask(config), strategy)
    assert trainer.model.name == 'dsmnet_dae' and trainer.best_path == config.corrCheckPointPath
    assert trainer.task.mtl.name == 'dsmnet_mtl' and not trainer.task.mtl.trainable
    mtl = tasks.trained_mtl(config, strategy)
    for a, b in zip(saved.weights, trainer.task.mtl.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    given = Trainer(tasks.DAETask(config, mtl=mtl), strategy)
    assert given.task.mtl is mtl
    before = [w.numpy() for w in mtl.weights]
    dae_before = [w.numpy() for w in given.model.trainable_weights]
    batch = tf.data.Dataset.from_tensors(benchmark.synthetic_batch(given.global_batch, config))
    given.train_step(iter(strategy.experimental_distribute_dataset(batch)), steps=1)
    for a, b in zip(before, mtl.weights):       # frozen, BatchNormalization statistics too
        np.testing.assert_array_equal(a, b.numpy())
    assert any(not np.array_equal(a, b.numpy())
               for a, b in zip(dae_before, given.model.trainable_weights))


def test_the_mtl_stage_keeps_its_best_weights_at_pred_checkpoint_path(tiny):
    trainer = Trainer(tasks.MTLTask(config), distribute.get_strategy(config))
    assert trainer.model.name == 'dsmnet_mtl' and trainer.model.trainable
    assert trainer.best_path == config.predCheckPointPath
    assert trainer.dir == os.path.join(config.checkpoint_root, 'synthetic', 'mtl')
    with pytest.raises(ValueError, match="stage = 'x'"):
        tasks.make('x', config)


def test_a_task_reads_its_own_stage_settings(tiny):
    """Each task takes the settings with its stage's prefix, and the trainer
    its global batch from them and the replica count."""
    settings.apply(['mtl_lr=0.003', 'dae_lr=0.007', 'mtl_batchSize=3', 'dae_batchSize=5',
                    'dae_numEpochs=4'])
    mtl, dae = tasks.make('mtl', config), tasks.make('dae', config, mtl='untrained')
    assert (mtl.lr, mtl.batch_size, dae.lr, dae.batch_size, dae.epochs) == \
        (0.003, 3, 0.007, 5, 4)
    trainer = Trainer(dae, distribute.get_strategy(config))
    assert trainer.global_batch == 5 and float(trainer.optimizer.learning_rate) == \
        pytest.approx(0.007)


def test_the_mtl_stage_validates_its_own_network_on_the_valid_split(tiny, synthetic_root):
    """The task's validate scores the trainer's network on the valid split at
    valid_stride: the RMSE of a second computation, window by window."""
    settings.apply([f'shortcut_path={synthetic_root}'])
    strategy = distribute.get_strategy(config)
    trainer = Trainer(tasks.MTLTask(config), strategy)
    metrics = trainer.task.validate(strategy)
    predict_fn = inference.make_predict_fn(trainer.model, cfg=config, strategy=strategy)
    rmses = []
    for sample in datasets.find_split('valid'):
        loaded = datasets.load_sample(sample)
        height = inference.predict_tile(predict_fn, loaded.image, config.cropSize,
                                        config.valid_stride)['height']
        valid = np.isfinite(loaded.height)
        rmses.append(np.sqrt(np.mean((height[valid] - loaded.height[valid]) ** 2)))
    assert len(rmses) == 8 and metrics['rmse'] == pytest.approx(np.mean(rmses), rel=1e-6)


def test_a_run_without_validation_keeps_its_last_weights_where_the_next_stage_looks(
        tiny, tmp_path):
    """train_valid_flag = False: the trainer keeps last.weights.h5 and says so;
    predCheckPointPath, by default, names the newer of the run folder's best
    and last weights; a file the setting names stays named. (Training and
    testing that way as typed: test_prepare_dataset.py, a region without labels.)"""
    settings.apply(['train_valid_flag=False'])
    run = os.path.join(config.checkpoint_root, 'synthetic', 'mtl')
    best, last = (os.path.join(run, name) for name in ('best.weights.h5', 'last.weights.h5'))
    assert config.predCheckPointPath == best       # nothing trained yet: the usual name
    trainer = Trainer(tasks.MTLTask(config), distribute.get_strategy(config))
    assert trainer.best_path == last and not trainer.validated
    assert trainer._kept().startswith(f"last weights    {last} (no validation, "
                                      f"train_valid_flag = False")
    os.makedirs(run)
    for path, seconds in ((best, 1), (last, 2)):    # last written after best
        open(path, 'w').close()
        os.utime(path, (seconds, seconds))
    settings.apply(['max_steps=1'])                 # settings derived again, as in a new process
    assert config.predCheckPointPath == last
    os.utime(best, (3, 3))
    settings.apply(['max_steps=1'])
    assert config.predCheckPointPath == best
    assert Trainer(tasks.MTLTask(config), distribute.get_strategy(config)).best_path == last
    settings.apply([f'predCheckPointPath={tmp_path}/mine.weights.h5'])
    assert tasks.make('mtl', config).weights_path(validated=False) == \
        f'{tmp_path}/mine.weights.h5'
