"""The tf.data input pipeline of both training stages.

`train_dataset(stage, global_batch, epoch, skip_batches)` yields GLOBAL batches
(hand them to `strategy.experimental_distribute_dataset`), each a dict:
    'image'  [B,c,c,C] float32 in [0,1]           (C = 4 with sar_mode, else 3)
    'mask'   [B,c,c,1] float32, 1 where the height is valid
and the target of every head switched on (utils/heads.py), under its name:
    'height' [B,c,c,1] float32, 0 where nodata
    'sem'    [B,c,c]   int32 class indices        (sem_flag; one-hot in the loss)
    'norm'   [B,c,c,3] float32 (n+1)/2            (norm_flag; x255 without normalize_flag)
    'edge'   [B,c,c,1] float32 in {0,1}           (edge_flag)
with c = config.cropSize. The targets are made over the whole tile or patch
(normals and edges by utils.geometry, which fills nodata before filtering),
then cropped with the rest, so a crop's border pixels see their real
neighbours.

Every random choice for a sample (tile, crop position, augmentation) is a
stateless function of (config.seed, epoch, k), k being the sample's position
in the epoch. An epoch is therefore reproducible, and resuming with
skip_batches just starts the index range later: it yields exactly the tail of
the uninterrupted epoch without producing the skipped samples.

Large-tile datasets (Vaihingen, DFC2018): the training tiles are decoded
once per process with their normals and edge maps and kept in memory,
whatever *_preload says (a random crop read from disk would decode a whole
tile per sample). Each sample takes a random tile and a random crop; an epoch
is *_training_samples samples, floored to whole global batches. Tiles are
decoded one after the other and each field packed as it is made, so building
the cache takes little more memory than the cache (bench/cache_memory.py).

Patch datasets: one pass over the files per epoch, in an order shuffled with
(config.seed, epoch); a file larger than the crop gives a random crop. The
last partial batch is dropped (drop_remainder=True) so that every step holds
the full global batch its loss is averaged over. With *_preload and at most
config.preload_max_gb of decoded data the patches are decoded once and cached
like tiles; otherwise every epoch reads and decodes them in parallel.
"""
import concurrent.futures
import os

import numpy as np
import tensorflow as tf

import config
from utils import datasets, heads
from utils.errors import SettingError

STAGES = ('mtl', 'dae')
_cache = {}     # the one decoded training set kept in memory: {'key': ..., 'value': _Cache}


def _check_stage(stage):
    if stage not in STAGES:
        raise ValueError(f"stage = {stage!r}: use 'mtl' or 'dae'")


def _field_specs():
    """(name, dtype, channels) of every element field, in a fixed order."""
    return [('image', tf.float32, datasets.image_channels()), ('mask', tf.float32, 1)] + [
        (h.name, tf.as_dtype(h.dtype), h.field_channels) for h in heads.from_config()]


def _batch_error(count, what, global_batch, stage, fix):
    return datasets.DatasetError(
        f"{what} gives {count} samples, fewer than one global batch of {global_batch} "
        f"({stage}_batchSize x replicas): {fix}")


def steps_per_epoch(stage, global_batch):
    """Whole global batches in one epoch of `stage` ('mtl' or 'dae')."""
    _check_stage(stage)
    if global_batch < 1:
        raise SettingError(f"global batch = {global_batch}: set {stage}_batchSize to 1 or more")
    if datasets.is_tile_dataset():
        count = getattr(config, f'{stage}_training_samples')
        if count < global_batch:
            raise _batch_error(count, f"{stage}_training_samples = {count}", global_batch,
                               stage, f"raise {stage}_training_samples or lower "
                                      f"{stage}_batchSize")
    else:
        count = len(datasets.find_split('train'))
        if count < global_batch:
            raise _batch_error(
                count, f"the 'train' split of {config.dataset_name} (under "
                       f"{os.path.join(config.shortcut_path, config.dataset_name)})",
                global_batch, stage,
                f"lower {stage}_batchSize, train on fewer replicas, add training samples, "
                f"or set train_valid_flag = False to train on the valid split too")
    return count // global_batch


# ----------------------------------------------------------------- decoding

def iter_fields(loaded):
    """Every field of one loaded sample at full size, one after the other:
    (name, [H, W, ch] array). A caller that packs or drops each before asking
    for the next never holds all of a full-size tile's float32 fields at once."""
    loaded = loaded._replace(image=np.asarray(loaded.image, np.float32),
                             height=np.asarray(loaded.height, np.float32))
    yield 'image', loaded.image
    yield 'mask', np.isfinite(loaded.height).astype(np.float32)[..., None]
    for head in heads.from_config():
        yield head.name, np.asarray(head.target(loaded), head.dtype)


def make_fields(loaded):
    """Every field of one loaded sample at full size: name -> [H, W, ch] array."""
    return dict(iter_fields(loaded))


def drop_index_channel(fields):
    """Class-index targets lose their channel axis, as the losses take them."""
    for head in heads.from_config():
        if head.dtype == 'int32' and head.name in fields:
            fields[head.name] = fields[head.name][..., 0]
    return fields


def _fields(sample):
    """iter_fields of one sample, each field checked as it comes."""
    loaded = datasets.load_sample(sample)
    shape = np.shape(loaded.image)[:2]
    datasets.check_crop_fits(sample.image, shape, config.cropSize)
    channels = {name: count for name, _, count in _field_specs()}
    fields = iter_fields(loaded)
    del loaded
    while True:
        try:
            name, array = next(fields)
        except StopIteration:
            return
        except datasets.DatasetError as err:   # a target the sample lacks: name its file
            raise datasets.DatasetError(f"{sample.image}: {err}") from None
        if array.shape != shape + (channels[name],):
            raise datasets.DatasetError(
                f"{sample.image}: {name} of {sample.name} has shape {array.shape}, expected "
                f"{shape + (channels[name],)}: fix the files of this sample")
        if not np.isfinite(array).all():
            raise datasets.DatasetError(
                f"{sample.image}: {name} of {sample.name} holds NaN or infinite values; "
                f"fix the file (nodata heights are fine, they are masked)")
        yield name, array


def _decode(sample):
    """Every field of one sample at full size: name -> [H, W, ch] array."""
    return dict(_fields(sample))


PACK_ROWS = 256     # rows packed at a time: the float temporaries of a tile stay small


def _pack(array):
    """Store an array as uint8 when that is lossless: 4x less memory and copying.

    Floats are stored as round(x * 255): the decoded float32(u) / 255 must
    reproduce every value exactly (8-bit images, masks, {0,1} edges); integers
    (class indices) as themselves when they fit. Returns (stored, is_packed).
    """
    if array.dtype == np.int32:
        fits = array.size and array.min() >= 0 and array.max() <= 255
        return (array.astype(np.uint8), True) if fits else (array, False)
    if array.min() < 0 or array.max() > 1:
        return array, False
    packed = np.empty(array.shape, np.uint8)
    for top in range(0, len(array), PACK_ROWS):
        rows = array[top:top + PACK_ROWS]
        packed[top:top + PACK_ROWS] = np.rint(rows * 255)
        if not np.array_equal(packed[top:top + PACK_ROWS].astype(np.float32) /
                              np.float32(255), rows):
            return array, False
    return packed, True


def _unpack(stored, is_packed, dtype):
    """The values _pack was given, from what it stored (NumPy or TensorFlow)."""
    if not is_packed:
        return stored
    if isinstance(stored, np.ndarray):
        return stored.astype(np.int32) if dtype == tf.int32 else \
            stored.astype(np.float32) / np.float32(255)
    return tf.cast(stored, tf.int32) if dtype == tf.int32 else \
        tf.cast(stored, tf.float32) / 255.0


def _decode_packed(sample):
    return {name: _pack(array) for name, array in _fields(sample)}


class _Cache:
    """Decoded samples in memory, each field as _pack stored it.

    A crop is cut in NumPy (tf.numpy_function): the samples never become
    tensors, because tf.data copies every tensor a dataset captures whenever
    it rewrites the dataset's graph (its default optimisations, auto-sharding
    for distribution), which would double the cache.
    """

    def __init__(self, packed):
        self.samples = packed
        self.size = len(packed)
        self.sizes = tf.constant([fields['image'][0].shape[:2] for fields in packed],
                                 tf.int32)
        self.nbytes = sum(stored.nbytes for fields in packed for stored, _ in fields.values())
        # A field stored alike in every sample leaves NumPy as stored and is
        # unpacked by TensorFlow, outside the GIL; other fields NumPy unpacks.
        self.alike = {}
        for name, _, _ in _field_specs():
            kinds = {(fields[name][0].dtype, fields[name][1]) for fields in packed}
            self.alike[name] = kinds.pop() if len(kinds) == 1 else None

    def _cut(self, index, y, x):
        c = config.cropSize
        fields = self.samples[index]
        out = []
        for name, dtype, _ in _field_specs():
            stored, is_packed = fields[name]
            window = stored[y:y + c, x:x + c]
            if self.alike[name] is None:
                window = _unpack(window, is_packed, dtype)
            out.append(np.ascontiguousarray(window))
        return out

    def crop(self, tile, key):
        """The fields of a random crop of cached sample `tile`."""
        c = config.cropSize
        size = tf.gather(self.sizes, tile)
        y, x = _offsets(key, size[0], size[1])
        specs = _field_specs()
        kinds = [self.alike[name] for name, _, _ in specs]
        arrays = tf.numpy_function(
            self._cut, [tile, y, x],
            [dtype if kind is None else tf.as_dtype(kind[0])
             for (_, dtype, _), kind in zip(specs, kinds)], stateful=False)
        return {name: tf.ensure_shape(array if kind is None else
                                      _unpack(array, kind[1], dtype), [c, c, channels])
                for (name, dtype, channels), array, kind in zip(specs, arrays, kinds)}


def _cache_key(samples):
    """Everything the decoded fields depend on (and cropSize, which _decode checks)."""
    return (tuple(samples), config.sar_mode, tuple(config.label_codes), config.cropSize) + \
        tuple((h.name,) + tuple(getattr(config, k) for k in h.depends_on)
              for h in heads.from_config())


def _decode_all(samples, first=None):
    """Decode and pack every sample; `first`: samples[0], already done.

    Tiles are decoded one after the other, so what decoding needs beyond the
    cache is one tile's working memory; many small patches go in threads.
    """
    todo = samples if first is None else samples[1:]
    workers = 1 if datasets.is_tile_dataset() else max(1, min(len(todo), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(_decode_packed, todo))
    return done if first is None else [first] + done


def _cached(samples, fits=None):
    """The cache of `samples`, built on first use; None if `fits(first sample)` is False."""
    key = _cache_key(samples)
    if _cache.get('key') == key:
        return _cache['value']
    _cache.clear()      # one decoded training set at a time: free the old one first
    first = None
    if fits is not None:
        first = _decode_packed(samples[0])
        if not fits(first):
            return None
    value = _Cache(_decode_all(samples, first))
    _cache.update(key=key, value=value)
    return value


def _fits_in_memory(first, count):
    per_sample = sum(stored.nbytes for stored, _ in first.values())
    return per_sample * count <= config.preload_max_gb * 2 ** 30


# ----------------------------------------------------------------- randomness

def _epoch_key(epoch, purpose):
    """Key of one purpose (0: file order, 1: samples) in one epoch."""
    base = tf.constant([config.seed, epoch], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, purpose)


def _offsets(key, height, width):
    """A uniform random crop position in an image of height x width."""
    ky, kx = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    c = config.cropSize
    y = tf.random.stateless_uniform([], ky, 0, height - c + 1, tf.int32)
    x = tf.random.stateless_uniform([], kx, 0, width - c + 1, tf.int32)
    return y, x


def _maybe(flag, fn, value):
    return tf.cond(flag, lambda: fn(value), lambda: value)


def _augment(fields, key):
    """One of the 8 flips/rotations of the square crop, the same for every field.

    The normal vectors turn with the image. Normals are (-zx, -zy, 1)/|.| with
    x along columns and y along rows, stored as e = s (n + 1) / 2 (s = 1, or 255
    without normalize_flag), so negating a component is e -> s - e.
    """
    transpose, flip_rows, flip_cols = tf.unstack(
        tf.random.stateless_uniform([3], key, 0, 2, tf.int32) > 0)
    out = {}
    for name, value in fields.items():
        value = _maybe(transpose, lambda v: tf.transpose(v, [1, 0, 2]), value)
        value = _maybe(flip_rows, lambda v: tf.reverse(v, [0]), value)
        out[name] = _maybe(flip_cols, lambda v: tf.reverse(v, [1]), value)
    if 'norm' in out:
        scale = 1.0 if config.normalize_flag else 255.0
        nx, ny, nz = tf.unstack(out['norm'], axis=-1)
        nx, ny = tf.where(transpose, ny, nx), tf.where(transpose, nx, ny)
        ny = tf.where(flip_rows, scale - ny, ny)
        nx = tf.where(flip_cols, scale - nx, nx)
        out['norm'] = tf.stack([nx, ny, nz], axis=-1)
    return out


# ----------------------------------------------------------------- datasets

def _loader(samples):
    """Per-sample fields read from disk (uncached patch datasets)."""
    specs = _field_specs()

    def load(index):
        fields = _decode(samples[int(index)])
        return [fields[name] for name, _, _ in specs]

    def crop(index, key):
        arrays = tf.numpy_function(load, [index], [dtype for _, dtype, _ in specs],
                                   stateful=False)
        shape = tf.shape(arrays[0])
        y, x = _offsets(key, shape[0], shape[1])
        c = config.cropSize
        return {name: tf.ensure_shape(array[y:y + c, x:x + c], [c, c, channels])
                for (name, _, channels), array in zip(specs, arrays)}
    return crop


def _options():
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return options


def train_dataset(stage, global_batch, epoch, skip_batches=0):
    """Batches `skip_batches` .. steps_per_epoch - 1 of training epoch `epoch`."""
    steps = steps_per_epoch(stage, global_batch)
    if not 0 <= skip_batches <= steps:
        raise ValueError(f"skip_batches = {skip_batches}: an epoch of {stage} has "
                         f"{steps} batches of {global_batch}")
    samples = datasets.find_split('train')
    sample_key = _epoch_key(epoch, 1)
    if datasets.is_tile_dataset():
        cache = _cached(samples)

        def source(k, key):
            key_pick, key_crop = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            pick = tf.random.stateless_uniform([], key_pick, 0, cache.size, tf.int32)
            return cache.crop(pick, key_crop)
    else:
        order = tf.argsort(tf.random.stateless_uniform(
            [len(samples)], _epoch_key(epoch, 0)), stable=True)
        cache = None
        if getattr(config, f'{stage}_preload'):
            cache = _cached(samples, lambda first: _fits_in_memory(first, len(samples)))
        read = cache.crop if cache is not None else _loader(samples)

        def source(k, key):
            return read(order[k], key)

    def element(k):
        key_source, key_augment = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(sample_key, k), 2))
        fields = source(k, key_source)
        if config.augment:
            fields = _augment(fields, key_augment)
        return drop_index_channel(fields)

    dataset = tf.data.Dataset.range(skip_batches * global_batch, steps * global_batch)
    dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(global_batch, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())
