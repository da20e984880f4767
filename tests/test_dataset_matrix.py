"""Every published dataset, as configured, through the scripts a user runs.

For each entry of config.DATASETS a tiny dataset is written in that layout with
the real file formats (tests/dataset_files.py), and train_mtl.py and
test_dsm.py run as separate processes from a folder holding datasets/<name>/,
as a user would; in half of the stories (CASES) train_dae.py runs between
them and test_dsm.py --correction, which scores the MTL alone too.

Each story uses the dataset's own settings, shrunk only where a CPU needs it
(SHRINK): small crops and widths, two steps, no ImageNet weights; and the
scripts build the MTL on tests/stand_in.py's small encoder: what differs
between datasets is their files, heads and settings, not the encoder
(DenseNet121 trains in test_performance.py), and
tracing DenseNet's graph took two thirds of each story. They run offline,
with an empty Keras cache and no reachable network, so a setting that asks
for the ImageNet weights fails the run instead of downloading them.

DFC2018 and Vaihingen carry unlabelled pixels in their label files (GDAL
GeoTIFFs with 0 for unclassified; black boundary bands, as in the eroded
ISPRS reference), which must train, be counted in the training log and be
left out of the confusion matrix.
"""
import json
import os
import sys
import time

import numpy as np
import pytest
import rasterio

import dataset_files as files
from conftest import ROOT, run_python

CROP = 32
WIDTH = 0.0625
STEPS = 2
SHRINK = [f'cropSize={CROP}', f'mtl_decoder_scale={WIDTH}', f'dae_width_scale={WIDTH}',
          'backbone_weights=None', f'max_steps={STEPS}']
TILE = (48, 64)             # rows x cols of the large-tile datasets' tiles (not square)
# An address that refuses connections: any download attempt fails at once.
OFFLINE = 'http://127.0.0.1:9'

VAIHINGEN_W = (1e-4, 1e-1, 1e-5, 1e-3)
DFC2019_W = (1e-2, 1e-1, 1e-5, 100)
# The published settings (the paper and README, Datasets), written out rather than read from config.py.
PUBLISHED = {
    'Vaihingen': dict(batch=4, codes=files.VAIHINGEN_COLOURS, w=VAIHINGEN_W),
    'Vaihingen_crp256': dict(batch=10, codes=files.VAIHINGEN_COLOURS, w=VAIHINGEN_W),
    'DFC2018': dict(batch=4, codes=files.DFC2018_CODES, w=(100, 1, 10, 100)),
    'DFC2019_crp256': dict(batch=10, codes=files.DFC2019_CODES, w=DFC2019_W),
    'DFC2019_crp512': dict(batch=2, codes=files.DFC2019_CODES, w=DFC2019_W),
    'DFC2019_crp256_bin': dict(batch=10, codes=files.BINARY_CODES, w=DFC2019_W),
    'DFC2023': dict(batch=2, codes=files.BINARY_CODES, w=(1e-3, 1.0, 1e-5, 1e-3)),
}
# The label value of unlabelled pixels (DFC2018's unclassified 0, the eroded
# Vaihingen reference's black boundary); DFC2019 trains its 65 as a class.
UNLABELLED = {'Vaihingen': files.VAIHINGEN_BOUNDARY, 'Vaihingen_crp256': files.VAIHINGEN_BOUNDARY,
              'DFC2018': files.DFC2018_UNCLASSIFIED}
COMMON = dict(mtl_numEpochs=20, dae_numEpochs=20, mtl_training_samples=10000,
              dae_training_samples=10000, dropout_rate=0.5, bn_momentum=0.99,
              roof_height_threshold=50, test_stride=CROP // 6, sem_flag=True,
              norm_flag=True, edge_flag=False, mtl_head_mode='dsm', mtl_bb_freeze=False)


# ------------------------------------------------------------------ the datasets

def _patches(batch):
    """Patch datasets: two steps of training patches, two valid, one test."""
    return {'train': STEPS * batch, 'valid': 2, 'test': 1}


def make_vaihingen(root):
    # Area 28 (valid) and 2 (test) carry the ISPRS '_normalized' nDSM name.
    files.make_vaihingen(root, lambda area: files.block_scene(area, TILE, 6, unlabelled=True),
                         normalized=(28, 2))


def make_vaihingen_crp256(root):
    files.make_vaihingen_crp256(root, _patches(10),
                                lambda i: files.block_scene(i, (CROP, CROP), 6,
                                                            unlabelled=True))


def make_dfc2018(root):
    files.make_dfc2018(root, lambda i: files.block_scene(i, TILE, 20, nodata=0.1,
                                                         unlabelled=True))


def _dfc2019(batch, codes):
    def make(root):
        n = 0
        for split, count in _patches(batch).items():
            for _ in range(count):
                scene = files.block_scene(n, (CROP, CROP), len(codes), nodata=0.1)
                files.write_dfc2019(root, split, n, scene, codes=codes)
                n += 1
        # An image without its CLS truth: skipped, as published.
        files.write_dfc2019(root, 'train', n, scene, truths='A', codes=codes)
    return make


def make_dfc2023(root):
    n = 0
    for split, count in _patches(2).items():
        for _ in range(count):
            scene = files.block_scene(n, (CROP, CROP), 2)
            sar = (scene[0][..., 0] // 2 + 40).astype(np.uint8)     # one 8-bit SAR band
            files.write_split_folders(root, split, f'P{n:04d}', scene, sar=sar)
            n += 1


# dae: the story goes on with train_dae.py and test_dsm.py --correction, else
# test_dsm.py alone. The DAE's stories cover every layout and every DAE input
# the datasets make (6 colour classes, 20 classes, 2 classes, 2 and SAR); the
# DAE stage is the same code for the others, and training it costs a story a
# third of its time.
CASES = [   # (test id, dataset_name, extra settings, writer, dae)
    ('Vaihingen', 'Vaihingen', [], make_vaihingen, True),
    ('Vaihingen_crp256', 'Vaihingen_crp256', [], make_vaihingen_crp256, False),
    ('DFC2018', 'DFC2018', [], make_dfc2018, True),
    ('DFC2019_crp256', 'DFC2019_crp256', [], _dfc2019(10, files.DFC2019_CODES), False),
    ('DFC2019_crp512', 'DFC2019_crp512', [], _dfc2019(2, files.DFC2019_CODES), False),
    ('DFC2019_crp256_bin', 'DFC2019_crp256_bin', [], _dfc2019(10, files.BINARY_CODES), True),
    ('DFC2023', 'DFC2023', [], make_dfc2023, False),
    ('DFC2023_sar', 'DFC2023', ['sar_mode=True'], make_dfc2023, True),
]


# ------------------------------------------------------------------ the story

def _run(cwd, keras_home, script, *args):
    env = {'KERAS_HOME': str(keras_home), 'PYTHONPATH': ''}
    for name in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY'):
        env[name] = OFFLINE
    env['NO_PROXY'] = env['no_proxy'] = ''
    result = run_python([os.path.join(ROOT, script), *args], env=env, cwd=cwd, stand_in=True)
    assert result.returncode == 0, f"{script} {' '.join(args)} exited " \
        f"{result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert 'Downloading data from' not in result.stdout + result.stderr
    return result.stdout


def _label_file(root, name, split, sample):
    """The label file of a sample of the datasets with unlabelled pixels."""
    if name in ('Vaihingen', 'DFC2018'):
        return root / 'SEM' / f'{sample}.tif'
    return root / split / 'sem' / f'{sample}.tif'


def _unlabelled_mask(path, value):
    """Pixels of a label file holding `value`, read back with GDAL."""
    with rasterio.open(path) as raster:
        bands = raster.read()
    return np.all(bands == np.reshape(value, (-1, 1, 1)), axis=0)


def _training_label_files(root, name):
    if name == 'Vaihingen':
        return [_label_file(root, name, 'train', f'top_mosaic_09cm_area{a}')
                for a in files.VAIHINGEN_AREAS['train']]
    if name == 'DFC2018':
        return [_label_file(root, name, 'train', t) for t in files.DFC2018_TILES['train']]
    return sorted((root / 'train' / 'sem').glob('*.tif'))


def _check_unlabelled(log, root, name, record):
    """The log's share of unlabelled training pixels, and a confusion matrix
    counting only the labelled pixels of the test image, both against the files."""
    value = UNLABELLED[name]
    masks = [_unlabelled_mask(p, value) for p in _training_label_files(root, name)]
    pixels, unlabelled = sum(m.size for m in masks), sum(int(m.sum()) for m in masks)
    assert 0 < unlabelled < pixels
    assert (f"{unlabelled / pixels:.2%} of the training label pixels ({unlabelled:,} of "
            f"{pixels:,}) are unlabelled_code {value!r}") in log
    image = record['per_image'][0]['name']
    test = _unlabelled_mask(_label_file(root, name, 'test', image), value)
    assert test.any()
    assert np.sum(record['overall']['confusion_matrix']) == test.size - test.sum()


def _check_settings(used, name, extra):
    published = PUBLISHED[max((k for k in PUBLISHED if name.startswith(k)), key=len)]
    assert used['dataset_name'] == name
    assert used['label_codes'] == [list(c) if isinstance(c, tuple) else c
                                   for c in published['codes']]
    assert (used['w1'], used['w2'], used['w3'], used['w4']) == published['w']
    batch = published['batch']
    assert (used['batch_size'], used['mtl_batchSize'], used['dae_batchSize']) == \
        (batch, batch, batch)
    for key, value in COMMON.items():
        assert used[key] == value, key
    # What was shrunk, and nothing else.
    assert (used['cropSize'], used['mtl_decoder_scale'], used['dae_width_scale'],
            used['max_steps']) == (CROP, WIDTH, WIDTH, STEPS)
    assert used['backbone_weights'] is None
    assert used['sar_mode'] is ('sar_mode=True' in extra)
    value = UNLABELLED.get(name)
    assert used['unlabelled_code'] == (list(value) if isinstance(value, tuple) else value)


def _check_test_outputs(folder, root, name, codes, correction):
    with open(folder / 'metrics.json') as f:
        record = json.load(f)
    assert record['correction'] is correction and record['overall']['images'] == 1
    assert np.isfinite(record['overall']['rmse'])
    assert ('mtl_rmse' in record['overall']) is correction
    image = record['per_image'][0]['name']
    with rasterio.open(folder / f'{image}_height.tif') as result:
        height, transform = result.read(1), result.transform
    with rasterio.open(folder / f'{image}_sem.tif') as result:
        sem, table = result.read(1), result.colormap(1)
    assert height.dtype == np.float32 and np.isfinite(height).all()
    shape = TILE if name in ('Vaihingen', 'DFC2018') else (CROP, CROP)
    assert height.shape == shape and sem.shape == shape
    if isinstance(codes[0], tuple):     # colour labels: class indices, the colours a table
        assert set(np.unique(sem)) <= set(range(len(codes)))
        assert [table[i][:3] for i in range(len(codes))] == list(codes)
    else:
        assert set(np.unique(sem)) <= set(codes)
    if name == 'DFC2018':   # the georeferencing of the input tile is kept
        easting, northing = (float(v) for v in image.split('_')[-2:])
        assert (transform.c, transform.f) == (easting, northing)
    return record


@pytest.mark.slow
@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_dataset_story(case, tmp_path):
    case_id, name, extra, write, dae = case
    start = time.perf_counter()
    root = tmp_path / 'datasets' / name
    write(str(root))
    keras_home = tmp_path / 'keras_home'
    keras_home.mkdir()
    sets = [f'--set={s}' for s in [f'dataset_name={name}', *SHRINK, *extra]]
    codes = PUBLISHED[max((k for k in PUBLISHED if name.startswith(k)), key=len)]['codes']

    log = _run(tmp_path, keras_home, 'train_mtl.py', *sets)
    assert f'done after {STEPS} steps' in log
    if dae:
        _run(tmp_path, keras_home, 'train_dae.py', *sets)
    _run(tmp_path, keras_home, 'test_dsm.py', *(['--correction'] if dae else []),
         '--max-images=1', *sets)

    runs = tmp_path / 'checkpoints' / name
    stages = (('mtl', 'mtl_decoder_scale'), ('dae', 'dae_width_scale'))[:2 if dae else 1]
    for stage, width in stages:
        assert (runs / stage / 'best.weights.h5').is_file()
        with open(runs / stage / 'best.weights.h5.json') as f:
            saved = json.load(f)['settings']
        assert (saved['dataset_name'], saved['cropSize'], saved[width]) == (name, CROP, WIDTH)
        assert saved['sar_mode'] is ('sar_mode=True' in extra)
    record = _check_test_outputs(tmp_path / 'output' / name / ('mtl_dae' if dae else 'mtl'),
                                 root, name, codes, correction=dae)
    _check_settings(record['settings'], name, extra)
    if name in UNLABELLED:
        _check_unlabelled(log, root, name, record)
    else:
        assert 'unlabelled' not in log
    # Offline and nothing fetched: the empty Keras cache holds no model file.
    assert not (keras_home / 'models').exists() or not os.listdir(keras_home / 'models')
    print(f"{case_id}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
