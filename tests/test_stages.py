"""utils/stages.py: what each stage trains, from which weights, saved where."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import config
from conftest import TINY, small_encoder
from utils import benchmark, checkpoints, datasets, inference, settings, stages
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
    with pytest.raises(CheckpointError, match='predCheckPointPath'):
        stages.make_trainer('dae')          # no MTL weights yet
    saved = stages.make_trainer('mtl', steps_only=True).model
    checkpoints.save_weights(saved, config.predCheckPointPath, 'mtl')

    trainer = stages.make_trainer('dae')
    assert trainer.model.name == 'dsmnet_dae' and trainer.best_path == config.corrCheckPointPath
    assert trainer.validate_fn is not None
    mtl = stages.trained_mtl()
    for a, b in zip(saved.weights, mtl.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    given = stages.make_trainer('dae', mtl=mtl, steps_only=True)
    assert given.best_path is None and given.validate_fn is None
    before = [w.numpy() for w in mtl.weights]
    dae_before = [w.numpy() for w in given.model.trainable_weights]
    batch = tf.data.Dataset.from_tensors(benchmark.synthetic_batch(given.global_batch))
    given.train_step(iter(config.strategy.experimental_distribute_dataset(batch)), steps=1)
    for a, b in zip(before, mtl.weights):       # frozen, BatchNormalization statistics too
        np.testing.assert_array_equal(a, b.numpy())
    assert any(not np.array_equal(a, b.numpy())
               for a, b in zip(dae_before, given.model.trainable_weights))


def test_the_mtl_stage_keeps_its_best_weights_at_pred_checkpoint_path(tiny):
    trainer = stages.make_trainer('mtl')
    assert trainer.model.name == 'dsmnet_mtl' and trainer.model.trainable
    assert trainer.best_path == config.predCheckPointPath and trainer.validate_fn is not None
    with pytest.raises(ValueError, match="stage = 'x'"):
        stages.make_trainer('x')


def test_the_mtl_stage_validates_its_own_network_on_the_valid_split(tiny, synthetic_root):
    """validate_fn scores the trainer's network on the valid split at
    valid_stride: the RMSE of a second computation, window by window."""
    settings.apply([f'shortcut_path={synthetic_root}'])
    trainer = stages.make_trainer('mtl')
    metrics = trainer.validate_fn()
    predict_fn = inference.make_predict_fn(trainer.model, cfg=config, strategy=config.strategy)
    rmses = []
    for sample in datasets.find_split('valid'):
        loaded = datasets.load_sample(sample)
        height = inference.predict_tile(predict_fn, loaded.image, config.cropSize,
                                        config.valid_stride)['height']
        valid = np.isfinite(loaded.height)
        rmses.append(np.sqrt(np.mean((height[valid] - loaded.height[valid]) ** 2)))
    assert len(rmses) == 8 and metrics['rmse'] == pytest.approx(np.mean(rmses), rel=1e-6)
