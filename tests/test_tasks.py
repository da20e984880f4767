"""utils/train/tasks.py: what each stage trains, from which weights, saved where."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import config
from conftest import TINY
from stand_in import small_encoder
from utils import distribute, settings
from utils.data import checks, layouts, samples
from utils.model import networks, weights
from utils.model.weights import WeightsFile
from utils.predict import blend, engines
from utils.train import benchmark, tasks
from utils.train.loop import Loop
from utils.train.trainer import Trainer
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
    weights.save(saved, config.predCheckPointPath, 'mtl', config)

    trainer = Trainer(tasks.DAETask(config), strategy)
    assert trainer.model.name == 'dsmnet_dae' and \
        Loop(trainer).best_path == config.corrCheckPointPath
    assert trainer.task.mtl.name == 'dsmnet_mtl' and not trainer.task.mtl.trainable
    mtl = networks.trained(WeightsFile(config.predCheckPointPath, 'mtl'), config, strategy)
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
    loop = Loop(trainer)
    assert trainer.model.name == 'dsmnet_mtl' and trainer.model.trainable
    assert loop.best_path == config.predCheckPointPath
    assert loop.dir == os.path.join(config.checkpoint_root, 'synthetic', 'mtl')
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
    predict_fn = engines.tensorflow_fn(trainer.model, cfg=config, strategy=strategy)
    rmses = []
    for sample in layouts.find_split(config, 'valid'):
        loaded = samples.load_sample(config, sample)
        height = blend.predict_tile(predict_fn, loaded.image, config.cropSize,
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
    loop = Loop(Trainer(tasks.MTLTask(config), distribute.get_strategy(config)))
    assert loop.best_path == last and not loop.validated
    assert loop.kept.describe().startswith(f"last weights    {last} (no validation, "
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
    assert Loop(Trainer(tasks.MTLTask(config), distribute.get_strategy(config))).best_path == \
        last
    settings.apply([f'predCheckPointPath={tmp_path}/mine.weights.h5'])
    assert tasks.make('mtl', config).weights_path(validated=False) == \
        f'{tmp_path}/mine.weights.h5'


def _raised_copy(source, root, count, metres):
    """`count` samples of `source` (layouts.Sample) copied into the
    split_folders dataset `root`'s split, heights raised by `metres`."""
    import rasterio
    for sample in source[:count]:
        for folder, path in (('rgb', sample.image), ('sem', sample.labels),
                             ('dsm', sample.height)):
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            with rasterio.open(path) as src:
                profile, data = src.profile, src.read()
            if folder == 'dsm':
                data = data + np.float32(metres)    # NaN and -9999-like nodata stay nodata
            profile.update(driver='GTiff')
            with rasterio.open(os.path.join(root, folder, os.path.basename(path)), 'w',
                               **profile) as dst:
                dst.write(data)


@pytest.mark.filterwarnings('ignore::rasterio.errors.NotGeoreferencedWarning')
def test_two_settings_in_one_process_each_read_their_own_data(synthetic_root, tmp_path):
    """Two tasks of two Settings in one process, used in turn: each finds,
    checks and batches its own dataset (the second's heights are the first's
    raised by 100 m), the first's batches are the same before and after the
    second's, and config itself is left as it was. A third on the first's
    files scales their values by its own image_scale."""
    settings.apply(TINY)
    a = settings.current().replace(shortcut_path=synthetic_root)
    for split, count in (('train', 2), ('valid', 1)):
        _raised_copy(layouts.find_split(a, split), str(tmp_path / 'MyCity' / split), count,
                     100)
    b = a.replace(dataset_name='MyCity', shortcut_path=str(tmp_path),
                  label_codes=list(a.label_codes))
    assert (config.dataset_name, config.shortcut_path) == ('synthetic', './datasets/')
    assert (a.batch_size, b.batch_size) == (8, 2)   # each its dataset's published default
    task_a, task_b = tasks.MTLTask(a), tasks.MTLTask(b)
    assert [len(layouts.find_split(s, 'train')) for s in (a, b)] == [
        len(os.listdir(os.path.join(synthetic_root, 'synthetic', 'train', 'rgb'))), 2]
    assert [t.steps_per_epoch(2) for t in (task_a, task_b)][1] == 1

    def heights(task):
        batch = next(iter(task.train_dataset(2, epoch=0)))
        mask = batch['mask'].numpy()[..., 0] > 0
        return batch['height'].numpy()[..., 0][mask]

    first, raised, again = heights(task_a), heights(task_b), heights(task_a)
    # The synthetic heights are 0-27 m (config.py's DATASETS entry).
    assert first.max() < 50 and raised.min() > 50
    np.testing.assert_array_equal(first, again)
    # uint8 images: 'auto' divides by 255, image_scale = 510 by twice that
    # (float32 division: the halves agree to one rounding, 2**-24 relative).
    images = [next(iter(tasks.MTLTask(s).train_dataset(2, epoch=0)))['image'].numpy()
              for s in (a, a.replace(image_scale=510))]
    np.testing.assert_allclose(images[1], images[0] / 2, rtol=2 ** -23, atol=0)
    mean_a = checks.check_training_splits(a).band_mean
    mean_b = checks.check_training_splits(b).band_mean
    assert mean_a != mean_b     # all synthetic training images vs two of them
