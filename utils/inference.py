"""Tiled inference over images larger than the network's crop (README, Testing).

A sliding window of `crop` px with step `stride` (last window snapped to the
border) covers the image. Windows run through the networks in fixed-size
batches inside one tf.function, split over the strategy's replicas; their
height and semantic probabilities are blended with a window weight that
favours each window's centre (WINDOWS: the published Gaussian, or others
measured by bench/predict_quality.py). with_flips() adds test-time
transforms of the dihedral group D4: each window is also predicted flipped
and transposed, and the maps, turned back, are averaged.
"""
import numpy as np
import tensorflow as tf

import config
from nets import dae as dae_net
from utils import datasets
from utils.errors import SettingError

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


def _undo(maps, transform, key, normal_scale):
    """Outputs predicted on transformed windows, back in the windows' frame.
    Normals are vectors: stored as s * (n + 1) / 2, a component negated is
    s - value; the transform's matrix is orthogonal and symmetric per step,
    so its inverse acts on (x, y) as: columns flip x, rows flip y, transpose
    swaps them."""
    transpose, flip_rows, flip_cols = transform
    if flip_cols:
        maps = maps[:, :, ::-1]
    if flip_rows:
        maps = maps[:, ::-1]
    if transpose:
        maps = np.swapaxes(maps, 1, 2)
    if key == 'norm':
        maps = maps.copy()
        if flip_cols:
            maps[..., 0] = normal_scale - maps[..., 0]
        if flip_rows:
            maps[..., 1] = normal_scale - maps[..., 1]
        if transpose:
            maps = maps[..., [1, 0, 2]]
    return maps


def with_flips(predict_fn, flips, normal_scale=1.0):
    """predict_fn averaged over the first `flips` D4 transforms of each window
    (1: predict_fn itself). normal_scale: the normals' stored range (1, or
    255 without normalize_flag). Its batch_size is predict_fn's divided by
    `flips`, so a batch of windows still fills the network's calls."""
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
            total = _undo(maps[:n], transforms[0], key, normal_scale).astype(np.float32)
            for i, t in enumerate(transforms[1:], 1):
                total += _undo(maps[i * n:(i + 1) * n], t, key, normal_scale)
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


def _replica_step(mtl, dae, norm=False):
    """Per-replica forward pass of one batch of windows (inference mode)."""
    def step(windows):
        out = mtl(windows, training=False)
        height = tf.cast(out['height'], tf.float32)
        result = {'height_mtl': height[..., 0], 'height': height[..., 0]}
        if dae is not None:
            noise = tf.cast(dae(dae_net.assemble_input(out, windows), training=False),
                            tf.float32)
            result['height'] = (height - noise)[..., 0]
        if 'sem' in out:
            result['sem'] = tf.cast(out['sem'], tf.float32)
        if norm and 'norm' in out:
            result['norm'] = tf.cast(out['norm'], tf.float32)
        return result
    return step


def make_predict_fn(mtl, dae=None, strategy=None, batch_size=None, norm=False):
    """fn(windows [n, crop, crop, C] float32) -> dict of numpy arrays:
    'height' [n, crop, crop] (refined when a DAE is given), 'height_mtl'
    (the MTL's own height), 'sem' [n, crop, crop, K] (when the MTL has it),
    'norm' [n, crop, crop, 3] (with norm=True, when the MTL has it).

    Windows run `batch_size` at a time (default config.test_batch_size,
    rounded up to a multiple of the replicas); the last batch is padded so
    every call has one shape (one trace) and every replica equal work, and
    the padding is dropped. strategy None: config.strategy."""
    strategy = strategy or config.strategy
    replicas = strategy.num_replicas_in_sync
    batch = int(batch_size or config.test_batch_size)
    if batch < 1:
        raise SettingError(f"test_batch_size = {batch}: use at least 1")
    batch = -(-batch // replicas) * replicas
    per_replica = batch // replicas
    step = tf.function(_replica_step(mtl, dae, norm), jit_compile=bool(config.jit_compile))

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
    """Blend the windows of one image [H, W, C] into full-size maps.

    Returns 'height' and 'height_mtl' [H, W] float32 and 'sem' [H, W, K]
    (blended probabilities) when the networks predict semantics. The image
    must be at least crop x crop (smaller images are an error, not padded,
    so that every pixel is predicted from real context). `batch_size` is how
    many windows are cut out at a time (memory); None: predict_fn's batch.
    window: the blending weight (window_weight)."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")
    h, w = image.shape[:2]
    datasets.check_crop_fits('the image', image.shape, crop)
    if crop % 32:
        raise SettingError(f"cropSize = {crop}: the MTL needs a multiple of 32")
    weight = window_weight(crop, window).astype(np.float32)
    corners = [(y, x) for y in window_starts(h, crop, stride)
               for x in window_starts(w, crop, stride)]
    chunk = max(int(batch_size or getattr(predict_fn, "batch_size", 8)), 1)
    acc, total = {}, np.zeros((h, w), np.float32)
    for first in range(0, len(corners), chunk):
        part = corners[first:first + chunk]
        out = predict_fn(np.stack([image[y:y + crop, x:x + crop] for y, x in part]))
        for key, maps in out.items():
            if key not in acc:
                acc[key] = np.zeros((h, w) + maps.shape[3:], np.float32)
            target = acc[key]
            wk = weight if maps.ndim == 3 else weight[:, :, None]
            for (y, x), m in zip(part, maps):
                target[y:y + crop, x:x + crop] += m * wk
        for y, x in part:
            total[y:y + crop, x:x + crop] += weight
    return {k: v / (total if v.ndim == 2 else total[:, :, None]) for k, v in acc.items()}


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


def predict_rows(predict_fn, read_rows, shape, crop, stride, keys=('height', 'sem'),
                 batch_size=None, progress=None, window='gaussian'):
    """predict_tile for an image read in bands of rows: yields (first row,
    {key: maps of the finished rows}) from top to bottom.

    read_rows(r0, r1) -> float32 [r1 - r0, W, C] gives the image's rows, each
    row once, in order; shape is (H, W). The windows, their order, their
    batches and the float32 blending arithmetic are predict_tile's, so the
    maps are the same, but only the rows that windows not yet run still need
    are held, in buffers allocated once. An image smaller than the crop is
    reflection-padded at the bottom and right and its maps are cropped back.
    progress(done, total) is called per batch."""
    if crop % 32:
        raise SettingError(f"cropSize = {crop}: the MTL needs a multiple of 32")
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
        for key in keys:
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
