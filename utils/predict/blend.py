"""Blending the windows of an image into whole maps, streamed in bands of rows.

Windows of `crop` px every `stride` px, the last snapped to the border
(utils/geo/grid.Grid.sliding), cover the image; their maps (the height, and
the heads asked for) are accumulated with the window weight
(utils/predict/windows.py) and divided by the summed weight. Only the rows
the remaining windows still need are held; an image smaller than the crop
is reflection-padded and its maps cropped back.

With `spread`, the same pass also gives 'spread': at each pixel the
weighted standard deviation of the heights of the windows covering it,
sqrt(sum w h^2 / sum w - (sum w h / sum w)^2), the raw material of
predict.py's uncertainty (utils/predict/calibration.py). Its two sums are
float64: in float32 the difference of squares of 30 m heights loses
centimetres to rounding.
"""
import numpy as np

from utils.errors import SettingError
from utils.geo.grid import Grid
from utils.model.heads import HEIGHT
from utils.predict.windows import window_weight
from utils.rules import CROP_MULTIPLE


def predict_tile(predict_fn, image, crop, stride, batch_size=None, window='gaussian',
                 spread=False):
    """Blend the windows of one image [H, W, C] into full-size maps: every map
    predict_fn returns ('height' and 'height_mtl' [H, W] float32, and e.g.
    'sem' [H, W, K] blended probabilities). predict_rows over the image in
    memory, so the maps are those of the streamed path, bit for bit.
    `batch_size`: windows cut out at a time (memory); None: predict_fn's
    batch. window: the blending weight (window_weight); spread: add
    'spread' [H, W] (module docstring)."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")
    h, w = image.shape[:2]
    maps = {}
    for top, band in predict_rows(predict_fn, lambda r0, r1: image[r0:r1], (h, w), crop,
                                  stride, keys=None, batch_size=batch_size, window=window,
                                  spread=spread):
        for key, rows in band.items():
            if key not in maps:
                maps[key] = np.empty((h,) + rows.shape[1:], np.float32)
            maps[key][top:top + len(rows)] = rows
    return maps


def _spread(moments, total):
    """float32 weighted standard deviation from (sum w h, sum w h^2) and sum w;
    rounding can make the variance a hair below 0 where every window agrees."""
    mean = moments[0] / total
    return np.sqrt(np.maximum(moments[1] / total - mean * mean, 0)).astype(np.float32)


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
                 progress=None, window='gaussian', spread=False):
    """Blended maps of an image read in bands of rows: yields (first row,
    {key: maps of the finished rows}) from top to bottom.

    read_rows(r0, r1) -> float32 [r1 - r0, W, C] gives the image's rows, each
    row once, in order; shape is (H, W). keys: the maps of predict_fn to
    blend (None: all). Windows in row-major order, `batch_size` at a time
    (None: predict_fn's batch), are accumulated in float32 with the window
    weight; only the rows that windows not yet run still need are held, in
    buffers allocated once. An image smaller than the crop is
    reflection-padded at the bottom and right and its maps are cropped back.
    progress(done, total) is called per batch. spread: the bands hold
    'spread' too, the windows' weighted standard deviation of the height
    (module docstring)."""
    if crop % CROP_MULTIPLE:
        raise SettingError(f"cropSize = {crop}: the MTL needs a multiple of {CROP_MULTIPLE}")
    if stride > crop:
        raise SettingError(f"window stride {stride} leaves pixels no window covers: "
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
    ys, xs = Grid(ph, pw).sliding(crop, stride)
    count = len(ys) * len(xs)   # window i is at (ys[i // len(xs)], xs[i % len(xs)]): no
                                # list of every window, whose size would follow the image
    chunk = max(int(batch_size or getattr(predict_fn, "batch_size", 8)), 1)
    # A batch reaches from its first window's row to its last window's row + crop.
    held = min(ph, crop + stride * -(-chunk // len(xs)))
    image, total, acc = None, np.zeros((held, pw), np.float32), {}
    # sum w h and sum w h^2 of the height for the spread (float64: module docstring)
    moments = np.zeros((2, held, pw)) if spread else None
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
        if spread:
            for (y, x), m in zip(part, out[HEIGHT.name]):
                m = m.astype(np.float64)
                moments[:, y - top:y - top + crop, x:x + crop] += (weight * m, weight * m * m)
        if progress:
            progress(first + len(part), count)
        # rows above the next window are final
        done = ys[(first + chunk) // len(xs)] if first + chunk < count else ph
        if done > top:
            if top < h:
                keep, t = min(done, h) - top, total[:min(done, h) - top]
                band = {k: (v[:keep] / (t if v.ndim == 2 else t[:, :, None]))[:, :w]
                        for k, v in acc.items()}
                if spread:
                    band['spread'] = _spread(moments[:, :keep], t)[:, :w]
                yield top, band
            for buffer in [image, total, *acc.values(), *(moments if spread else ())]:
                _drop_rows(buffer, done - top)
            top = done
