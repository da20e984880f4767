"""Tiled inference over images larger than the network's crop (README, Testing).

A sliding window of `crop` px with step `stride` (last window snapped to the
border) covers the image. Windows run through the networks in fixed-size
batches inside one tf.function, split over the strategy's replicas; their
maps (the height, and the heads asked for: utils/heads.py) are blended with
a window weight that favours each window's centre (WINDOWS: the published
Gaussian, or others measured by bench/predict_quality.py). An image smaller
than the crop is reflection-padded and its maps cropped back. with_flips()
adds test-time transforms of the dihedral group D4: each window is also
predicted flipped and transposed, and the maps, turned back (heads' turn
for values with a direction), are averaged.
"""
import numpy as np
import tensorflow as tf

from nets import dae as dae_net
from utils import datasets, heads
from utils.errors import SettingError

# The MTL's encoder halves a window five times and its decoder doubles it back:
# a window side must be a multiple of this (config.CROP_MULTIPLE, cropSize's rule).
CROP_MULTIPLE = 32
GAUSS_SIGMA = 0.2
WINDOWS = ('gaussian', 'hann', 'triangle', 'trapezoid', 'flat')
# The D4 transforms as (transpose, flip rows, flip columns), applied in that
# order; with_flips uses the first N: 2 adds the left-right mirror, 4 is the
# group of flips, 8 all of D4.
D4 = ((False, False, False), (False, False, True), (False, True, False),
      (False, True, True), (True, False, False), (True, False, True),
      (True, True, False), (True, True, True))


def gaussian_window(crop):
    """[crop, crop] float64 weights exp(-d^2 / (2 * 0.2^2)) on a [-1, 1] grid, sum 1."""
    axis = np.linspace(-1.0, 1.0, crop)
    x, y = np.meshgrid(axis, axis)
    d = np.sqrt(x * x + y * y)
    w = np.exp(-d ** 2 / (2 * GAUSS_SIGMA ** 2))
    return w / w.sum()


def window_weight(crop, kind='gaussian'):
    """[crop, crop] float64 blending weights, sum 1: 'gaussian' (published),
    or the outer product of a 1-D profile sampled at the pixel centres:
    'hann' (sin^2; windows at half-crop steps sum to a constant), 'triangle',
    'trapezoid' (1 over the middle half, falling linearly to the edges),
    'flat'. Every weight is above 0, so a pixel one window covers keeps its
    prediction."""
    if kind == 'gaussian':
        return gaussian_window(crop)
    t = (np.arange(crop) + 0.5) / crop
    profiles = {'hann': lambda: np.sin(np.pi * t) ** 2,
                'triangle': lambda: 1 - np.abs(2 * t - 1),
                'trapezoid': lambda: np.minimum(1, 2 * (1 - np.abs(2 * t - 1))),
                'flat': lambda: np.ones(crop)}
    if kind not in profiles:
        raise SettingError(f"predict_window = {kind!r}: use one of {', '.join(WINDOWS)}")
    one = profiles[kind]()
    w = np.outer(one, one)
    return w / w.sum()


def _transform(maps, transform):
    """maps [n, H, W, ...] as the network sees them under a D4 transform."""
    transpose, flip_rows, flip_cols = transform
    if transpose:
        maps = np.swapaxes(maps, 1, 2)
    if flip_rows:
        maps = maps[:, ::-1]
    if flip_cols:
        maps = maps[:, :, ::-1]
    return maps


def _inverse(transform):
    """The D4 transform undoing `transform`. Flips undo themselves; undoing a
    transpose done first means flipping, then transposing, and a flip before
    a transpose is the other axis's flip after it."""
    transpose, flip_rows, flip_cols = transform
    return (True, flip_cols, flip_rows) if transpose else transform


def _undo(maps, transform, key, cfg):
    """Output `key` predicted on transformed windows, back in the windows'
    frame: its pixels moved back, then its values turned (heads' turn)."""
    inverse = _inverse(transform)
    maps = _transform(maps, inverse)
    head = heads.by_name(key)
    if head is not None and head.turn is not None:
        maps = np.asarray(head.turn(maps, *inverse, cfg))
    return maps


def with_flips(predict_fn, flips, cfg):
    """predict_fn averaged over the first `flips` D4 transforms of each window
    (1: predict_fn itself). cfg: the settings the heads' turn functions read
    (normalize_flag for the normals). Its batch_size is predict_fn's divided
    by `flips`, so a batch of windows still fills the network's calls."""
    if flips == 1:
        return predict_fn
    if not 1 <= flips <= len(D4):
        raise SettingError(f"predict_flips = {flips}: use 1 to {len(D4)}")
    transforms = D4[:flips]

    def predict(windows):
        windows = np.asarray(windows, np.float32)
        n = len(windows)
        out = predict_fn(np.concatenate([_transform(windows, t) for t in transforms]))
        result = {}
        for key, maps in out.items():
            total = _undo(maps[:n], transforms[0], key, cfg).astype(np.float32)
            for i, t in enumerate(transforms[1:], 1):
                total += _undo(maps[i * n:(i + 1) * n], t, key, cfg)
            result[key] = total / np.float32(flips)
        return result

    predict.batch_size = max(1, getattr(predict_fn, 'batch_size', 8) // flips)
    return predict


def window_starts(size, crop, stride):
    """Start offsets along one side: every `stride`, the last one at size - crop."""
    datasets.check_crop_fits('an image side', (size,), crop)
    if stride < 1:
        raise SettingError(f"test_stride = {stride}: use a positive step, e.g. cropSize // 6")
    starts = list(range(0, size - crop + 1, stride))
    if starts[-1] != size - crop:
        starts.append(size - crop)
    return starts


def _replica_step(mtl, dae, outputs):
    """Per-replica forward pass of one batch of windows (inference mode): the
    height (refined by the DAE when given; the MTL's own as 'height_mtl') and
    the MTL's outputs named in `outputs`, as float32 (the height without its
    channel axis)."""
    height_name = heads.HEIGHT.name

    def step(windows):
        out = mtl(windows, training=False)
        height = tf.cast(out[height_name], tf.float32)
        result = {height_name + '_mtl': height[..., 0], height_name: height[..., 0]}
        if dae is not None:
            noise = tf.cast(dae(dae_net.assemble_input(out, windows), training=False),
                            tf.float32)
            result[height_name] = (height - noise)[..., 0]
        for name in outputs:
            if name in out and name != height_name:
                result[name] = tf.cast(out[name], tf.float32)
        return result
    return step


def make_predict_fn(mtl, dae=None, *, cfg, strategy, batch_size=None, outputs=None):
    """fn(windows [n, crop, crop, C] float32) -> dict of numpy arrays:
    'height' [n, crop, crop] (refined when a DAE is given), 'height_mtl'
    (the MTL's own height), and the maps of every head named in `outputs`
    that the MTL has, under its name ([n, crop, crop, channels]; a class
    head's probabilities). outputs None: the heads predict.py writes by
    default (heads.DEFAULT).

    Windows run `batch_size` at a time (default cfg.test_batch_size, rounded
    up to a multiple of the strategy's replicas); the last batch is padded so
    every call has one shape (one trace) and every replica equal work, and
    the padding is dropped. cfg.jit_compile: XLA for the step."""
    if outputs is None:
        outputs = [h.name for h in heads.HEADS if h.output == heads.DEFAULT]
    replicas = strategy.num_replicas_in_sync
    batch = int(batch_size or cfg.test_batch_size)
    if batch < 1:
        raise SettingError(f"test_batch_size = {batch}: use at least 1")
    batch = -(-batch // replicas) * replicas
    per_replica = batch // replicas
    step = tf.function(_replica_step(mtl, dae, tuple(outputs)),
                       jit_compile=bool(cfg.jit_compile))

    if replicas == 1:
        run = step
    else:
        @tf.function
        def run(windows):
            def chunk(ctx):
                i = ctx.replica_id_in_sync_group
                return windows[i * per_replica:(i + 1) * per_replica]
            values = strategy.experimental_distribute_values_from_function(chunk)
            out = strategy.run(step, args=(values,))
            # gather concatenates the replicas' outputs in replica order, on every
            # worker; one tensor at a time (given the whole dict it returned only
            # the first replica's part on TF 2.21).
            return {k: strategy.gather(v, axis=0) for k, v in out.items()}

    def predict(windows):
        windows = np.asarray(windows, np.float32)
        n = len(windows)
        pieces = []
        for first in range(0, n, batch):
            chunk = windows[first:first + batch]
            real = len(chunk)
            if real < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, 0)])
            out = run(tf.constant(chunk))
            pieces.append({k: v.numpy()[:real] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}

    predict.batch_size = batch
    return predict


def predict_tile(predict_fn, image, crop, stride, batch_size=None, window='gaussian'):
    """Blend the windows of one image [H, W, C] into full-size maps: every map
    predict_fn returns ('height' and 'height_mtl' [H, W] float32, and e.g.
    'sem' [H, W, K] blended probabilities). predict_rows over the image in
    memory, so the maps are those of the streamed path, bit for bit.
    `batch_size`: windows cut out at a time (memory); None: predict_fn's
    batch. window: the blending weight (window_weight)."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")
    h, w = image.shape[:2]
    maps = {}
    for top, band in predict_rows(predict_fn, lambda r0, r1: image[r0:r1], (h, w), crop,
                                  stride, keys=None, batch_size=batch_size, window=window):
        for key, rows in band.items():
            if key not in maps:
                maps[key] = np.empty((h,) + rows.shape[1:], np.float32)
            maps[key][top:top + len(rows)] = rows
    return maps


def check_crop(crop):
    """SettingError unless the window side suits the MTL (CROP_MULTIPLE)."""
    if crop % CROP_MULTIPLE:
        raise SettingError(f"cropSize = {crop}: the MTL needs a multiple of {CROP_MULTIPLE}")


def _drop_rows(buffer, rows):
    """Move buffer[rows:] to the top in place and zero the freed rows. Copies in
    blocks of `rows`, which never overlap, so NumPy needs no temporary."""
    if rows <= 0:
        return
    rows = min(rows, len(buffer))
    for first in range(0, len(buffer) - rows, rows):
        end = min(first + rows, len(buffer) - rows)
        buffer[first:end] = buffer[first + rows:end + rows]
    buffer[len(buffer) - rows:] = 0


def predict_rows(predict_fn, read_rows, shape, crop, stride, keys=None, batch_size=None,
                 progress=None, window='gaussian'):
    """Blended maps of an image read in bands of rows: yields (first row,
    {key: maps of the finished rows}) from top to bottom.

    read_rows(r0, r1) -> float32 [r1 - r0, W, C] gives the image's rows, each
    row once, in order; shape is (H, W). keys: the maps of predict_fn to
    blend (None: all). Windows in row-major order, `batch_size` at a time
    (None: predict_fn's batch), are accumulated in float32 with the window
    weight; only the rows that windows not yet run still need are held, in
    buffers allocated once. An image smaller than the crop is
    reflection-padded at the bottom and right and its maps are cropped back.
    progress(done, total) is called per batch."""
    check_crop(crop)
    if stride > crop:
        raise SettingError(f"test_stride = {stride} leaves pixels no window covers: "
                           f"use at most cropSize = {crop}")
    h, w = shape
    ph, pw = max(h, crop), max(w, crop)
    if ph != h:         # fewer rows than the crop: held whole
        small = read_rows(0, h)
        padded = np.pad(small, ((0, ph - h), (0, pw - w), (0, 0)), mode='reflect')

        def read_rows(r0, r1):
            return padded[r0:r1]
    elif pw != w:       # narrower than the crop: each band of rows padded on its own
        source = read_rows  # (reflecting columns never mixes rows: the same as whole)

        def read_rows(r0, r1):
            return np.pad(source(r0, r1), ((0, 0), (0, pw - w), (0, 0)), mode='reflect')
    weight = window_weight(crop, window).astype(np.float32)
    xs = window_starts(pw, crop, stride)
    ys = window_starts(ph, crop, stride)
    count = len(ys) * len(xs)   # window i is at (ys[i // len(xs)], xs[i % len(xs)]): no
                                # list of every window, whose size would follow the image
    chunk = max(int(batch_size or getattr(predict_fn, "batch_size", 8)), 1)
    # A batch reaches from its first window's row to its last window's row + crop.
    held = min(ph, crop + stride * -(-chunk // len(xs)))
    image, total, acc = None, np.zeros((held, pw), np.float32), {}
    top, read = 0, 0    # buffers hold rows [top, top + held); rows < read were read
    for first in range(0, count, chunk):
        part = [(ys[i // len(xs)], xs[i % len(xs)]) for i in range(first, min(first + chunk,
                                                                          count))]
        need = part[-1][0] + crop
        if need > read:
            rows = read_rows(read, need)
            if image is None:
                image = np.zeros((held,) + rows.shape[1:], np.float32)
            image[read - top:need - top] = rows
            read = need
        out = predict_fn(np.stack([image[y - top:y - top + crop, x:x + crop]
                                   for y, x in part]))
        for key in out if keys is None else keys:
            if key not in out:
                continue
            maps = out[key]
            if key not in acc:
                acc[key] = np.zeros((held, pw) + maps.shape[3:], np.float32)
            target = acc[key]
            wk = weight if maps.ndim == 3 else weight[:, :, None]
            for (y, x), m in zip(part, maps):
                target[y - top:y - top + crop, x:x + crop] += m * wk
        for y, x in part:
            total[y - top:y - top + crop, x:x + crop] += weight
        if progress:
            progress(first + len(part), count)
        # rows above the next window are final
        done = ys[(first + chunk) // len(xs)] if first + chunk < count else ph
        if done > top:
            if top < h:
                keep, t = min(done, h) - top, total[:min(done, h) - top]
                yield top, {k: (v[:keep] / (t if v.ndim == 2 else t[:, :, None]))[:, :w]
                            for k, v in acc.items()}
            for buffer in [image, total, *acc.values()]:
                _drop_rows(buffer, done - top)
            top = done
