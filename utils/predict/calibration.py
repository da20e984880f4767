"""From the windows' spread (utils/predict/blend.py) to a height uncertainty
in metres: a monotone map fitted on the valid split by test_dsm.py, kept in
the .json beside the weights that make the height, applied by predict.py.

The fit sorts the valid pixels by spread into up to BINS groups of equal
count (ties kept together) and gives each group the |error| that COVERED of
its pixels stay within: for normally distributed errors that is their
standard deviation, so a sigma read from the map covers about 68% of
errors once, 95% twice. Pool-adjacent-violators then makes the groups'
values non-decreasing (more spread never means less uncertainty), and
groups pooled to one value become one. Between the groups' mean spreads
the map is linear (so rising strictly: pixels keep their order), below the
first constant, above the last proportional to the spread.

The spread depends on how many windows overlap and how they are weighted,
so a calibration holds for the windows it was fitted with (`windows`) and
predict.py refuses it for others.
"""
import dataclasses

import numpy as np

from utils.errors import CheckpointError, SettingError

COVERED = 0.6827    # the share of a normal distribution within one standard deviation
BINS = 20
KEY = 'uncertainty'     # the entry of the weights' .json


def windows_of(cfg, correction):
    """What the spread depends on: predict.py's windows, flips, and whether
    the DAE refines the heights."""
    return dict(method=cfg.predict_uncertainty, crop=cfg.cropSize, stride=cfg.predict_stride,
                window=cfg.predict_window, flips=cfg.predict_flips, correction=bool(correction))


def monotone(values, weights):
    """The non-decreasing sequence closest to `values` in weighted least
    squares (pool adjacent violators): a falling pair is replaced by its
    weighted mean until none is left."""
    blocks = []     # [mean, weight, count]
    for v, w in zip(values, weights):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, w1, c1), (m2, w2, c2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2]
    return np.repeat([b[0] for b in blocks], [b[2] for b in blocks])


@dataclasses.dataclass(frozen=True)
class Calibration:
    """sigma(spread): `spread` increasing knots (m), `sigma` non-decreasing
    values there (m); `windows` as windows_of; `pixels` the fit used."""
    spread: tuple
    sigma: tuple
    windows: dict
    pixels: int

    @classmethod
    def fit(cls, spread, abs_error, windows, bins=BINS):
        """The map from valid pixels' spread and absolute height error (module docstring)."""
        spread = np.asarray(spread, np.float64).ravel()
        abs_error = np.abs(np.asarray(abs_error, np.float64).ravel())
        if not spread.size:
            raise ValueError("no pixel to calibrate on")
        edges = np.unique(np.quantile(spread, np.linspace(0, 1, bins + 1)))
        group = np.searchsorted(edges[1:-1], spread, side='right')
        knots, values, counts = [], [], []
        for g in np.unique(group):
            inside = group == g
            knots.append(spread[inside].mean())
            values.append(np.quantile(abs_error[inside], COVERED))
            counts.append(inside.sum())
        # one knot per pooled block, at its pixels' mean spread: the map then
        # rises strictly between knots, keeping the spread's ranking of pixels
        knots, counts, pooled = np.array(knots), np.array(counts), monotone(values, counts)
        starts = np.flatnonzero(np.r_[True, np.diff(pooled) != 0])
        weight = np.add.reduceat(counts, starts)
        knots = np.add.reduceat(knots * counts, starts) / weight
        return cls(tuple(map(float, knots)), tuple(map(float, pooled[starts])),
                   dict(windows), int(spread.size))

    def __call__(self, spread):
        """float32 sigma (m) of `spread` (m), any shape."""
        spread = np.asarray(spread, np.float64)
        sigma = np.interp(spread, self.spread, self.sigma)
        last, top = self.spread[-1], self.sigma[-1]
        if last > 0:
            sigma = np.where(spread > last, top * spread / last, sigma)
        return sigma.astype(np.float32)

    def record(self):
        """The .json entry."""
        return dict(windows=self.windows, spread=list(self.spread), sigma=list(self.sigma),
                    pixels=self.pixels, covered=COVERED, split='valid')

    @classmethod
    def from_record(cls, entry):
        return cls(tuple(entry['spread']), tuple(entry['sigma']), dict(entry['windows']),
                   int(entry['pixels']))


def for_prediction(height_file, cfg, correction):
    """The calibration predict.py applies: the one in the .json of
    `height_file` (the WeightsFile making the heights: the DAE's with
    correction), fitted for these windows; a one-line error otherwise."""
    if cfg.predict_uncertainty == 'off':
        raise SettingError("--outputs ...,uncertainty: predict_uncertainty = 'off'; "
                           "use --set predict_uncertainty=windows, or leave uncertainty out")
    test = f"python test_dsm.py{' --correction' if correction else ''}"
    entry = height_file.record.get(KEY)
    if entry is None:
        raise CheckpointError(f"{height_file.path}.json holds no uncertainty calibration: "
                              f"fit one on the valid split with `{test}` (same --set "
                              f"options), then predict again")
    found, wanted = Calibration.from_record(entry), windows_of(cfg, correction)
    differ = {k: v for k, v in found.windows.items() if wanted.get(k) != v}
    if differ:
        sets = ' '.join(f"--set predict_{k}={v}" for k, v in differ.items()
                        if k in ('stride', 'window', 'flips'))
        raise CheckpointError(f"{height_file.path}.json: its uncertainty was calibrated with "
                              f"{differ}, these settings have "
                              f"{ {k: wanted.get(k) for k in differ} }; predict with "
                              f"those ({sets or 'the same settings'}), or calibrate again "
                              f"with `{test}` and these settings")
    return found
