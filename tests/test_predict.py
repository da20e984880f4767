"""predict.py, utils/predict/ and utils/geo/: streamed prediction against the
in-memory tiled prediction of utils/predict/blend.py, georeferencing and nodata kept,
2 replicas against 1, interrupted batches, and the user's mistakes."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tifffile

import config
import predict
from tests.conftest import PREDICT_TINY as TINY, ROOT, STAND_IN, run_python
from tests.stand_in import small_encoder
from utils import distribute, settings
from utils.predict import export as exporting
from utils.data import samples
from utils.geo.classes import ClassMap, label_nodata
from utils.geo.grid import Grid
from utils.geo.image import Image
from utils.geo.write import HEIGHT_NODATA, CogWriter
from utils.model import weights as weights_files
from utils.predict import blend, engines, outputs, provenance
from utils.errors import CheckpointError, DatasetError, ImageryWarning, SettingError, UserError

GEO = [(33550, 'd', 3, (0.5, 0.5, 0.0), True),
       (33922, 'd', 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
       (34735, 'H', 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632), True),
       (34737, 's', 0, 'WGS 84 / UTM zone 32N|', True)]


@pytest.fixture(scope='module', autouse=True)
def stand_in_encoder():
    """This module's networks on the stand-in encoder (tests/stand_in.py), in
    this process and in the predict.py processes it starts: prediction is
    under test, not DenseNet121 (test_formats.py and test_export.py predict
    with it)."""
    with small_encoder():
        yield


@pytest.fixture(scope='module')
def predict_fn(weights):
    """The tiny networks' windows, 3 per call (batches span window rows)."""
    mtl, dae = weights['models']
    return engines.tensorflow_fn(mtl, dae, cfg=config, strategy=tf.distribute.get_strategy(),
                                 batch_size=3, outputs=('sem', 'norm'))


def _image(shape, dtype=np.uint8, seed=0):
    """A smooth random image (the networks see structure, not only noise)."""
    rng = np.random.RandomState(seed)
    coarse = rng.rand(shape[0] // 8 + 2, shape[1] // 8 + 2, shape[2])
    smooth = tf.image.resize(coarse[None], (shape[0], shape[1]))[0].numpy()
    return (smooth * 250).astype(dtype) if dtype == np.uint8 else (smooth * 900 - 100).astype(dtype)


def _cli(weights, *extra):
    return ['--mtl-weights', weights['mtl'], '--dae-weights', weights['dae'],
            '--correction', '--ungeoreferenced', '--set', 'predict_stride=10', '--set',
            'test_batch_size=4', *extra]


@pytest.mark.parametrize('shape,dtype,layout', [
    ((75, 101, 3), np.uint8, dict(tile=(32, 32), compression='lzw')),
    ((58, 47, 3), np.float32, dict(rowsperstrip=5, compression='zlib')),  # range pre-pass
    ((20, 50, 3), np.uint8, dict(rowsperstrip=3)),       # smaller than the crop: padded
])
def test_streamed_equals_in_memory(predict_fn, tmp_path, shape, dtype, layout):
    settings.apply(TINY)
    path = str(tmp_path / 'img.tif')
    tifffile.imwrite(path, _image(shape, dtype), photometric='rgb', **layout)
    fn = predict_fn
    paths = outputs.output_paths(str(tmp_path), 'img', ('height', 'sem', 'norm'))
    outputs.predict_image(fn, path, paths, [0, 1, 2], cfg=settings.current())

    image = samples.read_image(config, path)    # the in-memory path: whole image, predict_tile
    h, w = shape[:2]
    padded = np.pad(image, ((0, max(32 - h, 0)), (0, max(32 - w, 0)), (0, 0)), mode='reflect')
    ref = blend.predict_tile(fn, padded, 32, 10, window=config.predict_window)
    np.testing.assert_array_equal(tifffile.imread(paths['height']), ref['height'][:h, :w])
    np.testing.assert_array_equal(tifffile.imread(paths['norm']), ref['norm'][:h, :w])
    np.testing.assert_array_equal(tifffile.imread(paths['sem']), ClassMap(
        config.label_codes).values[np.argmax(ref['sem'][:h, :w], -1)])
    assert not np.allclose(ref['height'], ref['height_mtl'])     # the DAE took part
    assert os.path.getsize(paths['preview']) > 0
    assert sorted(os.listdir(tmp_path)) == sorted(
        ['img.tif'] + [os.path.basename(p) for p in paths.values()])   # no .tmp left


@pytest.mark.parametrize('layout,nodata', [
    (dict(rowsperstrip=4, compression='zlib'), 'gdal'),                  # striped deflate
    (dict(tile=(16, 16), compression='lzw', extrasamples=['unassalpha']), 'alpha'),
])
def test_georeferencing_and_nodata_kept(predict_fn, tmp_path, layout, nodata):
    settings.apply(TINY)
    image = _image((40, 70, 4 if nodata == 'alpha' else 3))
    image[..., :3] = np.maximum(image[..., :3], 1)
    tags = list(GEO)
    if nodata == 'alpha':
        image[..., 3] = 255
        image[5:12, 40:60, 3] = 0
    else:
        image[5:12, 40:60] = 0
        tags.append((42113, 's', 0, '0', True))
    path = str(tmp_path / 'geo.tif')
    tifffile.imwrite(path, image, photometric='rgb', extratags=tags, **layout)
    os.mkdir(tmp_path / 'out')
    outputs.predict_image(predict_fn, path, outputs.output_paths(
        str(tmp_path / 'out'), 'geo', ('height', 'sem')), [0, 1, 2], cfg=settings.current())

    import rasterio
    with rasterio.open(path) as source:     # the input's georeferencing, as GDAL reads it
        crs, transform = source.crs, source.transform
    assert crs.to_epsg() == 32632 and transform == rasterio.Affine(0.5, 0, 5e5, 0, -0.5, 4e6)
    for name in ('geo_height.tif', 'geo_sem.tif'):
        with rasterio.open(tmp_path / 'out' / name) as result:
            assert result.profile['tiled'] and result.profile['compress'] == 'deflate'
            assert result.crs == crs and result.transform == transform
            nodata = result.nodata
    assert nodata == label_nodata(config.label_codes)   # the sem file's
    height = tifffile.imread(tmp_path / 'out' / 'geo_height.tif')
    hole = np.zeros(height.shape, bool)
    hole[5:12, 40:60] = True
    assert (height[hole] == HEIGHT_NODATA).all()
    assert np.isfinite(height[~hole]).all() and (height[~hole] != HEIGHT_NODATA).all()
    sem = tifffile.imread(tmp_path / 'out' / 'geo_sem.tif')
    assert (sem[hole] == label_nodata(config.label_codes)).all()
    # read back as a height map, the nodata pixels are NaN (the datasets' rule)
    assert np.isnan(samples.read_height(str(tmp_path / 'out' / 'geo_height.tif'))[hole]).all()


@pytest.mark.parametrize('layout', [
    dict(tile=(32, 48), compression='jpeg', photometric='rgb'),
    dict(tile=(16, 16), compression='zlib', predictor=True, planarconfig='separate',
         bigtiff=True, photometric='rgb'),
    dict(rowsperstrip=7, compression='lzw', predictor=True, photometric='rgb'),
    dict(photometric='rgb'),                                # one uncompressed strip
    dict(photometric='rgb', planarconfig='separate', byteorder='>'),
    dict(photometric='rgb', rowsperstrip=11),
    dict(photometric='rgb', compression='zlib'),            # one compressed strip
])
def test_rows_read_by_segments_equal_the_whole_image(tmp_path, layout):
    image = _image((90, 130, 3))
    path = str(tmp_path / 'x.tif')
    tifffile.imwrite(path, np.moveaxis(image, -1, 0)
                     if layout.get('planarconfig') == 'separate' else image, **layout)
    import rasterio
    with rasterio.open(path) as src:    # GDAL's reading of the whole image
        whole = np.moveaxis(src.read(), 0, -1)
    with Image(path, [2, 0, 1], 3) as source:
        parts = [source.rows(r0, min(r0 + 13, 90))[0] for r0 in range(0, 90, 13)]
    np.testing.assert_array_equal(np.concatenate(parts), whole[..., [2, 0, 1]] / np.float32(255))


def test_writer_rows_in_any_bands_give_the_array(tmp_path):
    import rasterio
    data = np.random.RandomState(0).rand(1100, 300).astype(np.float32)
    writer = CogWriter(tmp_path / 'w.tif', data.shape, np.float32,
                       grid=Grid(*data.shape, crs=rasterio.CRS.from_epsg(32632),
                                 transform=rasterio.Affine(1, 0, 0, 0, -1, 0)))
    for r0, r1 in ((0, 1), (1, 300), (300, 301), (301, 1024), (1024, 1100)):
        writer.write(data[r0:r1])
    writer.close()
    with rasterio.open(tmp_path / 'w.tif') as result:
        np.testing.assert_array_equal(result.read(1), data)


def test_memory_does_not_grow_with_the_image_height(tmp_path):
    """The streamed path holds a strip of rows: a 4x taller image of the same
    width peaks at the same traced memory, far below the whole image's maps."""
    import tracemalloc
    settings.apply(['cropSize=32', 'predict_stride=16'])

    def network(windows):       # a stand-in: no TensorFlow, same output shapes
        return {'height': windows[..., 0] * 2.0, 'sem': np.repeat(windows[..., :1], 6, -1)}
    network.batch_size = 8
    peaks = {}
    for rows in (1000, 4000):
        path = str(tmp_path / f'{rows}.tif')
        tifffile.imwrite(path, _image((rows, 160, 3)), photometric='rgb', tile=(64, 64),
                         compression='zlib')
        tracemalloc.start()
        outputs.predict_image(network, path, outputs.output_paths(
            str(tmp_path), str(rows), ('height', 'sem')), [0, 1, 2], cfg=settings.current())
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    whole = 4000 * 160 * 4 * (3 + 1 + 1 + 6)    # float32 image, weights, height, sem
    assert peaks[4000] < 1.25 * peaks[1000], peaks
    assert peaks[4000] < whole / 4, (peaks, whole)


@pytest.mark.parametrize('layout', ['single strip', 'narrow strip'])
def test_memory_of_single_strip_and_narrow_images_follows_the_width(tmp_path, layout):
    """A single uncompressed strip (tifffile's and many tools' default) is
    read by rows from the file, and an image narrower than the crop is padded
    band by band: 4x the rows, the same peak."""
    import tracemalloc
    settings.apply(['cropSize=32', 'predict_stride=16'])

    def network(windows):
        return {'height': windows[..., 0] * 2.0, 'sem': np.repeat(windows[..., :1], 6, -1)}
    network.batch_size = 8
    width, sizes = (160, (2000, 8000)) if layout == 'single strip' else (20, (10000, 40000))
    peaks = {}
    for rows in (sizes[0],) + sizes:    # the first run pays the one-time costs (imports)
        path = str(tmp_path / f'{rows}.tif')
        tifffile.imwrite(path, _image((rows, width, 3), np.float32), photometric='rgb')
        with tifffile.TiffFile(path) as tif:
            assert len(tif.pages[0].dataoffsets) == 1 and tif.pages[0].compression == 1
        tracemalloc.start()
        outputs.predict_image(network, path, outputs.output_paths(
            str(tmp_path), str(rows), ('height', 'sem')), [0, 1, 2], cfg=settings.current())
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    image = sizes[1] * max(width, 32) * 3 * 4   # float32, as the windows see it
    assert peaks[sizes[1]] < 1.25 * peaks[sizes[0]], peaks
    assert peaks[sizes[1]] < image / 2, (peaks, image)


TWO_REPLICAS_ARGS = ['--set', 'multi_gpu_enabled=True', '--set', 'cpu_replicas=2']


@pytest.mark.slow
def test_two_replicas_match_one(weights, tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    tifffile.imwrite(folder / 'a.tif', _image((70, 90, 3)), photometric='rgb')
    proc = run_python(['predict.py', str(folder), '--out', str(tmp_path / 'two'),
                       *_cli(weights), *TWO_REPLICAS_ARGS], timeout=600, stand_in=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '2 replica(s)' in proc.stdout
    # one replica on TensorFlow too (--engine auto would take OpenVINO there):
    # the replicas' split is under test (the engines': test_export.py)
    predict.main([str(folder), '--out', str(tmp_path / 'one'), *_cli(weights, '--engine',
                                                                     'tensorflow')])
    one = tifffile.imread(tmp_path / 'one' / 'a_height.tif')
    two = tifffile.imread(tmp_path / 'two' / 'a_height.tif')
    # Same windows in the same batches of 4, split 2 + 2: float32 rounding
    # only, bounded by the networks' sums of products (export.height_tolerance)
    tolerance = exporting.height_tolerance(weights['models'], np.abs(one).max())
    np.testing.assert_allclose(two, one, rtol=0, atol=tolerance)
    # a map shifted by one pixel is caught (the bound, of at least 1 m's
    # rounding, is too loose for a 0.1% error on these 6 cm heights)
    assert np.abs(two - np.roll(one, 1, axis=1)).max() > tolerance
    np.testing.assert_array_equal(tifffile.imread(tmp_path / 'two' / 'a_sem.tif'),
                                  tifffile.imread(tmp_path / 'one' / 'a_sem.tif'))


@pytest.mark.slow
def test_killed_batch_leaves_no_partial_output_and_rerun_completes(weights, tmp_path, capsys):
    folder, out = tmp_path / 'in', tmp_path / 'out'
    folder.mkdir()
    for i, name in enumerate('abc'):
        tifffile.imwrite(folder / f'{name}.tif', _image((200, 200, 3), seed=i),
                         photometric='rgb')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.Popen([sys.executable, STAND_IN, 'predict.py', str(folder), '--out',
                             str(out), *_cli(weights)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # the writer's streamed file: image b has begun
    while not list(out.glob('b_height.tif.tmp*')) and proc.poll() is None:
        assert time.time() < deadline, 'image b never started'
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)       # image a is done, b has just begun
    proc.wait()
    finals = sorted(p for p in os.listdir(out) if not p.endswith(('.tmp', '.lock')))
    assert finals == ['a_height.tif', 'a_preview.png', 'a_sem.tif']
    assert tifffile.imread(out / 'a_height.tif').shape == (200, 200)
    before = os.stat(out / 'a_height.tif').st_mtime_ns

    predict.main([str(folder), '--out', str(out), *_cli(weights)])
    printed = capsys.readouterr().out
    assert f"skipped {folder / 'a.tif'}" in printed
    assert 'done: 2 image(s) predicted' in printed and '1 skipped' in printed
    assert os.stat(out / 'a_height.tif').st_mtime_ns == before
    assert sorted(os.listdir(out)) == sorted(f'{n}_{k}' for n in 'abc'
                                             for k in ('height.tif', 'sem.tif', 'preview.png'))


def _one_line_error(kind, match, argv):
    with pytest.raises(kind, match=match) as err:
        predict.main(argv)
    assert '\n' not in str(err.value)
    return str(err.value)


def test_bad_inputs_are_one_line_errors_naming_file_and_fix(weights, tmp_path):
    good = tmp_path / 'rgb.tif'
    tifffile.imwrite(good, _image((40, 40, 3)), photometric='rgb')
    bad = tmp_path / 'broken.tif'
    bad.write_bytes(b'II*\x00 not really a tiff')
    grey = tmp_path / 'grey.png'
    import cv2
    cv2.imwrite(str(grey), _image((40, 40, 1))[..., 0])
    empty = tmp_path / 'empty'
    empty.mkdir()
    cli = _cli(weights)
    _one_line_error(DatasetError, f'Cannot read {bad}', [str(bad), *cli])
    _one_line_error(UserError, f'{grey} has 1 band.*--bands', [str(grey), *cli])
    _one_line_error(UserError, f'{good} has 3 bands.*--bands 5,1,2',
                    [str(good), '--bands', '5,1,2', *cli])
    _one_line_error(DatasetError, f'{empty}: no image in this folder that GDAL opens',
                    [str(empty), *cli])
    _one_line_error(DatasetError, 'no such file', [str(tmp_path / 'nothere.tif'), *cli])
    _one_line_error(SettingError, '--outputs height,edge', [str(good), '--outputs',
                                                          'height,edge', *cli])
    _one_line_error(SettingError, r'no norm head \(norm_flag=False\)',
                    [str(good), '--outputs', 'height,norm', *cli, '--set', 'norm_flag=False'])
    # weights of another architecture: named by the setting from the .json ...
    _one_line_error(CheckpointError, 'mtl_decoder_scale=0.0625.*--set mtl_decoder_scale',
                    [str(good), *cli, '--set', 'mtl_decoder_scale=0.125'])
    # ... and, without a .json, by the weights file
    bare = tmp_path / 'bare.weights.h5'
    shutil.copy(weights['mtl'], bare)
    _one_line_error(CheckpointError, f'{bare}.*does not fit',
                    [str(good), *cli, '--mtl-weights', str(bare), '--set', 'cropSize=32',
                     '--set', 'mtl_decoder_scale=0.125'])


def test_error_ends_the_script_with_one_line_and_exit_1(tmp_path):
    proc = run_python(['predict.py', str(tmp_path)])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}: no image in this folder that GDAL opens. Fix: name a folder "
        f"holding images, or the image files themselves.")


def test_trained_settings_come_from_the_json(weights, tmp_path):
    """Only --set dataset_name-like options: cropSize and widths from the .json."""
    # The user's settings, whichever test built the weights first.
    settings.apply(['cropSize=96', 'mtl_decoder_scale=0.25', 'dae_width_scale=0.25'])
    user = settings.current()
    found = [weights_files.WeightsFile(weights['mtl'], 'mtl'),
             weights_files.WeightsFile(weights['dae'], 'dae')]
    cfg = weights_files.adopt(user, found, keep={'dae_width_scale'})
    imagery = found[0].imagery
    assert cfg.cropSize == 32 and cfg.mtl_decoder_scale == 0.0625
    assert cfg.dae_width_scale == 0.25      # kept: the user set it
    assert cfg.predict_stride == 32 // 3    # derived from the adopted cropSize
    assert imagery['bands'] == [1, 2, 3]
    # Nothing global changed: config and the user's settings are as set.
    assert config.cropSize == user.cropSize == 96 and config.mtl_decoder_scale == 0.25


def test_only_chief_and_worker_tasks_predict(weights, tmp_path, monkeypatch, capsys):
    image = tmp_path / 'a.tif'
    tifffile.imwrite(image, _image((40, 40, 3)), photometric='rgb')
    monkeypatch.setenv('TF_CONFIG', json.dumps(
        {'cluster': {'chief': ['a:1'], 'worker': ['b:1'], 'evaluator': ['c:1']},
         'task': {'type': 'evaluator', 'index': 0}}))
    assert distribute.task_type() == 'evaluator'
    predict.main([str(image), '--out', str(tmp_path / 'out'), *_cli(weights)])
    assert 'takes no part' in capsys.readouterr().out
    assert not (tmp_path / 'out').exists()      # nothing written, the chief's files least
    monkeypatch.delenv('TF_CONFIG')
    assert distribute.task_type() is None


# ----------------------------------------------------------------- users' rasters
def _gdal_image(path, bands, **profile):
    """A GeoTIFF written by GDAL (rasterio) from [bands, H, W]."""
    import rasterio
    from rasterio.transform import from_origin
    with rasterio.open(path, 'w', driver='GTiff', height=bands.shape[1], width=bands.shape[2],
                       count=len(bands), dtype=bands.dtype, crs='EPSG:32632',
                       transform=from_origin(500000, 5000000, 0.5, 0.5), **profile) as out:
        out.write(bands)
    return str(path)


def _levels(shape, seed=0):
    """Smooth uint8 [bands, H, W] of the levels 17 k (k / 15 in float32 alike
    from 17 k / 255 and from 273 k / 4095)."""
    image = np.moveaxis(_image(shape[1:] + (shape[0],), seed=seed), -1, 0)
    return (np.rint(image / 17.0) * 17).astype(np.uint8)


def _weights_with(weights, tmp_path, imagery=None, **trained_settings):
    """Copies of the tiny weights whose .json records other imagery / settings."""
    paths = {}
    for kind in ('mtl', 'dae'):
        paths[kind] = str(tmp_path / f'{kind}.weights.h5')
        shutil.copy(weights[kind], paths[kind])
        with open(weights[kind] + '.json') as f:
            meta = json.load(f)
        meta['settings'].update(trained_settings)
        if imagery is not None:
            meta['imagery'] = imagery
        with open(paths[kind] + '.json', 'w') as f:
            json.dump(meta, f)
    return paths


def _heights(out, name):
    import rasterio
    with rasterio.open(out / f'{name}_height.tif') as source:     # as GIS tools read it
        return source.read(1), source.nodata


def test_declared_12_bit_rgbi_predicts_the_heights_of_8_bit_rgb(predict_fn, tmp_path):
    settings.apply(TINY)
    levels = _levels((4, 40, 56))
    eight = _gdal_image(tmp_path / 'rgb8.tif', levels[:3])
    twelve = _gdal_image(tmp_path / 'rgbi12.tif', levels.astype(np.uint16) // 17 * 273,
                         nbits=12, interleave='band')
    for path, name in ((eight, 'rgb8'), (twelve, 'rgbi12')):
        outputs.predict_image(predict_fn, path, outputs.output_paths(
            str(tmp_path), name, ('height', 'sem')), [0, 1, 2], cfg=settings.current())
    # the same network input, bit for bit, so the same heights
    np.testing.assert_array_equal(_heights(tmp_path, 'rgbi12')[0],
                                  _heights(tmp_path, 'rgb8')[0])


def test_masked_collar_is_nodata_in_every_output(predict_fn, tmp_path):
    import rasterio
    settings.apply(TINY)
    path = str(tmp_path / 'ortho.tif')
    mask = np.full((40, 56), 255, np.uint8)
    mask[:, :9] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, 'w', driver='GTiff', height=40, width=56, count=3,
                           dtype='uint8', compress='JPEG', photometric='YCBCR',
                           tiled=True, blockxsize=16, blockysize=16) as out:
            out.write(_levels((3, 40, 56)))
            out.write_mask(mask)
    outputs.predict_image(predict_fn, path, outputs.output_paths(
        str(tmp_path), 'ortho', ('height', 'sem', 'norm')), [0, 1, 2], cfg=settings.current())
    height, nodata = _heights(tmp_path, 'ortho')
    assert nodata == HEIGHT_NODATA
    np.testing.assert_array_equal(height == nodata, mask == 0)
    sem = tifffile.imread(tmp_path / 'ortho_sem.tif')
    np.testing.assert_array_equal(sem == label_nodata(config.label_codes), mask == 0)
    normals = tifffile.imread(tmp_path / 'ortho_norm.tif')
    np.testing.assert_array_equal((normals == HEIGHT_NODATA).all(-1), mask == 0)


@pytest.mark.slow
def test_recorded_bands_and_scale_are_used_unless_given(weights, tmp_path, recwarn):
    """Weights trained on 12-bit imagery stored in uint16 (image_scale 4095)
    in band order 3,1,2: predict.py takes both from the .json."""
    levels = _levels((3, 40, 56), seed=1)
    path = _gdal_image(tmp_path / 'u16.tif', levels.astype(np.uint16) // 17 * 273)
    reordered = _gdal_image(tmp_path / 'rgb8.tif', levels[[2, 0, 1]])
    paths = _weights_with(weights, tmp_path, imagery={'bands': [3, 1, 2]}, image_scale=4095)
    predict.main([path, '--out', str(tmp_path / 'a'), '--mtl-weights', paths['mtl'],
                  '--dae-weights', paths['dae'], *_cli(weights)[4:]])
    assert not [w for w in recwarn if w.category is ImageryWarning]
    predict.main([reordered, '--out', str(tmp_path / 'b'), '--bands', '1,2,3', *_cli(weights)])
    np.testing.assert_array_equal(_heights(tmp_path / 'a', 'u16')[0],
                                  _heights(tmp_path / 'b', 'rgb8')[0])


def _contract(imagery):
    """The input Contract of weights whose .json records `imagery`, with the
    settings now (as WeightsFile.contract gives it)."""
    cfg = settings.current()
    return weights_files.Contract(cfg.cropSize, imagery['bands'], cfg.image_scale,
                                  imagery.get('band_mean'), imagery.get('band_spread'))


def test_input_unlike_the_training_images_warns(predict_fn, tmp_path):
    settings.apply(TINY)
    dark = _gdal_image(tmp_path / 'dark.tif',
                       _levels((3, 40, 56)).astype(np.uint16) // 17 * 273)
    trained = {'bands': [1, 2, 3], 'band_mean': [0.45, 0.4, 0.38],
               'band_spread': [0.2, 0.2, 0.2]}
    with pytest.warns(ImageryWarning) as caught:    # 12 bits / 65535: all values < 0.07
        outputs.predict_image(predict_fn, dark, outputs.output_paths(
            str(tmp_path), 'dark', ('height',)), [0, 1, 2], cfg=settings.current(),
            contract=_contract(trained))
    messages = [str(w.message) for w in caught if w.category is ImageryWarning]
    assert any(m.startswith(f"{dark}: uint16 values") and 'image_scale = 4095' in m
               for m in messages), messages
    assert any(m.startswith(f"{dark}: scaled values unlike the training images'") and
               'band 1: mean 0.0' in m and "image_scale (now 'auto', span 65535)" in m
               for m in messages), messages
    settings.apply(['image_scale=4095'])        # the right scale: no warning at all
    with warnings.catch_warnings():
        warnings.simplefilter('error', ImageryWarning)
        outputs.predict_image(predict_fn, dark, outputs.output_paths(
            str(tmp_path), 'dark', ('height',)), [0, 1, 2], cfg=settings.current(),
            contract=_contract(trained))


def test_a_batch_predicts_past_unreadable_inputs_and_lists_them(weights, tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    good = _gdal_image(folder / 'a.tif', _levels((3, 40, 56)))
    _gdal_image(folder / 'c.tif', _levels((3, 40, 56), seed=2))
    data = open(good, 'rb').read()
    (folder / 'b.tif').write_bytes(data[:len(data) // 2])      # truncated
    (folder / 'd.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
    with pytest.raises(DatasetError) as err:
        predict.main([str(folder), '--out', str(tmp_path / 'out'), *_cli(weights)])
    message = str(err.value)
    assert message.startswith('2 input(s) skipped: ') and '\n' not in message
    assert f"Cannot read {folder / 'b.tif'}" in message
    assert f"Cannot read {folder / 'd.jpg'}" in message
    assert sorted(os.listdir(tmp_path / 'out')) == sorted(
        f'{n}_{k}' for n in 'ac' for k in ('height.tif', 'sem.tif', 'preview.png'))
    err = capsys.readouterr().err
    assert err.splitlines()[0] == '2 of 4 input(s) cannot be predicted and are skipped:'


@pytest.mark.slow
def test_unreadable_inputs_print_our_lines_only(weights, tmp_path):
    """As a subprocess: stderr holds our list and error, no library's lines."""
    folder = tmp_path / 'in'
    folder.mkdir()
    _gdal_image(folder / 'a.tif', _levels((3, 40, 56)))
    (folder / 'b.jpg').write_bytes(open(_gdal_image(tmp_path / 'x.tif', _levels(
        (3, 40, 56))), 'rb').read()[:300])
    import cv2
    cv2.imwrite(str(tmp_path / 'ok.jpg'), _image((40, 56, 3)))
    (folder / 'c.jpg').write_bytes(open(tmp_path / 'ok.jpg', 'rb').read()[:400])
    proc = run_python(['predict.py', str(folder), '--out', str(tmp_path / 'out'),
                       *_cli(weights)], stand_in=True)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0] == '2 of 3 input(s) cannot be predicted and are skipped:'
    assert [line.split(' (')[0] for line in lines[1:3]] == [
        f"  Cannot read {folder / 'b.jpg'}", f"  Cannot read {folder / 'c.jpg'}"]
    assert lines[3].startswith('error: 2 input(s) skipped: ') and len(lines) == 4, lines
    assert (tmp_path / 'out' / 'a_height.tif').exists()


# ----------------------------------------------------------------- outputs for GIS tools
VAIHINGEN = "label_codes=[(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), " \
            "(255, 255, 0), (255, 0, 0)]"


def _pixelwise(windows):
    """A stand-in network answering each pixel from that pixel alone: every
    window agrees, so blending returns these values (up to rounding) and the
    expected maps are known without any window arithmetic."""
    level = windows[..., 0]
    classes = np.minimum((level * 6).astype(int), 5)
    return {'height': level * 20 + 1, 'sem': np.eye(6, dtype=np.float32)[classes]}


_pixelwise.batch_size = 8


def test_outputs_are_cogs_gis_tools_read(tmp_path):
    import rasterio
    from tests.test_cog import assert_valid_cog
    settings.apply(['cropSize=32', 'predict_stride=32', 'predict_window=triangle', VAIHINGEN])
    image = _levels((3, 600, 700))
    image[:, 200:260, 300:420] = 0
    path = _gdal_image(tmp_path / 'ortho.tif', image, nodata=0)
    out = tmp_path / 'out'
    out.mkdir()
    paths = outputs.output_paths(str(out), 'ortho', ('height', 'sem'))
    outputs.predict_image(_pixelwise, path, paths, [0, 1, 2], cfg=settings.current(),
                          record={'DSMNET_NOTE': 'x'})

    hole = (image == 0).all(0)
    unit = image[0] / np.float32(255)
    with rasterio.open(path) as source:
        crs, transform = source.crs, source.transform
    for key in ('height', 'sem'):
        assert_valid_cog(paths[key])
        with rasterio.open(paths[key]) as result:
            assert result.overviews(1) == [2]          # 600 x 700: one overview
            assert result.crs == crs and result.transform == transform
            assert result.tags()['DSMNET_NOTE'] == 'x'
            values, nodata = result.read(1), result.nodata
            if key == 'sem':
                table = result.colormap(1)
                assert result.count == 1
                assert [table[i][:3] for i in range(6)] == [
                    (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0),
                    (255, 0, 0)]
                assert nodata == 255
                expected = np.minimum((unit * 6).astype(int), 5)
                np.testing.assert_array_equal(values[~hole], expected[~hole])
            else:
                assert nodata == HEIGHT_NODATA
                np.testing.assert_allclose(values[~hole], unit[~hole] * 20 + 1, rtol=1e-5)
            assert (values[hole] == nodata).all() and (values[~hole] != nodata).all()


def _run(argv, capsys):
    predict.main(argv)
    return capsys.readouterr().out


def test_outputs_record_what_made_them_and_reruns_redo_only_stale_images(
        weights, tmp_path, capsys):
    import hashlib
    import rasterio
    image = _gdal_image(tmp_path / 'a.tif', _levels((3, 40, 56)))
    out = tmp_path / 'out'
    argv = [image, '--out', str(out), *_cli(weights)]
    assert 'done: 1 image(s) predicted' in _run(argv, capsys)
    with rasterio.open(out / 'a_height.tif') as result:
        tags = result.tags()
    for kind in ('mtl', 'dae'):
        with open(weights[kind], 'rb') as f:
            assert tags[f'DSMNET_{kind.upper()}_SHA256'] == hashlib.sha256(f.read()).hexdigest()
    shaping = json.loads(tags['DSMNET_PREDICTION'])
    assert shaping == dict(crop=32, stride=10, window=config.predict_window, flips=1,
                           bands=[1, 2, 3], image_scale='auto', correction=True)
    assert tags['DSMNET_VERSION']

    # what a rerun compares: the same record keeps the outputs, any change redoes them
    paths = outputs.output_paths(str(out), 'a', ('height', 'sem'))
    record = {k: v for k, v in tags.items() if k.startswith('DSMNET_')}
    assert provenance.stale_outputs(paths, record) is None
    assert provenance.stale_outputs(paths, dict(record, DSMNET_VERSION='other')) is None
    for key in ('DSMNET_MTL_SHA256', 'DSMNET_DAE_SHA256', 'DSMNET_INPUT'):
        why = provenance.stale_outputs(paths, dict(record, **{key: 'changed'}))
        assert why == f"a_height.tif was made with other {key[7:].lower()}"
    assert record['DSMNET_INPUT'] == provenance.input_record(image)
    os.utime(image, ns=(1, 1))
    assert provenance.input_record(image) != record['DSMNET_INPUT']     # a changed input shows

    printed = _run(argv + ['--set', 'predict_stride=16'], capsys)
    assert 'redone: a_height.tif was made with other prediction' in printed
    with rasterio.open(out / 'a_height.tif') as result:
        assert json.loads(result.tags()['DSMNET_PREDICTION'])['stride'] == 16


def test_an_error_mid_image_leaves_nothing_behind(tmp_path):
    settings.apply(['cropSize=32', 'predict_stride=16'])
    path = str(tmp_path / 'a.tif')
    tifffile.imwrite(path, _image((300, 700, 3)), photometric='rgb', tile=(64, 64))
    calls = []

    def failing(windows):
        calls.append(len(windows))
        if len(calls) == 40:        # some rows written, the image not finished
            raise RuntimeError('device lost')
        return _pixelwise(windows)
    failing.batch_size = 8
    out = tmp_path / 'out'
    out.mkdir()
    import threading
    descriptors, threads = len(os.listdir('/proc/self/fd')), threading.active_count()
    with pytest.raises(RuntimeError, match='device lost'):
        outputs.predict_image(failing, path, outputs.output_paths(
            str(out), 'a', ('height', 'sem')), [0, 1, 2], cfg=settings.current())
    assert len(calls) == 40 and os.listdir(out) == []
    assert len(os.listdir('/proc/self/fd')) == descriptors      # writers and spools closed
    assert threading.active_count() == threads                  # compression threads gone


@pytest.mark.slow
def test_two_workers_claim_images_so_neither_waits(weights, tmp_path):
    """Three images, the first far larger: dealt by count (every 2nd file),
    worker 0 would get the large one and the third, and worker 1 would wait.
    Claimed, worker 0 takes the large one and worker 1 both small ones,
    finishing first. Worker 1 starts once the large image is claimed."""
    folder, out = tmp_path / 'in', tmp_path / 'out'
    folder.mkdir()
    tifffile.imwrite(folder / 'a.tif', _image((600, 600, 3)), photometric='rgb')
    for name in 'bc':
        tifffile.imwrite(folder / f'{name}.tif', _image((40, 40, 3)), photometric='rgb')
    cluster = {'worker': ['localhost:1', 'localhost:2']}
    procs, logs = [], []
    for index in (0, 1):
        if index:      # worker 0 holds the large image
            deadline = time.time() + 300
            while not (out / 'a.lock').exists():
                assert time.time() < deadline and procs[0].poll() is None
                time.sleep(0.05)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_CONFIG=json.dumps(
            {'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
        logs.append(open(tmp_path / f'worker{index}.log', 'w+'))
        # TensorFlow, whose rate the large image was sized for: it must outlast
        # the second worker's start-up
        procs.append(subprocess.Popen([sys.executable, STAND_IN, 'predict.py', str(folder),
                                       '--out', str(out), *_cli(weights, '--engine',
                                                                'tensorflow')],
                                      cwd=ROOT, env=env,
                                      stdout=logs[-1], stderr=subprocess.STDOUT, text=True))
    finished = {}
    while len(finished) < 2:
        for index, proc in enumerate(procs):
            if index not in finished and proc.poll() is not None:
                finished[index] = time.time()
        time.sleep(0.05)
    printed = []
    for log, proc in zip(logs, procs):
        log.seek(0)
        printed.append(log.read())
        assert proc.returncode == 0, printed[-1][-2000:]
    predicted = [{n for n in 'abc' if re.search(rf"^{re.escape(str(folder / n))}\.tif", text,
                                                re.M)} for text in printed]
    assert predicted == [{'a'}, {'b', 'c'}], printed
    assert finished[1] < finished[0]    # the small ones were done while a ran
    assert sorted(os.listdir(out)) == sorted(f'{n}_{k}' for n in 'abc'
                                             for k in ('height.tif', 'sem.tif', 'preview.png'))
