"""Errors per building, for test_dsm.py: every building of the reference
labels (4-connected regions of the building class) gets the Hazen median
and 70th percentile of its predicted and reference heights over its cells
with a reference height; MAE, RMSE and bias (predicted - reference, m) of
both, overall and by reference height bin, beside the pixel errors in the
same bins."""
import math

import numpy as np

# Bins of reference height (m): a building by its reference 70th percentile,
# a pixel by its reference height.
HEIGHT_BINS = ((0, 5), (5, 10), (10, 20), (20, math.inf))
BIN_NAMES = tuple(f'{lo:g}-{hi:g}' if math.isfinite(hi) else f'>{lo:g}'
                  for lo, hi in HEIGHT_BINS)


def pixel_sums_by_height(pred, truth):
    """Per HEIGHT_BINS bin of the reference height, over the pixels where
    both are finite: [pixels, sum |e|, sum e^2, sum e] with e = pred - truth
    (float64; the first bin also takes heights below 0)."""
    pred = np.asarray(pred, np.float64).reshape(np.shape(truth))
    truth = np.asarray(truth, np.float64)
    valid = np.isfinite(truth) & np.isfinite(pred)
    t, e = truth[valid], pred[valid] - truth[valid]
    sums = np.zeros((len(HEIGHT_BINS), 4))
    for k, (lo, hi) in enumerate(HEIGHT_BINS):
        ek = e[(t >= lo) & (t < hi) if k else (t < hi)]
        sums[k] = (ek.size, np.abs(ek).sum(), (ek ** 2).sum(), ek.sum())
    return sums


def instances(labels, classes):
    """(count, HxW int32 ids 1..count, 0 elsewhere): the 4-connected regions
    of the class indices `classes` in a label map, one building each (the
    connectivity gis/footprints.trace_footprints polygonises with)."""
    import cv2
    count, ids = cv2.connectedComponents(np.isin(labels, classes).astype(np.uint8),
                                         connectivity=4)
    return count - 1, ids


def _group_percentiles(ids, values, qs):
    """{q: per-id quantile} of `values` grouped by `ids` (ids 1..), each the
    gis/heights.weighted_quantiles of equal weights (Hazen's), and the group ids."""
    order = np.lexsort((values, ids))
    ids, values = ids[order], values[order]
    groups, starts, counts = np.unique(ids, return_index=True, return_counts=True)
    out = {}
    for q in qs:
        pos = np.clip(q * counts - 0.5, 0, counts - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, counts - 1)
        frac = pos - lo
        out[q] = values[starts + lo] * (1 - frac) + values[starts + hi] * frac
    return out, groups


def building_pairs(pred, truth, labels, classes):
    """[buildings, 4]: predicted and reference median, predicted and reference
    70th percentile of each building of the reference labels, over its
    pixels with a valid reference height (buildings without any left out)."""
    count, ids = instances(labels, classes)
    if not count:
        return np.zeros((0, 4))
    pred = np.asarray(pred, np.float64).reshape(ids.shape)
    truth = np.asarray(truth, np.float64)
    valid = (ids > 0) & np.isfinite(truth) & np.isfinite(pred)
    p, groups = _group_percentiles(ids[valid], pred[valid], (0.5, 0.7))
    r, _ = _group_percentiles(ids[valid], truth[valid], (0.5, 0.7))
    return np.column_stack([p[0.5], r[0.5], p[0.7], r[0.7]])


def _errors(error):
    if not error.size:
        return {'mae': None, 'rmse': None, 'bias': None}
    return {'mae': float(np.mean(np.abs(error))), 'rmse': float(np.sqrt(np.mean(error ** 2))),
            'bias': float(np.mean(error))}


class BuildingErrors:
    """Errors per building over a split: add() each image, results() at the end.
    Pixel errors by bin are summed as they come (no image kept)."""

    def __init__(self, classes):
        self.classes = classes
        self.pairs = []
        self.pixels = np.zeros((len(HEIGHT_BINS), 4))    # count, |e|, e^2, e

    def add(self, pred, truth, labels):
        pred = np.asarray(pred, np.float64).reshape(np.shape(truth))
        truth = np.asarray(truth, np.float64)
        self.pairs.append(building_pairs(pred, truth, labels, self.classes))
        self.pixels += pixel_sums_by_height(pred, truth)

    def results(self):
        """{buildings, median: {mae, rmse, bias}, p70: {...}, by_height: {bin:
        {buildings, median_*, p70_*, pixels, pixel_*}}}; errors are
        predicted - reference, in metres."""
        pairs = np.concatenate(self.pairs) if self.pairs else np.zeros((0, 4))
        out = {'buildings': int(len(pairs)),
               'median': _errors(pairs[:, 0] - pairs[:, 1]),
               'p70': _errors(pairs[:, 2] - pairs[:, 3]), 'by_height': {}}
        ref = pairs[:, 3]
        for k, ((lo, hi), name) in enumerate(zip(HEIGHT_BINS, BIN_NAMES)):
            inside = pairs[(ref >= lo) & (ref < hi) if k else (ref < hi)]
            row = {'buildings': int(len(inside))}
            row.update({f'median_{m}': v for m, v in _errors(inside[:, 0] - inside[:, 1]).items()})
            row.update({f'p70_{m}': v for m, v in _errors(inside[:, 2] - inside[:, 3]).items()})
            n, absolute, square, total = self.pixels[k]
            row.update(pixels=int(n), pixel_mae=absolute / n if n else None,
                       pixel_rmse=math.sqrt(square / n) if n else None,
                       pixel_bias=total / n if n else None)
            out['by_height'][name] = row
        return out
