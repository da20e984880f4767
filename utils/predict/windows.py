"""The weight a window's prediction gets at each of its pixels when
overlapping windows are blended: the published Gaussian, or the profiles
bench/predict_quality.py measured (README, Predict your own images)."""
import numpy as np

from utils.errors import SettingError

GAUSS_SIGMA = 0.2
WINDOWS = ('gaussian', 'hann', 'triangle', 'trapezoid', 'flat')


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
