"""How good a height uncertainty is (README, Uncertainty), per image and
averaged over images as the height metrics are, for test_dsm.py.

Sparsification (Poggi et al., CVPR 2020): remove the pixels of largest
sigma first and follow the RMSE of those left. At step k of STEPS the
first floor(k n / STEPS) pixels by decreasing sigma are gone (among equal
sigmas the expectation over their orders: each counts its group's mean
square error, since any fixed order, e.g. the pixels', would rank them by
where they lie); a curve's area is its mean over the steps, in metres. The
oracle removes by decreasing |error| (the best any order can do), a random
order leaves the RMSE of all pixels in expectation. AUSE = area(curve) -
area(oracle), 0 at best; AURG = RMSE of all - area(curve), above 0 when
sigma ranks errors better than chance. Coverage: the share of pixels whose
|error| is at most k sigma (68.27% and 95.45% for normal errors of standard
deviation sigma). Spearman: the correlation of the ranks of sigma and
|error|, equal values sharing their mean rank.
"""
import math

import numpy as np

from utils.evaluate.buildings import BIN_NAMES, HEIGHT_BINS

STEPS = 50
NOMINAL = {1: 0.6827, 2: 0.9545}


def sparsification(key, error, steps=STEPS):
    """[steps] RMSE of the pixels left after removing, at step k, the first
    floor(k n / steps) by decreasing `key`, equal keys in expectation
    (module docstring)."""
    key = np.ravel(key)
    order = np.argsort(-key, kind='stable')
    key, square = key[order], np.ravel(np.asarray(error, np.float64))[order] ** 2
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.diff(np.r_[starts, len(key)])
    square = np.repeat(np.add.reduceat(square, starts) / counts, counts)
    left = square[::-1]         # the last removed first
    sums = np.cumsum(left)      # sums[m - 1]: the squares of the m pixels kept last
    n = len(left)
    kept = n - (np.arange(steps) * n) // steps
    return np.sqrt(sums[kept - 1] / kept)


def ause_aurg(sigma, error, steps=STEPS):
    """(AUSE, AURG) in metres (module docstring)."""
    sigma, error = np.ravel(sigma), np.ravel(error)
    curve = sparsification(sigma, error, steps)
    oracle = sparsification(np.abs(error), error, steps)
    everything = math.sqrt(np.mean(np.asarray(error, np.float64) ** 2))
    return float(curve.mean() - oracle.mean()), float(everything - curve.mean())


def ranks(values):
    """1-based ranks, equal values sharing their mean rank."""
    values = np.ravel(values)
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    # a value's ranks run from the count of smaller values + 1 to that + its count
    below = np.cumsum(counts) - counts
    return (below + (counts + 1) / 2)[inverse]


def spearman(a, b):
    """Spearman's rank correlation of a and b (None when either is constant)."""
    ra, rb = ranks(a) - (len(np.ravel(a)) + 1) / 2, ranks(b) - (len(np.ravel(b)) + 1) / 2
    scale = math.sqrt(float(np.sum(ra * ra) * np.sum(rb * rb)))
    return float(np.sum(ra * rb) / scale) if scale > 0 else None


def coverage(sigma, error, k):
    """Share of pixels with |error| <= k sigma."""
    return float(np.mean(np.abs(np.ravel(error)) <= k * np.ravel(sigma)))


class UncertaintyMetrics:
    """add() each image's sigma, error and reference height over its valid
    pixels; results() at the end. By reference height bin
    (evaluate/buildings.HEIGHT_BINS) the pixels are pooled: coverage, RMS
    sigma and RMSE of each bin."""

    def __init__(self):
        self.images = []
        self.bins = np.zeros((len(HEIGHT_BINS), 5))  # pixels, within 1, within 2, s^2, e^2

    def add(self, sigma, error, truth):
        sigma, error, truth = (np.asarray(v, np.float64).ravel() for v in (sigma, error, truth))
        if not error.size:
            return
        ause, aurg = ause_aurg(sigma, error)
        self.images.append(dict(ause=ause, aurg=aurg, spearman=spearman(sigma, np.abs(error)),
                                **{f'coverage_{k}sigma': coverage(sigma, error, k)
                                   for k in NOMINAL}))
        for b, (lo, hi) in enumerate(HEIGHT_BINS):
            inside = (truth >= lo) & (truth < hi) if b else (truth < hi)
            s, e = sigma[inside], np.abs(error[inside])
            self.bins[b] += (s.size, np.sum(e <= s), np.sum(e <= 2 * s), np.sum(s * s),
                             np.sum(e * e))

    def results(self):
        """{ause, aurg, spearman, coverage_1sigma, coverage_2sigma (means over
        images), nominal, by_height: {bin: {pixels, coverage_*, rms_sigma, rmse}}}."""
        out = {}
        for key in ('ause', 'aurg', 'spearman', 'coverage_1sigma', 'coverage_2sigma'):
            values = [r[key] for r in self.images if r[key] is not None]
            out[key] = float(np.mean(values)) if values else None
        out['nominal'] = {f'coverage_{k}sigma': v for k, v in NOMINAL.items()}
        out['by_height'] = {}
        for name, (n, one, two, s2, e2) in zip(BIN_NAMES, self.bins):
            out['by_height'][name] = dict(
                pixels=int(n), coverage_1sigma=one / n if n else None,
                coverage_2sigma=two / n if n else None,
                rms_sigma=math.sqrt(s2 / n) if n else None, rmse=math.sqrt(e2 / n) if n else None)
        return out
