"""utils/predict/ (windows, blend, engines, flips) and utils/geo/grid.starts: window
layout, Gaussian blending, batched and distributed prediction against a
one-window-at-a-time reference."""
import json
import math

import numpy as np
import pytest
import tensorflow as tf

import config
from tests.conftest import run_python
from tests.stand_in import small_encoder
from utils import settings
from utils.geo.grid import starts as window_starts
from utils.predict import blend, engines
from utils.predict.flips import D4, with_flips
from utils.predict.windows import gaussian_window, window_weight
from utils.errors import SettingError


def test_gaussian_window_formula_and_sum():
    crop = 5
    w = gaussian_window(crop)
    grid = [-1.0, -0.5, 0.0, 0.5, 1.0]
    raw = np.array([[math.exp(-(x * x + y * y) / (2 * 0.04)) for x in grid] for y in grid])
    np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-12)
    assert w.sum() == pytest.approx(1.0)
    big = gaussian_window(64)
    assert big.shape == (64, 64) and big.sum() == pytest.approx(1.0)
    assert np.allclose(big, big.T) and np.allclose(big, big[::-1])


@pytest.mark.parametrize('size,crop,stride,expected', [
    (100, 64, 10, [0, 10, 20, 30, 36]),     # last snapped to 100 - 64
    (64, 64, 10, [0]),
    (70, 32, 19, [0, 19, 38]),              # already ends on the border
    (96, 32, 5, list(range(0, 61, 5)) + [64]),
])
def test_window_starts(size, crop, stride, expected):
    starts = window_starts(size, crop, stride)
    assert starts == expected
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + crop] = True
    assert covered.all() and starts[-1] + crop == size


def test_window_layout_errors_are_clear():
    with pytest.raises(ValueError, match='smaller than cropSize=64'):
        window_starts(40, 64, 10)
    with pytest.raises(SettingError, match='cropSize = 48: the MTL needs a multiple of 32'):
        blend.predict_tile(lambda w: {}, np.zeros((40, 100, 3)), 48, 10)
    # DenseNet121 halves the size five times (the stem's convolution and
    # pooling, three transitions), so a crop must be a multiple of 2**5.
    assert blend.CROP_MULTIPLE == 2 ** 5
    assert settings.rule('cropSize').test(2 * config.CROP_MULTIPLE)
    assert not settings.rule('cropSize').test(3 * config.CROP_MULTIPLE // 2)


class ConstantMTL:
    """A stand-in network: the same height and class probabilities everywhere."""
    def __init__(self, height, probs):
        self.height, self.probs = height, np.asarray(probs, np.float32)

    def __call__(self, x, training=False):
        shape = tf.shape(x)[:3]
        ones = tf.ones(tf.concat([shape, [1]], 0))
        return {'height': ones * self.height, 'sem': ones * self.probs,
                'norm': tf.concat([ones] * 3, -1)}


class ConstantDAE:
    def __call__(self, x, training=False):
        # K=3 classes: height + 3 sem + 3 norm + 3 image channels
        assert x.shape[-1] == 10
        return tf.ones_like(x[..., :1]) * 0.5


def test_constant_prediction_everywhere_including_edges():
    fn = engines.tensorflow_fn(ConstantMTL(3.7, [0.2, 0.5, 0.3]), ConstantDAE(), cfg=config,
                               strategy=tf.distribute.get_strategy(), batch_size=3)
    image = np.random.RandomState(0).rand(70, 97, 3).astype(np.float32)
    out = blend.predict_tile(fn, image, 32, 7)
    assert out['height'].shape == (70, 97)
    np.testing.assert_allclose(out['height_mtl'], 3.7, atol=1e-5)
    np.testing.assert_allclose(out['height'], 3.2, atol=1e-5)
    np.testing.assert_allclose(out['sem'], np.broadcast_to([0.2, 0.5, 0.3], (70, 97, 3)),
                               atol=1e-5)


def _tiny_models(seed=3, classes=3):
    import keras
    from nets import dae, mtl
    keras.utils.set_random_seed(seed)
    with small_encoder():
        m = mtl.build_mtl(classes, decoder_scale=0.0625, backbone_weights=None, dropout=0.0)
    d = dae.build_dae(dae.input_channels(classes), 0.0625, dropout=0.0)
    return m, d


def _reference_tile(m, d, image, crop, stride):
    """One window per call, eager, blended in float64 with the paper's formula."""
    h, w = image.shape[:2]
    grid = np.linspace(-1, 1, crop)
    x, y = np.meshgrid(grid, grid)
    weight = np.exp(-(x ** 2 + y ** 2) / (2 * 0.2 ** 2))
    weight /= weight.sum()
    acc = {'height': np.zeros((h, w)), 'height_mtl': np.zeros((h, w))}
    total = np.zeros((h, w))
    ys = sorted(set(list(range(0, h - crop + 1, stride)) + [h - crop]))
    xs = sorted(set(list(range(0, w - crop + 1, stride)) + [w - crop]))
    for y0 in ys:
        for x0 in xs:
            win = image[None, y0:y0 + crop, x0:x0 + crop]
            out = m(win, training=False)
            dae_in = np.concatenate([out['height'], out['sem'], out['norm'], win], -1)
            refined = out['height'].numpy() - d(dae_in, training=False).numpy()
            acc['height_mtl'][y0:y0 + crop, x0:x0 + crop] += out['height'][0, ..., 0] * weight
            acc['height'][y0:y0 + crop, x0:x0 + crop] += refined[0, ..., 0] * weight
            total[y0:y0 + crop, x0:x0 + crop] += weight
    return {k: v / total for k, v in acc.items()}


def test_batched_equals_one_window_at_a_time():
    m, d = _tiny_models()
    image = np.random.RandomState(1).rand(80, 100, 3).astype(np.float32)
    ref = _reference_tile(m, d, image, 64, 10)
    # 15 windows in batches of 4: the last batch is padded
    fn = engines.tensorflow_fn(m, d, cfg=config, strategy=tf.distribute.get_strategy(),
                               batch_size=4)
    out = blend.predict_tile(fn, image, 64, 10)
    for key in ('height', 'height_mtl'):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5, rtol=0)
    assert out['sem'].shape == (80, 100, 3)
    np.testing.assert_allclose(out['sem'].sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(out['height'], out['height_mtl'])   # the DAE did something


TWO_REPLICAS = r'''
import json, sys
import numpy as np
import config
from utils import settings
settings.apply(['cpu_replicas=2', 'multi_gpu_enabled=True'])
import tensorflow as tf
from utils import distribute
from utils.predict import blend, engines
from utils.errors import SettingError
from tests.test_inference import _tiny_models
strategy = distribute.get_strategy(config)
with strategy.scope():
    m, d = _tiny_models()
image = np.random.RandomState(1).rand(80, 100, 3).astype(np.float32)
two = engines.tensorflow_fn(m, d, cfg=config, strategy=strategy, batch_size=3)
one = engines.tensorflow_fn(m, d, cfg=config, strategy=tf.distribute.get_strategy(),
                            batch_size=4)
a = blend.predict_tile(two, image, 64, 10)
b = blend.predict_tile(one, image, 64, 10)
print(json.dumps({'replicas': strategy.num_replicas_in_sync, 'batch': two.batch_size,
                  'diff': {k: float(np.abs(a[k] - b[k]).max()) for k in b}}))
'''


@pytest.mark.slow
def test_two_replicas_match_one():
    proc = run_python(['-c', TWO_REPLICAS], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['replicas'] == 2
    assert result['batch'] == 4     # 3 rounded up so both replicas get 2 windows
    assert set(result['diff']) == {'height', 'height_mtl', 'sem'}
    assert max(result['diff'].values()) < 1e-5, result


def test_test_batch_size_default_from_config():
    config.test_batch_size = 5
    fn = engines.tensorflow_fn(ConstantMTL(1.0, [1.0]), cfg=config,
                               strategy=tf.distribute.get_strategy())
    assert fn.batch_size == 5
    out = fn(np.zeros((7, 32, 32, 3), np.float32))
    assert out['height'].shape == (7, 32, 32) and out['sem'].shape == (7, 32, 32, 1)


@pytest.mark.parametrize('kind,profile', [
    ('hann', lambda t: math.sin(math.pi * t) ** 2), ('triangle', lambda t: 1 - abs(2 * t - 1)),
    ('trapezoid', lambda t: min(1.0, 2 - 2 * abs(2 * t - 1))), ('flat', lambda t: 1.0)])
def test_window_weights_by_formula(kind, profile):
    crop = 6
    one = np.array([profile((i + 0.5) / crop) for i in range(crop)])
    np.testing.assert_allclose(window_weight(crop, kind),
                               np.outer(one, one) / np.outer(one, one).sum(), rtol=1e-12)
    assert (window_weight(crop, kind) > 0).all()


def test_hann_windows_half_a_crop_apart_sum_to_a_constant():
    """sin^2(pi t) + sin^2(pi (t + 1/2)) = 1: inside the image every pixel
    has the same total weight, so no window's edge shows through."""
    crop = 32
    total = np.zeros(96)
    one = window_weight(crop, 'hann')[crop // 2]
    for start in range(0, 96 - crop + 1, crop // 2):
        total[start:start + crop] += one
    inner = total[crop // 2:-crop // 2]
    np.testing.assert_allclose(inner, inner[0], rtol=1e-9)


def _equivariant_network(windows):
    """Per-pixel height and classes from channel 0, normals from its central
    differences (np.gradient): flipping or transposing the input does the same
    to every output, the normals' components included."""
    f = windows[..., 0].astype(np.float64) * 10
    zy, zx = np.gradient(f, axis=(1, 2))
    n = np.stack([-zx, -zy, np.ones_like(zx)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    logits = np.stack([f, -f, np.sin(f)], -1)
    sem = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return {'height': f.astype(np.float32), 'norm': ((n + 1) / 2).astype(np.float32),
            'sem': sem.astype(np.float32)}


_equivariant_network.batch_size = 8


@pytest.mark.parametrize('shape', [(20, 45), (45, 20), (20, 25)])
def test_image_smaller_than_the_crop_is_predicted_reflection_padded(shape):
    """predict_tile is predict.py's path: a side shorter than the crop is
    reflection-padded at the bottom or right, and the maps are those of the
    padded image cut back to the image."""
    h, w = shape
    image = np.random.default_rng(1).random((h, w, 3)).astype(np.float32)
    padded = np.pad(image, ((0, max(32 - h, 0)), (0, max(32 - w, 0)), (0, 0)), mode='reflect')
    got = blend.predict_tile(_equivariant_network, image, 32, 10)
    ref = blend.predict_tile(_equivariant_network, padded, 32, 10)
    assert set(got) == {'height', 'norm', 'sem'}
    for key, maps in got.items():
        assert maps.shape[:2] == (h, w)
        np.testing.assert_array_equal(maps, ref[key][:h, :w])


@pytest.mark.parametrize('flips', [2, 4, 8])
def test_flips_of_an_equivariant_network_change_nothing(flips):
    image = np.random.default_rng(0).random((80, 72, 3)).astype(np.float32)
    plain = blend.predict_tile(_equivariant_network, image, 32, 16)
    flipped = blend.predict_tile(with_flips(_equivariant_network, flips, config),
                                 image, 32, 16)
    for key in ('height', 'norm', 'sem'):
        np.testing.assert_allclose(flipped[key], plain[key], rtol=1e-5, atol=1e-6)


def test_flips_average_the_transformed_predictions():
    """A network that answers each pixel's column in its window: the mirror
    answers 31 - column, turned back; their mean is 15.5 everywhere. With the
    transposes the row takes the column's place: still 15.5."""
    def columns(windows):
        n, h, w = windows.shape[:3]
        return {'height': np.broadcast_to(np.arange(w, dtype=np.float32), (n, h, w)).copy()}
    columns.batch_size = 8
    window = np.zeros((3, 32, 32, 3), np.float32)
    np.testing.assert_array_equal(with_flips(columns, 2, config)(window)['height'], 15.5)
    only_transpose = D4[4]
    assert only_transpose == (True, False, False)
    got = with_flips(columns, 5, config)(window)['height']
    # identity, mirror, flip rows (column kept), both (mirror), transpose (row)
    rows = np.arange(32, dtype=np.float32)[:, None]
    cols = np.arange(32, dtype=np.float32)[None, :]
    np.testing.assert_allclose(got[0], (cols + (31 - cols) + cols + (31 - cols) + rows) / 5,
                               rtol=1e-6)
    assert with_flips(columns, 4, config).batch_size == 2
