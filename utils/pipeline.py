"""The tf.data input pipeline of both training stages.

`train_dataset(task, global_batch, epoch, skip_batches)` yields GLOBAL batches
(hand them to `strategy.experimental_distribute_dataset`), each a dict:
    'image'  [B,c,c,C] float32 in [0,1]           (C = 4 with sar_mode, else 3)
    'mask'   [B,c,c,1] float32, 1 where the height is valid
and the target of every head switched on (utils/heads.py), under its name:
    'height' [B,c,c,1] float32, 0 where nodata
    'sem'    [B,c,c]   int32 class indices        (sem_flag; one-hot in the loss)
    'norm'   [B,c,c,3] float32 (n+1)/2            (norm_flag; x255 without normalize_flag)
    'edge'   [B,c,c,1] float32 in {0,1}           (edge_flag)
with c = cropSize; the settings come from task.cfg (config.py's names). The
targets are made over the whole tile or patch (normals and edges by
utils.geometry, which fills nodata before filtering), then cropped with the
rest, so a crop's border pixels see their real neighbours.

Every random choice for a sample (tile, crop position, augmentation) is a
stateless function of (seed, epoch, k), k being the sample's position
in the epoch. An epoch is therefore reproducible, and resuming with
skip_batches just starts the index range later: it yields exactly the tail of
the uninterrupted epoch without producing the skipped samples.

Large-tile datasets (Vaihingen, DFC2018): the training tiles are decoded
once per process with their normals and edge maps and kept in memory,
whatever *_preload says (a random crop read from disk would decode a whole
tile per sample). Each sample takes a random tile and a random crop; an epoch
is *_training_samples samples, floored to whole global batches. Tiles are
decoded one after the other and each field packed as it is made, then copied
into flat tf.Variables, so building the cache takes little more memory than
the cache (bench/cache_memory.py). Crops are cut from the variables by
TensorFlow ops: no Python runs per sample, and tf.data's graph rewrites,
which copy captured tensors, leave variables alone.

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
import concurrent.futures
import ctypes
import functools
import gc
import math
import os

import numpy as np
import tensorflow as tf

from utils import datasets, heads
from utils.errors import SettingError

_cache = {}     # the one decoded training set kept in memory: {'key': ..., 'value': _Cache}


def _field_specs(cfg):
    """(name, dtype, channels) of every element field, in a fixed order."""
    return [('image', tf.float32, datasets.image_channels(cfg)), ('mask', tf.float32, 1)] + [
        (h.name, tf.as_dtype(h.dtype), h.field_channels) for h in heads.from_config(cfg)]


def _batch_error(count, what, global_batch, stage, fix):
    return datasets.DatasetError(
        f"{what} gives {count} samples, fewer than one global batch of {global_batch} "
        f"({stage}_batchSize x replicas): {fix}")


def steps_per_epoch(task, global_batch):
    """Whole global batches in one epoch of `task` (utils/tasks.py)."""
    stage, cfg = task.stage, task.cfg
    if global_batch < 1:
        raise SettingError(f"global batch = {global_batch}: set {stage}_batchSize to 1 or more")
    if datasets.is_tile_dataset(cfg):
        count = task.training_samples
        if count < global_batch:
            raise _batch_error(count, f"{stage}_training_samples = {count}", global_batch,
                               stage, f"raise {stage}_training_samples or lower "
                                      f"{stage}_batchSize")
    else:
        count = len(datasets.find_split(cfg, 'train'))
        if count < global_batch:
            raise _batch_error(
                count, f"the 'train' split of {cfg.dataset_name} (under "
                       f"{os.path.join(cfg.shortcut_path, cfg.dataset_name)})",
                global_batch, stage,
                f"lower {stage}_batchSize, train on fewer replicas, add training samples, "
                f"or set train_valid_flag = False to train on the valid split too")
    return count // global_batch


# ----------------------------------------------------------------- decoding

def iter_fields(loaded, cfg):
    """Every field of one loaded sample at full size, one after the other:
    (name, [H, W, ch] array). A caller that packs or drops each before asking
    for the next never holds all of a full-size tile's float32 fields at once."""
    loaded = loaded._replace(image=np.asarray(loaded.image, np.float32),
                             height=np.asarray(loaded.height, np.float32))
    yield 'image', loaded.image
    yield 'mask', np.isfinite(loaded.height).astype(np.float32)[..., None]
    for head in heads.from_config(cfg):
        yield head.name, np.asarray(head.target(loaded, cfg), head.dtype)


def make_fields(loaded, cfg):
    """Every field of one loaded sample at full size: name -> [H, W, ch] array."""
    return dict(iter_fields(loaded, cfg))


def drop_index_channel(fields, cfg):
    """Class-index targets lose their channel axis, as the losses take them."""
    for head in heads.from_config(cfg):
        if head.dtype == 'int32' and head.name in fields:
            fields[head.name] = fields[head.name][..., 0]
    return fields


def _fields(sample, cfg):
    """iter_fields of one sample, each field checked as it comes."""
    loaded = datasets.load_sample(cfg, sample)
    shape = np.shape(loaded.image)[:2]
    datasets.check_crop_fits(sample.image, shape, cfg.cropSize)
    channels = {name: count for name, _, count in _field_specs(cfg)}
    fields = iter_fields(loaded, cfg)
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


def _decode(sample, cfg):
    """Every field of one sample at full size: name -> [H, W, ch] array."""
    return dict(_fields(sample, cfg))


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
    """The values _pack was given, from the tensor it stored."""
    if not is_packed:
        return stored
    return tf.cast(stored, tf.int32) if dtype == tf.int32 else \
        tf.cast(stored, tf.float32) / 255.0


def _decode_packed(sample, cfg):
    return {name: _pack(array) for name, array in _fields(sample, cfg)}


ALIGN = 64      # elements: 64 bytes or more, TensorFlow's largest buffer alignment
PART_ELEMENTS = 2 ** 31 - ALIGN     # at most per variable: tf.raw_ops.Empty takes int32 sizes


@tf.function
def _adopt_empty(variable, length):
    """Give `variable` `length` uninitialised elements. Assigned inside a
    function the new buffer has no other owner, so the variable takes it
    over instead of copying it, and its pages stay unused until written."""
    variable.assign(tf.raw_ops.Empty(shape=tf.reshape(length, [1]), dtype=variable.dtype))


@tf.function(reduce_retracing=True)     # one trace for samples of any size
def _write(variable, start, values):
    """variable[start:start + size(values)] = values, in place.

    The variable lets go of its buffer before the update, which then owns it
    alone and may write into it (TensorStridedSliceUpdate forwards its
    input); a sliced assign to the variable would also work in place but
    turns on its copy-on-read mode, and every later read (every crop) would
    copy the whole variable."""
    current = variable.value()
    emptied = variable.assign(tf.zeros([0], variable.dtype), read_value=False)
    with tf.control_dependencies([emptied]):
        end = start + tf.size(values, tf.int64)
        updated = tf.raw_ops.TensorStridedSliceUpdate(
            input=current, begin=tf.reshape(start, [1]), end=tf.reshape(end, [1]),
            strides=tf.ones([1], tf.int64), value=values)
    variable.assign(updated)


def _trim_heap():
    """Give freed memory back to the system. glibc keeps freed blocks below
    its (self-raising) mmap threshold in the heap, and the arrays of a
    field copied into its variables would still count as resident while the
    next field is copied."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to do
        pass


def _round_up(count, step):
    return -(-count // step) * step


class _Field:
    """One field of every cached sample, in flat 1-D tf.Variables.

    Samples of the same storage kind (dtype, packed: what _pack chose) share a
    variable (a part; a new part when one would pass PART_ELEMENTS), one
    after the other, each starting on an ALIGN-element boundary. Sample i's
    rows are w * channels elements long: a band of rows that starts on a
    multiple of quantum[i] rows and spans a multiple of quantum[i] rows then
    starts and ends on ALIGN boundaries, and TensorFlow's Slice returns such
    a slice of a 1-D tensor as a view of its buffer instead of a copy. A
    part's tail has room for its last sample's band rounded up to whole
    quanta (what the band reads past a sample's end is never used).
    """

    def __init__(self, name, channels, shapes, packed):
        self.channels, self.shapes = channels, shapes
        self.parts = []     # (dtype, is_packed) of each part
        ends, length = [], []
        self.part, self.start = [], []      # of each sample
        quantum = [ALIGN // math.gcd(w * channels, ALIGN) for _, w in shapes]
        for fields, (h, w), q in zip(packed, shapes, quantum):
            stored, is_packed = fields[name]
            kind, size = (stored.dtype, is_packed), _round_up(h, q) * w * channels
            part = next((p for p, k in enumerate(self.parts)
                         if k == kind and ends[p] + size <= PART_ELEMENTS), None)
            if part is None:
                if size > PART_ELEMENTS:
                    raise datasets.DatasetError(
                        f"{name} of a {h}x{w} sample has {size} elements, more than "
                        f"TensorFlow's {PART_ELEMENTS} per tensor")
                part = len(self.parts)
                self.parts.append(kind)
                ends.append(0)
                length.append(0)
            self.part.append(part)
            self.start.append(ends[part])
            length[part] = max(length[part], ends[part] + size)
            ends[part] += _round_up(h * w * channels, ALIGN)
        self.variables = []
        for (dtype, _), count in zip(self.parts, length):
            with tf.device('/CPU:0'):
                variable = tf.Variable(tf.zeros([0], dtype), shape=tf.TensorShape([None]),
                                       trainable=False)
                _adopt_empty(variable, tf.constant(_round_up(count, ALIGN), tf.int32))
            self.variables.append(variable)
        for fields, part, start in zip(packed, self.part, self.start):
            # each sample's array is freed once copied: the cache is never held twice
            stored, _ = fields.pop(name)
            _write(self.variables[part], tf.constant(start, tf.int64), stored.ravel())
            del stored
        _trim_heap()
        self.part_of = tf.constant(self.part, tf.int32)
        self.start_of = tf.constant(self.start, tf.int64)
        self.quantum_of = tf.constant(quantum, tf.int64)

    def stored(self, index):
        """Sample `index` as stored: ([H, W, channels] array, is_packed)."""
        (h, w), start, part = self.shapes[index], self.start[index], self.part[index]
        array = self.variables[part][start:start + h * w * self.channels].numpy()
        return array.reshape(h, w, self.channels), self.parts[part][1]

    def crop(self, tile, y, x, c, size, dtype):
        """The [c, c, channels] window at (y, x) of sample `tile`, unpacked."""
        channels = self.channels
        y, x = tf.cast(y, tf.int64), tf.cast(x, tf.int64)
        width = tf.cast(size[1], tf.int64)
        start, quantum = tf.gather(self.start_of, tile), tf.gather(self.quantum_of, tile)
        top = y // quantum * quantum
        rows = (y + c - top + quantum - 1) // quantum * quantum
        row = width * channels

        def cut(variable, is_packed):
            band = tf.slice(variable.value(), tf.reshape(start + top * row, [1]),
                            tf.reshape(rows * row, [1]))
            band = tf.reshape(band, tf.stack([rows, width, channels]))
            window = tf.slice(band, tf.stack([y - top, x, tf.constant(0, tf.int64)]),
                              tf.constant([c, c, channels], tf.int64))
            return _unpack(window, is_packed, dtype)
        branches = [functools.partial(cut, variable, is_packed)
                    for variable, (_, is_packed) in zip(self.variables, self.parts)]
        if len(branches) == 1:
            return branches[0]()
        return tf.switch_case(tf.gather(self.part_of, tile), branches)


class _Cache:
    """Decoded samples in memory, each field as _pack stored it (see _Field).

    The samples live in tf.Variables and crops are cut by TensorFlow ops:
    tf.data captures a variable by its handle, so its graph rewrites (the
    default optimisations, auto-sharding for distribution) never copy the
    cache, as they would copy captured tensors; and no crop runs Python, so
    none waits for the GIL, and a live iterator never keeps the interpreter
    from exiting.
    """

    def __init__(self, packed, cfg):
        if tf.distribute.has_strategy():
            raise RuntimeError("build the training dataset outside strategy.scope(): "
                               "inside it the cache's variables would be mirrored, one copy "
                               "per replica")
        self.size = len(packed)
        shapes = [fields['image'][0].shape[:2] for fields in packed]
        self.sizes = tf.constant(shapes, tf.int32)
        self.nbytes = sum(stored.nbytes for fields in packed for stored, _ in fields.values())
        self.specs = _field_specs(cfg)
        self.crop_size, self.seed = cfg.cropSize, cfg.seed
        self.fields = {name: _Field(name, channels, shapes, packed)
                       for name, _, channels in self.specs}

    def stored(self, index):
        """Every field of sample `index` as stored: name -> (array, is_packed)."""
        return {name: field.stored(index) for name, field in self.fields.items()}

    def crop(self, tile, key):
        """The fields of a random crop of cached sample `tile`."""
        c = self.crop_size
        size = tf.gather(self.sizes, tile)
        y, x = _offsets(key, size[0], size[1], c)
        return {name: tf.ensure_shape(self.fields[name].crop(tile, y, x, c, size, dtype),
                                      [c, c, channels])
                for name, dtype, channels in self.specs}


def _cache_key(samples, cfg):
    """Everything the decoded fields depend on (and cropSize, which _decode checks)."""
    return (tuple(samples), cfg.sar_mode, tuple(cfg.label_codes), cfg.unlabelled_code,
            cfg.image_scale, cfg.cropSize) + \
        tuple((h.name,) + tuple(getattr(cfg, k) for k in h.depends_on)
              for h in heads.from_config(cfg))


def _decode_all(samples, cfg, first=None):
    """Decode and pack every sample; `first`: samples[0], already done.

    Tiles are decoded one after the other, so what decoding needs beyond the
    cache is one tile's working memory; many small patches go in threads.
    """
    todo = samples if first is None else samples[1:]
    workers = 1 if datasets.is_tile_dataset(cfg) else max(1, min(len(todo), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(functools.partial(_decode_packed, cfg=cfg), todo))
    return done if first is None else [first] + done


def _cached(samples, cfg, fits=None):
    """The cache of `samples`, built on first use; None if `fits(first sample)` is False."""
    key = _cache_key(samples, cfg)
    if _cache.get('key') == key:
        return _cache['value']
    _cache.clear()      # one decoded training set at a time: free the old one first
    first = None
    if fits is not None:
        first = _decode_packed(samples[0], cfg)
        if not fits(first):
            return None
    value = _Cache(_decode_all(samples, cfg, first), cfg)
    _cache.update(key=key, value=value)
    return value


def _fits_in_memory(first, count, max_gb):
    per_sample = sum(stored.nbytes for stored, _ in first.values())
    return per_sample * count <= max_gb * 2 ** 30


# ----------------------------------------------------------------- randomness

def _epoch_key(seed, epoch, purpose):
    """Key of one purpose (0: file order, 1: samples) in one epoch."""
    base = tf.constant([seed, epoch], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, purpose)


def _offsets(key, height, width, c):
    """A uniform random crop position of a c x c crop in an image of height x width."""
    ky, kx = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    y = tf.random.stateless_uniform([], ky, 0, height - c + 1, tf.int32)
    x = tf.random.stateless_uniform([], kx, 0, width - c + 1, tf.int32)
    return y, x


def _maybe(flag, fn, value):
    return tf.cond(flag, lambda: fn(value), lambda: value)


def _augment(fields, key, cfg):
    """One of the 8 flips/rotations of the square crop, the same for every
    field; then the values of a direction-dependent head (the normals) turn
    with the image, as its row in utils/heads.py says."""
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
    specs = _field_specs(cfg)
    c = cfg.cropSize

    def load(index):
        fields = _decode(samples[int(index)], cfg)
        return [fields[name] for name, _, _ in specs]

    def crop(index, key):
        arrays = tf.numpy_function(load, [index], [dtype for _, dtype, _ in specs],
                                   stateful=False)
        shape = tf.shape(arrays[0])
        y, x = _offsets(key, shape[0], shape[1], c)
        return {name: tf.ensure_shape(array[y:y + c, x:x + c], [c, c, channels])
                for (name, _, channels), array in zip(specs, arrays)}
    return crop


def _options():
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return options


def train_dataset(task, global_batch, epoch, skip_batches=0):
    """Batches `skip_batches` .. steps_per_epoch - 1 of training epoch `epoch`
    of `task` (utils/tasks.py: its settings cfg, training_samples, preload)."""
    cfg = task.cfg
    steps = steps_per_epoch(task, global_batch)
    if not 0 <= skip_batches <= steps:
        raise ValueError(f"skip_batches = {skip_batches}: an epoch of {task.stage} has "
                         f"{steps} batches of {global_batch}")
    samples = datasets.find_split(cfg, 'train')
    sample_key = _epoch_key(cfg.seed, epoch, 1)
    if datasets.is_tile_dataset(cfg):
        cache = _cached(samples, cfg)

        def source(k, key):
            key_pick, key_crop = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            pick = tf.random.stateless_uniform([], key_pick, 0, cache.size, tf.int32)
            return cache.crop(pick, key_crop)
    else:
        order = tf.argsort(tf.random.stateless_uniform(
            [len(samples)], _epoch_key(cfg.seed, epoch, 0)), stable=True)
        cache = None
        if task.preload:
            cache = _cached(samples, cfg, lambda first: _fits_in_memory(
                first, len(samples), cfg.preload_max_gb))
        read = cache.crop if cache is not None else _loader(samples, cfg)

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
