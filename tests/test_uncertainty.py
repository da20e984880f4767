"""The height uncertainty: the windows' spread in the blending pass, its
calibration, and the metrics test_dsm.py reports (README, Uncertainty)."""
import json
import math

import numpy as np
import pytest

from utils.evaluate import uncertainty
from utils.predict import blend
from utils.predict.calibration import COVERED, Calibration, monotone

# Three 32 px windows at columns 0, 8 and 16 of a 32 x 48 image (stride 8),
# each predicting one height everywhere: 1, 4 and 10 m.
HEIGHTS = {0: 1.0, 8: 4.0, 16: 10.0}


def _constant_windows(windows):
    """Each window's height, told by the column index the image holds."""
    first = windows[:, 0, 0, 0].astype(int)
    h = np.array([HEIGHTS[x] for x in first], np.float32)
    return {'height': np.broadcast_to(h[:, None, None], windows.shape[:3]).copy()}


def _column_image():
    return np.broadcast_to(np.arange(48, dtype=np.float32)[None, :, None], (32, 48, 3))


def test_spread_is_the_weighted_deviation_of_the_windows_heights():
    maps = blend.predict_tile(_constant_windows, _column_image(), 32, 8, window='triangle',
                              spread=True)
    # By hand: the triangle profile 1 - |2t - 1| at t = (i + 0.5) / 32 of a
    # pixel's column i inside each window (the row's factor is the same in
    # every window and cancels). Column 20 is column 20, 12 and 4 of the
    # windows: weights 23/32, 25/32, 9/32.
    h = np.array([1, 4, 10])
    mean = (23 * 1 + 25 * 4 + 9 * 10) / 57
    spread = math.sqrt((23 * 1 + 25 * 16 + 9 * 100) / 57 - mean ** 2)
    assert spread == pytest.approx(3.0409, abs=1e-4)
    # float32 weights and result: relative rounding of a few 2^-24 each
    assert maps['spread'][:, 20] == pytest.approx(spread, rel=1e-6)
    assert maps['height'][:, 20] == pytest.approx(mean, rel=1e-6)
    # column 10: windows 0 and 8 at their columns 10 and 2, weights 21/32 and
    # 5/32; two values' weighted deviation is |h1 - h2| sqrt(w1 w2) / (w1 + w2)
    assert maps['spread'][:, 10] == pytest.approx(3 * math.sqrt(21 * 5) / 26, rel=1e-6)
    assert np.all(maps['spread'][:, :8] == 0)      # one window only
    # the check tells the weighted deviation from the unweighted one, sqrt(14)
    unweighted = math.sqrt(np.mean((h - h.mean()) ** 2))
    assert unweighted == pytest.approx(math.sqrt(14))
    assert maps['spread'][0, 20] != pytest.approx(unweighted, rel=1e-2)


def test_the_spread_leaves_the_heights_as_they_were():
    image = np.random.default_rng(0).random((70, 90, 3), np.float32)

    def fn(windows):
        return {'height': windows.sum(-1) * windows[:, :1, :1, 0]}

    plain = blend.predict_tile(fn, image, 32, 10)
    both = blend.predict_tile(fn, image, 32, 10, spread=True)
    assert np.array_equal(plain['height'], both['height'])
    assert both['spread'].shape == (70, 90) and np.all(both['spread'] >= 0)


def _scaled_errors(scale, seed=0):
    """Spreads of ten levels 0.5 .. 5 m, 20000 pixels each, and errors normal
    with standard deviation scale x spread."""
    rng = np.random.default_rng(seed)
    spread = np.repeat(np.arange(1, 11) * 0.5, 20000)
    return spread, rng.normal(0, scale * spread)


def test_calibration_recovers_a_known_scale():
    spread, error = _scaled_errors(2.5)
    cal = Calibration.fit(spread, np.abs(error), {'stride': 10})
    levels = np.arange(1, 11) * 0.5
    assert cal.spread == pytest.approx(levels)  # one group per level (ties kept together)
    # A normal's 68.27% |error| quantile is its sigma (to 1e-4). Estimated
    # from 20000 draws its standard error is sqrt(p (1 - p) / n) / (2 phi(1))
    # = 0.68% relative; 3% is more than 4 of them.
    assert np.asarray(cal.sigma) == pytest.approx(2.5 * levels, rel=0.03)
    assert cal([0.1, 2.25, 10.0]) == pytest.approx([cal.sigma[0], 2.5 * 2.25, 2.5 * 10.0],
                                                   rel=0.03)
    assert uncertainty.coverage(cal(spread), error, 1) == pytest.approx(COVERED, abs=0.01)
    # the check catches a scale 10% off
    wrong_spread, wrong_error = _scaled_errors(2.75, seed=1)
    wrong = Calibration.fit(wrong_spread, np.abs(wrong_error), {})
    assert np.asarray(wrong.sigma) != pytest.approx(2.5 * levels, rel=0.03)


def test_calibration_is_monotone_and_kept_in_its_record():
    assert list(monotone([1, 3, 2, 4], [1, 1, 1, 1])) == [1, 2.5, 2.5, 4]
    assert list(monotone([1, 3, 2], [1, 1, 3])) == [1, 2.25, 2.25]      # (3 + 6) / 4
    rng = np.random.default_rng(2)
    spread = rng.random(5000)
    cal = Calibration.fit(spread, rng.random(5000), {'stride': 8})
    # errors unrelated to the spread: pooled blocks, one knot each, strictly rising
    assert len(cal.spread) < 20
    assert np.all(np.diff(cal.sigma) > 0) and np.all(np.diff(cal.spread) > 0)
    again = Calibration.from_record(cal.record())
    assert again == cal and np.array_equal(again(spread), cal(spread))


# Four pixels: errors and sigmas, sparsified in 4 steps (0, 1, 2, 3 removed).
ERRORS = np.array([1.0, -2.0, 3.0, 0.5])
SIGMAS = np.array([0.1, 0.4, 0.3, 0.2])


def test_ause_and_aurg_of_a_hand_computed_case():
    # by sigma the pixels go in the order 1, 2, 3, 0; squares 1, 4, 9, 0.25
    curve = [math.sqrt(14.25 / 4), math.sqrt(10.25 / 3), math.sqrt(1.25 / 2), 1.0]
    # by |error|: 2, 1, 0, 3
    oracle = [math.sqrt(14.25 / 4), math.sqrt(5.25 / 3), math.sqrt(1.25 / 2), 0.5]
    ause, aurg = uncertainty.ause_aurg(SIGMAS, ERRORS, steps=4)
    # float64 sums of four squares: rounding far below 1e-12
    assert ause == pytest.approx(np.mean(curve) - np.mean(oracle), abs=1e-12)
    assert aurg == pytest.approx(math.sqrt(14.25 / 4) - np.mean(curve), abs=1e-12)
    assert ause == pytest.approx(0.2563868, abs=1e-7)    # the sums above to 7 digits
    assert aurg == pytest.approx(0.5058459, abs=1e-7)
    # the oracle's own order has no sparsification error; the reverse order
    # does worse than chance
    assert uncertainty.ause_aurg(np.abs(ERRORS), ERRORS, steps=4)[0] == 0
    assert uncertainty.ause_aurg(-np.abs(ERRORS), ERRORS, steps=4)[1] < 0
    # equal sigmas rank nothing: the expectation over their orders is the
    # RMSE of all at every step, so AURG 0; in pixel order (squares 1, 4,
    # 9, 0.25 removed from the first) it would have been
    # 1.8875 - mean(1.8875, sqrt(13.25 / 3), sqrt(9.25 / 2), 0.5) = 0.2276
    tie_aurg = uncertainty.ause_aurg(np.ones(4), ERRORS, steps=4)[1]
    assert tie_aurg == pytest.approx(0, abs=1e-12)
    in_pixel_order = math.sqrt(14.25 / 4) - np.mean(
        [math.sqrt(14.25 / 4), math.sqrt(13.25 / 3), math.sqrt(9.25 / 2), 0.5])
    assert in_pixel_order == pytest.approx(0.22755, abs=1e-5)
    assert tie_aurg != pytest.approx(in_pixel_order, abs=0.1)
    # a tie of two in the middle: pixels 2 and 3 equal, each counts (9 + 0.25) / 2
    tied = uncertainty.sparsification(np.array([0.1, 0.4, 0.3, 0.3]), ERRORS, steps=4)
    assert tied == pytest.approx([math.sqrt(14.25 / 4), math.sqrt(10.25 / 3),
                                  math.sqrt((4.625 + 1) / 2), 1.0], abs=1e-12)
    # the check catches sigmas of pixels 1 and 2 swapped
    assert uncertainty.ause_aurg(SIGMAS[[0, 2, 1, 3]], ERRORS, steps=4)[0] != \
        pytest.approx(ause, abs=1e-6)


def _ranks_by_counting(values):
    """A second ranking: 1 + the values below + half the other equal values."""
    v = np.asarray(values)
    return np.array([1 + np.sum(v < x) + (np.sum(v == x) - 1) / 2 for x in v])


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float(np.sum(a * b) / math.sqrt(np.sum(a * a) * np.sum(b * b)))


def test_spearman_against_ranks_counted_by_hand():
    rng = np.random.default_rng(3)
    a = np.round(rng.random(300), 1)        # many ties
    b = a + rng.normal(0, 0.3, 300)
    assert np.array_equal(uncertainty.ranks(a), _ranks_by_counting(a))
    expected = _pearson(_ranks_by_counting(a), _ranks_by_counting(b))
    # both in float64 over 300 ranks: agree to rounding
    assert uncertainty.spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert uncertainty.spearman([1, 2, 3], [10, 30, 20]) == pytest.approx(0.5)
    assert uncertainty.spearman([1, 1, 1], [1, 2, 3]) is None
    # the check catches ranks without the shared mean of ties
    plain = _pearson(np.argsort(np.argsort(a, kind='stable')) + 1.0, _ranks_by_counting(b))
    assert uncertainty.spearman(a, b) != pytest.approx(plain, abs=1e-4)


def test_coverage_and_the_metrics_over_images():
    assert uncertainty.coverage(SIGMAS, ERRORS, 1) == 0.0
    assert uncertainty.coverage(SIGMAS, ERRORS, 6) == 0.5      # pixels 1 and 3
    metrics = uncertainty.UncertaintyMetrics()
    metrics.add(SIGMAS, ERRORS, np.array([1.0, 7.0, 12.0, 30.0]))
    metrics.add(np.full(4, 5.0), ERRORS, np.full(4, 2.0))
    out = metrics.results()
    assert out['coverage_1sigma'] == pytest.approx((0 + 1) / 2)
    assert out['aurg'] == pytest.approx(np.mean([uncertainty.ause_aurg(s, ERRORS)[1]
                                                 for s in (SIGMAS, np.full(4, 5.0))]))
    assert out['spearman'] == uncertainty.spearman(SIGMAS, np.abs(ERRORS))  # one defined
    assert out['by_height']['0-5']['pixels'] == 5
    assert out['by_height']['0-5']['rmse'] == pytest.approx(math.sqrt((14.25 + 1) / 5))
    assert out['by_height']['>20']['coverage_2sigma'] == 0.0   # 0.5 > 2 x 0.2


@pytest.fixture(scope='module', autouse=True)
def stand_in_encoder():
    """Networks on the stand-in encoder (tests/stand_in.py), as in test_predict.py:
    the windows' blending is under test, not DenseNet121."""
    from tests.stand_in import small_encoder
    with small_encoder():
        yield


def _mtl_copy(weights, tmp_path, calibration=None):
    """A copy of the tiny MTL weights, its .json holding `calibration`."""
    import shutil
    from utils.model.weights import WeightsFile
    path = str(tmp_path / 'mtl.weights.h5')
    shutil.copy(weights['mtl'], path)
    shutil.copy(weights['mtl'] + '.json', path + '.json')
    if calibration is not None:
        WeightsFile(path, 'mtl').store('uncertainty', calibration.record())
    return path


def test_predict_writes_the_calibrated_spread_on_the_heights_grid(weights, tmp_path, capsys):
    import rasterio
    import tensorflow as tf
    import tifffile

    import predict
    from tests.conftest import PREDICT_TINY
    from utils import settings
    from utils.data import samples
    from utils.predict import engines
    from utils.predict.calibration import windows_of
    sets = [a for s in PREDICT_TINY for a in ('--set', s)]
    settings.apply(PREDICT_TINY)
    cfg = settings.current()
    cal = Calibration((0.0, 2e-4), (0.25, 2.25), windows_of(cfg, False), 1)
    path = str(tmp_path / 'img.tif')
    rng = np.random.default_rng(4)
    tifffile.imwrite(path, (rng.random((50, 70, 3)) * 255).astype(np.uint8), photometric='rgb')
    out = tmp_path / 'out'
    calibrated = _mtl_copy(weights, tmp_path, cal)
    # on TensorFlow, as the reference below: the spread's streaming is under
    # test, and the calibration's slope of 10^4 would magnify the engines'
    # rounding differences (test_export.py) past float32's
    predict.main([path, '--out', str(out), '--ungeoreferenced', '--mtl-weights', calibrated,
                  '--outputs', 'height,uncertainty', '--engine', 'tensorflow', *sets])
    # the in-memory path (blend.predict_tile) on the same networks and windows
    fn = engines.tensorflow_fn(weights['models'][0], None, cfg=cfg,
                               strategy=tf.distribute.get_strategy())
    ref = blend.predict_tile(fn, samples.read_image(cfg, path), 32, cfg.predict_stride,
                             window=cfg.predict_window, spread=True)
    with rasterio.open(out / 'img_uncertainty.tif') as sigma, \
            rasterio.open(out / 'img_height.tif') as height:
        assert sigma.dtypes == ('float32',) and sigma.nodata == height.nodata
        assert sigma.transform == height.transform and sigma.shape == height.shape == (50, 70)
        assert json.loads(sigma.tags()['DSMNET_UNCERTAINTY']) == json.loads(
            json.dumps(cal.record(), sort_keys=True))
        written = sigma.read(1)
    # the spread is computed as in memory (streamed bands: the same sums);
    # sigma = 0.25 + 10^4 spread up to 0.2 mm (the untrained networks' windows
    # agree closely), 11250 spread above; float32 both ways
    expected = np.where(ref['spread'] < 2e-4, 0.25 + 1e4 * ref['spread'],
                        11250 * ref['spread'])
    assert written == pytest.approx(expected, rel=1e-6)
    assert written.std() > 0 and np.all(written >= 0.25)
    assert np.mean(ref['spread'] < 2e-4) > 0.1 and np.mean(ref['spread'] > 2e-4) > 0.1, \
        np.percentile(ref['spread'], [0, 50, 100])   # both parts of the map used
    # without a calibration, or with other windows, a one-line error naming the fix
    from utils.errors import CheckpointError, SettingError
    bare = tmp_path / 'bare'
    bare.mkdir()

    def run(weights_file, *extra):
        predict.main([path, '--out', str(bare), '--ungeoreferenced', '--outputs',
                      'height,uncertainty', '--mtl-weights', weights_file, *sets, *extra])

    with pytest.raises(CheckpointError, match='no uncertainty calibration: .*test_dsm.py'):
        run(_mtl_copy(weights, bare))
    with pytest.raises(CheckpointError, match='--set predict_stride=10'):
        run(calibrated, '--set', 'predict_stride=16')
    with pytest.raises(SettingError, match="predict_uncertainty = 'off'"):
        run(calibrated, '--set', 'predict_uncertainty=off')


def test_buildings_carry_their_height_uncertainty_and_its_flag(tmp_path):
    import math as m
    from test_buildings import (HEIGHTS, X0, box, read_layer, run_buildings, write_footprints,
                                write_map)
    maps = tmp_path / 'maps'
    maps.mkdir()
    write_map(maps / 'a_height.tif', HEIGHTS)
    sigma = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [5, 5, 5, 5], [5, 5, 5, -9999]], np.float32)
    write_map(maps / 'a_uncertainty.tif', sigma)
    write_map(maps / 'b_height.tif', HEIGHTS, x0=X0 + 100)     # without its uncertainty
    feet = tmp_path / 'feet.gpkg'
    write_footprints(feet, [box(0, 0, 2, 2), box(2, 0, 3.5, 1), box(100, 0, 102, 2)],
                     ['whole cells', 'a half cell', 'no sigma'])
    out = tmp_path / 'b.gpkg'
    proc = run_buildings(maps, '--out', out, '--footprints', feet, '--max-sigma', 3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, _, f = read_layer(out)
    # by hand: cells 1 2 1 2, each whole; 3 whole and 4 half inside
    whole, half = m.sqrt((1 + 4 + 1 + 4) / 4), m.sqrt((9 * 1 + 16 * 0.5) / 1.5)
    # exactextract's coverage of box edges on cell edges: exact in binary
    assert f['h_dak_sigma'][:2] == pytest.approx([whole, half], rel=1e-12)
    assert np.isnan(f['h_dak_sigma'][2])
    assert list(f['h_dak_uncertain'][:2]) == [False, True]
    # the check tells the RMS from the mean, and weighted from unweighted
    assert f['h_dak_sigma'][0] != pytest.approx(1.5, rel=1e-3)
    assert f['h_dak_sigma'][1] != pytest.approx(m.sqrt((9 + 16) / 2), rel=1e-3)
    assert '1 of 2 building(s) above --max-sigma 3 m' in proc.stdout
    city = json.loads((tmp_path / 'b.city.json').read_text())['CityObjects']
    assert city['building_2']['attributes']['h_dak_sigma'] == pytest.approx(half, rel=1e-12)
    assert city['building_2']['attributes']['h_dak_uncertain'] is True
    assert city['building_1']['attributes']['h_dak_uncertain'] is False
    assert 'h_dak_sigma' not in city['building_3']['attributes']    # empty values left out
    assert 'h_dak_uncertain' not in city['building_3']['attributes']


def test_no_calibration_without_a_held_out_valid_split(synthetic_root, tmp_path):
    from utils import settings
    from utils.evaluate.evaluation import uncalibrated
    cfg = settings.current().replace(shortcut_path=synthetic_root)
    assert uncalibrated(cfg) is None
    assert 'not held out' in uncalibrated(cfg.replace(train_valid_flag=False))
    # a dataset of one's own with a valid folder but nothing in it: the layout's error
    own = cfg.replace(shortcut_path=str(tmp_path), dataset_name='own')
    (tmp_path / 'own' / 'valid').mkdir(parents=True)
    assert uncalibrated(own).startswith('Missing valid/rgb folder')
    for folder in ('rgb', 'dsm', 'sem'):
        (tmp_path / 'own' / 'valid' / folder).mkdir()
    assert uncalibrated(own).startswith('The valid split has no images')
