"""utils/evaluate/evaluation.py on a small in-memory split with a constant network, so
every metric can be computed by hand; the outputs are COGs with the
input's georeferencing, as GDAL reads them."""
import os
import types
import warnings
from collections import namedtuple

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tifffile

import config
from stand_in import small_encoder
from utils import settings
from utils.data.labels import read_labels
from utils.data.layouts import find_split
from utils.data.samples import read_height
from utils.evaluate import evaluation

Sample = namedtuple('Sample', 'name image height labels')
Loaded = namedtuple('Loaded', 'image height labels')
GEO = [(33550, 'd', 3, (0.5, 0.5, 0.0), True),
       (33922, 'd', 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
       (34735, 'H', 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632), True),
       (34737, 's', 0, 'WGS 84 / UTM zone 32N|', True)]


RUN = dict(cfg=config, strategy=tf.distribute.get_strategy())


class ConstantMTL:
    """Height 2.0 everywhere; class probabilities favour class 1."""
    def __call__(self, x, training=False):
        ones = tf.ones(tf.concat([tf.shape(x)[:3], [1]], 0))
        return {'height': ones * 2.0, 'sem': ones * tf.constant([0.2, 0.7, 0.1]),
                'norm': tf.concat([ones] * 3, -1)}


class ConstantDAE:
    def __call__(self, x, training=False):
        return tf.ones_like(x[..., :1]) * 0.5      # refined height = 1.5


@pytest.fixture
def fake_split(tmp_path, monkeypatch):
    """A 'test' split of two 64x96 images and a 'train' split of one."""
    rng = np.random.RandomState(0)
    geo_image = str(tmp_path / 'img_a.tif')
    tifffile.imwrite(geo_image, (rng.rand(64, 96, 3) * 255).astype(np.uint8),
                     photometric='rgb', extratags=GEO)
    height_a = np.full((64, 96), 4.0, np.float32)
    height_a[:, :48] = 1.0
    height_a[0, 0] = np.nan
    labels_a = np.ones((64, 96), np.int32)
    labels_a[:32] = 0
    height_b = np.full((64, 96), 3.0, np.float32)
    labels_b = np.full((64, 96), 2, np.int32)
    data = {
        'a': Loaded(rng.rand(64, 96, 3).astype(np.float32), height_a, labels_a),
        'b': Loaded(rng.rand(64, 96, 3).astype(np.float32), height_b, labels_b),
        't': Loaded(rng.rand(64, 96, 3).astype(np.float32),
                    np.where(np.arange(96) < 24, np.nan, 5.0) * np.ones((64, 1), np.float32)
                    - np.where(np.arange(96) < 48, 2.0, 0.0).astype(np.float32),
                    labels_b),
    }
    plain_image = str(tmp_path / 'b.png')      # no georeferencing
    cv2.imwrite(plain_image, (rng.rand(64, 96, 3) * 255).astype(np.uint8))
    splits = {'test': [Sample('a', geo_image, '', ''), Sample('b', plain_image, '', '')],
              'train': [Sample('t', 't.png', '', '')]}
    splits['valid'] = splits['test']
    fake = types.SimpleNamespace(find_split=lambda cfg, split: list(splits[split]),
                                 load_sample=lambda cfg, sample: data[sample.name])
    monkeypatch.setattr(evaluation, 'find_split', fake.find_split)
    monkeypatch.setattr(evaluation, 'load_sample', fake.load_sample)
    evaluation._train_mean.clear()
    config.label_codes = [10, 20, 30]
    config.cropSize = 32
    config.test_stride = 16
    config.valid_stride = 32
    config.test_batch_size = 4
    return data


def test_metrics_by_hand(fake_split):
    r = evaluation.evaluate(ConstantMTL(), **RUN, split='test', verbose=0)
    # image a: prediction 2 vs truth 1 (48 cols, one NaN) and 4 (48 cols)
    n1, n4 = 64 * 48 - 1, 64 * 48
    mse_a = (n1 * 1 + n4 * 4) / (n1 + n4)
    mae_a = (n1 * 1 + n4 * 2) / (n1 + n4)
    mse_b, mae_b = 1.0, 1.0
    assert r['mse'] == pytest.approx((mse_a + mse_b) / 2, rel=1e-5)
    assert r['mae'] == pytest.approx((mae_a + mae_b) / 2, rel=1e-5)
    assert r['rmse'] == pytest.approx((np.sqrt(mse_a) + 1.0) / 2, rel=1e-5)
    # delta1: a: 2/1 = 2 and 4/2 = 2 both fail; b: 3/2 = 1.5 fails; delta2 (1.5625): b passes
    assert r['delta1'] == 0.0
    assert r['delta2'] == pytest.approx(0.5)
    assert r['delta3'] == pytest.approx(0.5)      # 1.25^3 = 1.953 < 2: a still fails
    # baseline: train mean over its valid pixels: 24 cols of 3, 48 cols of 5 -> 13/3
    mean = (24 * 3 + 48 * 5) / 72
    assert r['baseline_height'] == pytest.approx(mean)
    base_a = np.sqrt((n1 * (mean - 1) ** 2 + n4 * (mean - 4) ** 2) / (n1 + n4))
    assert r['baseline_rmse'] == pytest.approx((base_a + abs(mean - 3)) / 2, rel=1e-5)
    # segmentation: everything predicted class 1 (code 20)
    # truth: a 32 rows of 0 and 32 rows of 1; b all class 2
    cm = np.array([[0, 32 * 96, 0], [0, 32 * 96, 0], [0, 64 * 96, 0]])
    assert r['confusion_matrix'] == cm.tolist()
    assert r['oa'] == pytest.approx(0.25)
    assert r['iou'] == pytest.approx([0.0, 0.25, 0.0])
    assert r['miou'] == pytest.approx(0.25 / 3)
    assert r['fwiou'] == pytest.approx(0.25 * 0.25)
    assert [p['name'] for p in r['per_image']] == ['a', 'b']
    assert r['per_image'][1]['rmse'] == pytest.approx(1.0)
    assert r['images'] == 2 and r['split'] == 'test'


def test_validation_has_its_own_stride(fake_split, monkeypatch):
    strides = []
    real = evaluation.predict_tile

    def recording(fn, image, crop, stride):
        strides.append(stride)
        return real(fn, image, crop, stride)
    monkeypatch.setattr(evaluation, 'predict_tile', recording)
    config.valid_stride = 32
    during_training = evaluation.validate(ConstantMTL(), **RUN)
    published = evaluation.evaluate(ConstantMTL(), **RUN, split='valid', verbose=0)
    assert strides == [32, 32, 16, 16]      # two images each
    # A constant network scores the same on any window layout.
    assert during_training['rmse'] == pytest.approx(published['rmse'], rel=1e-6)


def test_correction_reports_both_heights(fake_split):
    r = evaluation.evaluate(ConstantMTL(), ConstantDAE(), **RUN, split='test', max_images=1,
                            verbose=0)
    assert r['images'] == 1
    n1, n4 = 64 * 48 - 1, 64 * 48
    assert r['mtl_mae'] == pytest.approx((n1 * 1 + n4 * 2) / (n1 + n4), rel=1e-5)
    assert r['mae'] == pytest.approx((n1 * 0.5 + n4 * 2.5) / (n1 + n4), rel=1e-5)


def test_binary_dataset_masks_heights(fake_split):
    config.label_codes = [0, 1]
    fake_split['b'].labels[:] = 1
    fake_split['b'].labels[:, :48] = 0
    r = evaluation.evaluate(ConstantMTL(), **RUN, split='test', verbose=0)
    # everything predicted class 1 -> prediction stays 2; image b truth is 3 on
    # class 1 and masked to 0 elsewhere: errors 1 and 2 on half the pixels each
    assert r['per_image'][1]['mae'] == pytest.approx(1.5)
    assert r['per_image'][1]['mse'] == pytest.approx(2.5)
    # image a: class 1 on rows 32.. (truth kept), else 0; the NaN stays excluded
    heights = fake_split['a'].height
    gt = np.where((fake_split['a'].labels == 1) | np.isnan(heights), heights, 0.0)
    err = (2.0 - gt)[np.isfinite(gt)]
    assert r['per_image'][0]['mse'] == pytest.approx(np.mean(err ** 2), rel=1e-5)


def test_outputs_keep_georeferencing(fake_split, tmp_path):
    config.test_plot_images = 1
    out = tmp_path / 'out'
    evaluation.evaluate(ConstantMTL(), ConstantDAE(), **RUN, split='test', out_dir=str(out),
                        verbose=0)
    assert sorted(os.listdir(out)) == ['a.png', 'a_height.tif', 'a_sem.tif',
                                       'b_height.tif', 'b_sem.tif']
    import rasterio
    from tests.test_cog import assert_valid_cog
    for name in ('a_height.tif', 'a_sem.tif', 'b_height.tif', 'b_sem.tif'):
        assert_valid_cog(out / name)
    with rasterio.open(out / 'a_height.tif') as result:
        height = result.read(1)
        assert height.dtype == np.float32
        np.testing.assert_allclose(height, 1.5, atol=1e-5)
        # GEO's tie point and pixel size, in the CRS its GeoKeys name
        assert result.crs.to_epsg() == 32632
        assert result.transform == rasterio.Affine(0.5, 0, 500000.0, 0, -0.5, 4000000.0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out / 'b_height.tif') as result:   # PNG input: none to keep
            assert result.crs is None and result.transform.is_identity
    with rasterio.open(out / 'a_sem.tif') as result:    # integer codes: their values
        sem = result.read(1)
        assert result.crs.to_epsg() == 32632 and result.colormap(1)[20][3] == 255
    assert sem.shape == (64, 96) and (sem == 20).all()


def test_rgb_label_codes_written_as_a_colour_table(fake_split, tmp_path):
    import rasterio
    config.label_codes = [(255, 255, 255), (0, 0, 255), (0, 255, 0)]
    config.test_plot_images = 0
    evaluation.evaluate(ConstantMTL(), **RUN, split='test', out_dir=str(tmp_path), max_images=1,
                        verbose=0)
    with rasterio.open(tmp_path / 'a_sem.tif') as result:     # one band of class indices
        sem, table = result.read(), result.colormap(1)
    assert sem.shape == (1, 64, 96) and (sem == 1).all()      # class 1 ...
    assert [table[i][:3] for i in range(3)] == config.label_codes    # ... is (0, 0, 255)
    assert not (tmp_path / 'a.png').exists()


# ---------------------------------------------------------------- test_dsm.py, end to end
@pytest.fixture
def synthetic_weights(tiny_trained, tmp_path):
    """The tiny trained MTL and DAE (conftest.py), tested into a fresh output folder."""
    sets = tiny_trained.sets + [f'output_root={tmp_path / "output"}', 'test_plot_images=1']
    return tmp_path, [a for s in sets for a in ('--set', s)]


@pytest.mark.slow
@pytest.mark.xdist_group('tiny_trained')
def test_dsm_script_writes_every_metric(synthetic_weights, capsys):
    import json

    import cv2
    import test_dsm
    base, sets = synthetic_weights
    with small_encoder():
        code = test_dsm.main(['--correction', '--max-images', '2'] + sets)
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    run = base / 'output' / 'synthetic' / 'mtl_dae'
    record = json.loads((run / 'metrics.json').read_text())
    overall = record['overall']
    for key in ('mse', 'mae', 'rmse', 'delta1', 'delta2', 'delta3', 'mtl_rmse', 'mtl_mae',
                'miou', 'oa', 'fwiou', 'mean_f1', 'baseline_rmse', 'baseline_mae'):
        assert isinstance(overall[key], float), key
    # A second computation from the written maps and the ground-truth files.
    settings.apply(sets[1::2])         # the run's --set values
    samples = {s.name: s for s in find_split(config, 'test')}
    hits = pixels = 0
    pairs, binned = [], {}
    for entry in record['per_image']:
        sample = samples[entry['name']]
        predicted = tifffile.imread(run / f"{entry['name']}_height.tif")
        truth = read_height(sample.height)
        error = (predicted.astype(np.float64) - truth)[np.isfinite(truth)]
        assert entry['rmse'] == pytest.approx(np.sqrt(np.mean(error ** 2)), rel=1e-6)
        assert entry['mae'] == pytest.approx(np.mean(np.abs(error)), rel=1e-6)
        classes = tifffile.imread(run / f"{entry['name']}_sem.tif")   # codes 0..5 = indices
        labels = read_labels(config, sample.labels)
        hits, pixels = hits + np.sum(classes == labels), pixels + labels.size
        # per building (4-connected regions of the building class, 1): Hazen's
        # median and 70th percentile of the written height and of the truth
        count, ids = cv2.connectedComponents((labels == 1).astype(np.uint8), connectivity=4)
        predicted, truth = predicted.astype(np.float64), np.asarray(truth, np.float64)
        for k in range(1, count):
            cells = (ids == k) & np.isfinite(truth)
            if cells.any():
                pairs.append([np.percentile(v[cells], q, method='hazen')
                              for q in (50, 70) for v in (predicted, truth)])
        for name, lo, hi in (('0-5', -np.inf, 5), ('>20', 20, np.inf)):
            cells = np.isfinite(truth) & (truth >= lo) & (truth < hi)
            binned.setdefault(name, []).extend((predicted - truth)[cells].tolist())
    assert overall['oa'] == pytest.approx(hits / pixels, rel=1e-9)
    pairs = np.array(pairs)
    per_building = record['buildings']
    assert per_building['buildings'] == len(pairs) > 0
    for key, (p, r) in (('median', (0, 1)), ('p70', (2, 3))):
        error = pairs[:, p] - pairs[:, r]
        assert per_building[key]['mae'] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)
        assert per_building[key]['bias'] == pytest.approx(np.mean(error), rel=1e-5, abs=1e-6)
    for name, errors in binned.items():
        row = per_building['by_height'][name]
        assert row['pixels'] == len(errors)
        if errors:
            assert row['pixel_mae'] == pytest.approx(np.mean(np.abs(errors)), rel=1e-5)
    assert 'buildings of the reference labels' in out.out
    for key in ('iou', 'precision', 'recall', 'f1'):
        assert len(overall[key]) == 6, key
    assert record['baseline']['rmse'] == overall['baseline_rmse']
    assert [p['name'] for p in record['per_image']] == ['test_0000', 'test_0001']
    assert record['checkpoints']['dae'].endswith('best.weights.h5')
    assert record['settings']['cropSize'] == 32 and record['split'] == 'test'
    # per-image values average to the overall ones
    assert overall['rmse'] == pytest.approx(np.mean([p['rmse'] for p in record['per_image']]))
    last = out.out.strip().splitlines()[-1]
    fields = dict(f.split('=') for f in last.split()[1:])
    assert last.startswith('RESULT ')
    assert float(fields['rmse']) == pytest.approx(overall['rmse'], abs=1e-4)
    assert float(fields['baseline_rmse']) == pytest.approx(overall['baseline_rmse'], abs=1e-4)
    assert sorted(os.listdir(run)) == ['metrics.json', 'test_0000.png', 'test_0000_height.tif',
                                       'test_0000_sem.tif', 'test_0001_height.tif',
                                       'test_0001_sem.tif']


@pytest.mark.slow
@pytest.mark.xdist_group('tiny_trained')
def test_dsm_script_weight_errors_are_clear(synthetic_weights, tmp_path, capsys):
    import test_dsm
    _, sets = synthetic_weights
    missing = str(tmp_path / 'none.weights.h5')
    with small_encoder():
        assert test_dsm.main(['--mtl-weights', missing] + sets) == 1
        err = capsys.readouterr().err
        assert err.startswith('error: ') and missing in err
        assert test_dsm.main(sets + ['--set', 'mtl_decoder_scale=0.125']) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'mtl_decoder_scale=0.0625' in err


@pytest.mark.slow
@pytest.mark.xdist_group('tiny_trained')
def test_dsm_script_exits_1_without_traceback(synthetic_weights, tmp_path):
    from tests.conftest import run_python
    _, sets = synthetic_weights
    proc = run_python(['test_dsm.py', '--correction', '--dae-weights',
                       str(tmp_path / 'no_dae.weights.h5')] + sets, timeout=300,
                      stand_in=True)
    assert proc.returncode == 1
    assert 'no_dae.weights.h5' in proc.stderr and 'Traceback' not in proc.stderr
