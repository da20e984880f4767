"""The decoded training set kept in memory: every field of every sample in
flat tf.Variables, cropped by TensorFlow ops.

Large-tile datasets (Vaihingen, DFC2018) are always cached (a random crop
read from disk would decode a whole tile per sample); patch datasets with
*_preload when they fit in preload_max_gb. Tiles are decoded one after the
other and each field packed as it is made (uint8 where lossless), then
copied into the variables, so building the cache takes little more memory
than the cache (bench/cache_memory.py). tf.data captures a variable by its
handle, so its graph rewrites (the default optimisations, auto-sharding for
distribution) never copy the cache, as they would copy captured tensors; no
crop runs Python, so none waits for the GIL, and a live iterator never keeps
the interpreter from exiting.
"""
import concurrent.futures
import ctypes
import functools
import math
import os

import numpy as np
import tensorflow as tf

from utils.errors import DatasetError
from utils.geo.grid import random_window
from utils.model import heads
from utils.train.fields import checked_fields, field_specs

_cache = {}     # the one decoded training set kept in memory: {'key': ..., 'value': _Cache}


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
    return {name: _pack(array) for name, array in checked_fields(sample, cfg)}


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


SLAB_BYTES = 32 * 2 ** 20   # written per _write call: a call costs about 2 ms, more
                            # than copying a patch, so one call per patch dominated


def _slabs(name, packed, parts, starts):
    """(part, start, 1-D array) to write: runs of consecutive samples of one
    part joined into one array of up to SLAB_BYTES (the ALIGN padding
    between them zero), a larger sample alone and uncopied. Each sample's
    array is freed once copied, so the cache is never held twice, only one
    slab more."""
    run, run_part = [], None     # (stored, start) of consecutive samples of one part

    def joined():
        if len(run) == 1:
            return run[0][0].ravel()
        first = run[0][1]
        slab = np.zeros(run[-1][1] + run[-1][0].size - first, run[0][0].dtype)
        for stored, start in run:
            slab[start - first:start - first + stored.size] = stored.ravel()
        return slab

    for fields, part, start in zip(packed, parts, starts):
        stored, _ = fields.pop(name)
        if run and (part != run_part or
                    (start + stored.size - run[0][1]) * stored.itemsize > SLAB_BYTES):
            yield run_part, run[0][1], joined()
            run = []
        run_part = part
        run.append((stored, start))
        del stored
    if run:
        yield run_part, run[0][1], joined()


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
                    raise DatasetError(
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
        for part, start, slab in _slabs(name, packed, self.part, self.start):
            _write(self.variables[part], tf.constant(start, tf.int64), slab)
            del slab
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
        self.specs = field_specs(cfg)
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
        y, x = random_window(key, size[0], size[1], c)
        return {name: tf.ensure_shape(self.fields[name].crop(tile, y, x, c, size, dtype),
                                      [c, c, channels])
                for name, dtype, channels in self.specs}


def _cache_key(samples, cfg):
    """Everything the decoded fields depend on (and cropSize, which checked_fields checks)."""
    return (tuple(samples), cfg.sar_mode, tuple(cfg.label_codes), cfg.unlabelled_code,
            cfg.image_scale, cfg.cropSize) + \
        tuple((h.name,) + tuple(getattr(cfg, k) for k in h.depends_on)
              for h in heads.from_config(cfg))


def _decode_all(samples, cfg, tiles, first=None):
    """Decode and pack every sample; `first`: samples[0], already done.

    Tiles are decoded one after the other, so what decoding needs beyond the
    cache is one tile's working memory; many small patches go in threads.
    """
    todo = samples if first is None else samples[1:]
    workers = 1 if tiles else max(1, min(len(todo), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(functools.partial(_decode_packed, cfg=cfg), todo))
    return done if first is None else [first] + done


def cached(samples, cfg, tiles, fits=None):
    """The cache of `samples` (large `tiles`: decoded one after the other),
    built on first use; None if `fits(first sample)` is False."""
    key = _cache_key(samples, cfg)
    if _cache.get('key') == key:
        return _cache['value']
    _cache.clear()      # one decoded training set at a time: free the old one first
    first = None
    if fits is not None:
        first = _decode_packed(samples[0], cfg)
        if not fits(first):
            return None
    value = _Cache(_decode_all(samples, cfg, tiles, first), cfg)
    _cache.update(key=key, value=value)
    return value


def fits_in_memory(first, count, max_gb):
    per_sample = sum(stored.nbytes for stored, _ in first.values())
    return per_sample * count <= max_gb * 2 ** 30
