"""The tf.data input pipeline of both training stages.

A stage hands it a TrainingData description (the settings that decode the
samples, the samples found once, how many make an epoch). train_dataset()
yields GLOBAL batches (hand them to `strategy.experimental_distribute_dataset`),
each a dict of the fields of utils/train/fields.py cropped to cropSize,
class indices without their channel axis.

Every random choice for a sample (tile, crop position, augmentation) is a
stateless function of (seed, epoch, k), k being the sample's position
in the epoch. An epoch is therefore reproducible, and resuming with
skip_batches just starts the index range later: it yields exactly the tail of
the uninterrupted epoch without producing the skipped samples.

Large-tile datasets (Vaihingen, DFC2018): the training tiles are decoded
once per process and kept in memory (utils/train/cache.py). Each sample
takes a random tile and a random crop; an epoch is *_training_samples
samples, floored to whole global batches.

Patch datasets: one pass over the files per epoch, in an order shuffled with
(seed, epoch); a file larger than the crop gives a random crop. The
last partial batch is dropped (drop_remainder=True) so that every step holds
the full global batch its loss is averaged over. With *_preload and at most
preload_max_gb of decoded data the patches are decoded once and cached
like tiles; otherwise every epoch reads and decodes them in parallel, in
Python (tf.numpy_function), and an exit hook destroys live iterators before
the interpreter finalises, which would otherwise hang on a call in flight.
"""
import atexit
import dataclasses
import gc
import os

import tensorflow as tf

from utils.errors import DatasetError, SettingError
from utils.geo.grid import random_window
from utils.model import heads
from utils.train import cache
from utils.train.fields import decode, drop_index_channel, field_specs


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What a stage's epochs are drawn from: `cfg`, the settings that decode
    and crop the samples (image_scale, label codes, heads, cropSize, seed,
    augment, preload_max_gb); the training `samples`, found once; `tiles`:
    large tiles trained on random crops, `per_epoch` samples an epoch;
    `preload`: decoded patches kept in memory; `stage`: 'mtl' or 'dae',
    whose settings the errors name."""
    cfg: object
    samples: tuple
    tiles: bool
    per_epoch: int
    preload: bool
    stage: str


def _batch_error(count, what, global_batch, stage, fix):
    return DatasetError(
        f"{what} gives {count} samples, fewer than one global batch of {global_batch} "
        f"({stage}_batchSize x replicas): {fix}")


def steps_per_epoch(data, global_batch):
    """Whole global batches in one epoch of `data` (a TrainingData)."""
    stage, cfg = data.stage, data.cfg
    if global_batch < 1:
        raise SettingError(f"global batch = {global_batch}: set {stage}_batchSize to 1 or more")
    if data.tiles:
        count = data.per_epoch
        if count < global_batch:
            raise _batch_error(count, f"{stage}_training_samples = {count}", global_batch,
                               stage, f"raise {stage}_training_samples or lower "
                                      f"{stage}_batchSize")
    else:
        count = len(data.samples)
        if count < global_batch:
            raise _batch_error(
                count, f"the 'train' split of {cfg.dataset_name} (under "
                       f"{os.path.join(cfg.shortcut_path, cfg.dataset_name)})",
                global_batch, stage,
                f"lower {stage}_batchSize, train on fewer replicas, add training samples, "
                f"or set train_valid_flag = False to train on the valid split too")
    return count // global_batch


# ----------------------------------------------------------------- randomness

def _epoch_key(seed, epoch, purpose):
    """Key of one purpose (0: file order, 1: samples) in one epoch."""
    base = tf.constant([seed, epoch], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, purpose)


def _maybe(flag, fn, value):
    return tf.cond(flag, lambda: fn(value), lambda: value)


def _augment(fields, key, cfg):
    """One of the 8 flips/rotations of the square crop, the same for every
    field; then the values of a direction-dependent head (the normals) turn
    with the image, as its row in utils/model/heads.py says."""
    transpose, flip_rows, flip_cols = tf.unstack(
        tf.random.stateless_uniform([3], key, 0, 2, tf.int32) > 0)
    out = {}
    for name, value in fields.items():
        value = _maybe(transpose, lambda v: tf.transpose(v, [1, 0, 2]), value)
        value = _maybe(flip_rows, lambda v: tf.reverse(v, [0]), value)
        out[name] = _maybe(flip_cols, lambda v: tf.reverse(v, [1]), value)
    for head in heads.HEADS:
        if head.turn is not None and head.name in out:
            out[head.name] = head.turn(out[head.name], transpose, flip_rows, flip_cols, cfg)
    return out


# ----------------------------------------------------------------- datasets

def _release_iterators():
    """Destroy every live tf.data iterator while threads can still run Python.

    Registered at exit once a pipeline runs Python per sample (_loader). An
    iterator still referenced when the interpreter finalises is destroyed
    with the module holding it; by then a tf.data thread that enters or
    re-enters Python for a numpy_function call never returns, and the
    destructor, which waits for every call in flight, waits forever. Here,
    at exit but before finalisation, those calls still finish. There is no
    public way to close an iterator: dropping its resource handle is what
    deleting the last reference to it does.
    """
    from tensorflow.python.data.ops import iterator_ops, multi_device_iterator_ops
    for obj in gc.get_objects():
        if isinstance(obj, iterator_ops.OwnedIterator):
            obj._iterator_resource = None
        elif isinstance(obj, multi_device_iterator_ops.OwnedMultiDeviceIterator):
            obj._multi_device_iterator_resource = None
            obj._device_iterators = []


_exit_hook = []     # [True] once _release_iterators is registered


def _loader(samples, cfg):
    """Per-sample fields read from disk (uncached patch datasets)."""
    if not _exit_hook:
        atexit.register(_release_iterators)
        _exit_hook.append(True)
    specs = field_specs(cfg)
    c = cfg.cropSize

    def load(index):
        fields = decode(samples[int(index)], cfg)
        return [fields[name] for name, _, _ in specs]

    def crop(index, key):
        arrays = tf.numpy_function(load, [index], [dtype for _, dtype, _ in specs],
                                   stateful=False)
        shape = tf.shape(arrays[0])
        y, x = random_window(key, shape[0], shape[1], c)
        return {name: tf.ensure_shape(array[y:y + c, x:x + c], [c, c, channels])
                for (name, _, channels), array in zip(specs, arrays)}
    return crop


def _options():
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return options


def train_dataset(data, global_batch, epoch, skip_batches=0):
    """Batches `skip_batches` .. steps_per_epoch - 1 of training epoch `epoch`
    of `data` (a TrainingData)."""
    cfg, samples = data.cfg, list(data.samples)
    steps = steps_per_epoch(data, global_batch)
    if not 0 <= skip_batches <= steps:
        raise ValueError(f"skip_batches = {skip_batches}: an epoch of {data.stage} has "
                         f"{steps} batches of {global_batch}")
    sample_key = _epoch_key(cfg.seed, epoch, 1)
    if data.tiles:
        tiles = cache.cached(samples, cfg, tiles=True)

        def source(k, key):
            key_pick, key_crop = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            pick = tf.random.stateless_uniform([], key_pick, 0, tiles.size, tf.int32)
            return tiles.crop(pick, key_crop)
    else:
        order = tf.argsort(tf.random.stateless_uniform(
            [len(samples)], _epoch_key(cfg.seed, epoch, 0)), stable=True)
        patches = None
        if data.preload:
            patches = cache.cached(samples, cfg, tiles=False, fits=lambda first:
                                   cache.fits_in_memory(first, len(samples), cfg.preload_max_gb))
        read = patches.crop if patches is not None else _loader(samples, cfg)

        def source(k, key):
            return read(order[k], key)

    def element(k):
        key_source, key_augment = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(sample_key, k), 2))
        fields = source(k, key_source)
        if cfg.augment:
            fields = _augment(fields, key_augment, cfg)
        return drop_index_channel(fields, cfg)

    dataset = tf.data.Dataset.range(skip_batches * global_batch, steps * global_batch)
    dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(global_batch, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())
