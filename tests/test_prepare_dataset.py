"""prepare_dataset.py on rasters of known truth, written with GDAL.

A sloping terrain (a plane, so bilinear interpolation of it is exact) as a
DTM at 1 m; a DSM at 0.5 m on a grid origin shifted against the others,
holding buildings of known heights on that terrain; an orthophoto at 0.25 m
with the buildings' footprints painted where they stand (and a masked strip
of no data); class codes at 0.5 m with an unlabelled strip. The prepared
tiles must put each building's height at its footprint, to within what the
resampling can move it: the averaged DSM pixel's centre lies at most half a
DSM pixel diagonal (plus, across CRSs, half a grid pixel diagonal) from the
grid pixel's centre, and the terrain rises by |slope| per metre.
"""
import json
import math
import os
import shlex

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as transform_points

import config
from conftest import ROOT, run_python
from tests.test_cog import assert_valid_cog
from utils import settings
from utils.data.layouts import find_split
from utils.errors import DatasetError

UTM = 'EPSG:32632'
X0, Y0 = 500000.0, 5400128.0    # top left of the orthophoto (UTM)
SIDE = 128.0                    # metres
SLOPE = (0.05, -0.03)           # terrain rise per metre east, north
GROUND = 100.0
BUILDING_RGB = (210, 40, 40)
# (left, top, width, height) in metres from (X0, Y0), on the DSM's 0.5 m grid
# (origin shifted by (-1.3, +0.7) m), and the building's height.
DSM_SHIFT = (-1.3, 0.7)
TILE = 64                       # 16 m at 0.25 m
HOLE = (100, 110, 30, 40)       # DSM rows and columns of nodata
MASKED = 150                    # orthophoto columns masked at the right edge


def _buildings():
    out, k = [], 0
    for i in range(8):
        for j in range(8):
            if (i + j) % 2:
                continue
            # DSM pixel edges lie at X0 - 1.3 + 0.5 n: footprints are whole DSM pixels.
            left = j * 16 + 2.7 + 0.5 * (k % 3)
            top = i * 16 + 3.3 + 0.5 * (k % 2)
            out.append((left, top, 9.0, 7.5, 3.0 + 2.5 * (k % 7)))
            k += 1
    return out


BUILDINGS = _buildings()


def terrain(x, y):
    return GROUND + SLOPE[0] * (x - X0) + SLOPE[1] * (y - Y0)


def building_height(x, y):
    """The building height at UTM points (0 outside every footprint)."""
    h = np.zeros(np.shape(x))
    for left, top, w, hgt, height in BUILDINGS:
        inside = (x >= X0 + left) & (x < X0 + left + w) & (y <= Y0 - top) & (y > Y0 - top - hgt)
        h[inside] = height
    return h


def _centres(transform, rows, cols):
    c, r = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
    xs, ys = transform @ (c, r)
    return np.asarray(xs), np.asarray(ys)


def _write(path, bands, transform, crs, **extra):
    with rasterio.open(path, 'w', driver='GTiff', width=bands.shape[2], height=bands.shape[1],
                       count=bands.shape[0], dtype=bands.dtype, crs=crs,
                       transform=transform, **extra) as out:
        out.write(bands)
        return out


def write_region(folder, ortho_crs=UTM):
    """The three GeoTIFFs and a label raster; returns their paths and the
    orthophoto's transform."""
    os.makedirs(folder, exist_ok=True)
    # DTM at 1 m, 4 m beyond the area on every side so bilinear stays inside it.
    t_dtm = from_origin(X0 - 4, Y0 + 4, 1.0, 1.0)
    n = int(SIDE) + 8
    xs, ys = _centres(t_dtm, n, n)
    dtm = terrain(xs, ys).astype(np.float32)[None]
    paths = dict(dtm=_write(f'{folder}/dtm.tif', dtm, t_dtm, UTM).name)
    # DSM at 0.5 m on the shifted origin; one DSM pixel is terrain + building
    # at its centre. A -9999 nodata hole (HOLE) stays out of the nDSM.
    t_dsm = from_origin(X0 + DSM_SHIFT[0], Y0 + DSM_SHIFT[1], 0.5, 0.5)
    n = int(SIDE * 2) + 6
    xs, ys = _centres(t_dsm, n, n)
    dsm = (terrain(xs, ys) + building_height(xs, ys)).astype(np.float32)
    dsm[HOLE[0]:HOLE[1], HOLE[2]:HOLE[3]] = -9999
    paths['dsm'] = _write(f'{folder}/dsm.tif', dsm[None], t_dsm, UTM, nodata=-9999).name
    labels = np.where(building_height(xs, ys) > 0, 2, 1).astype(np.uint8)
    labels[:, :20] = 0              # an unlabelled strip (the file's nodata value)
    paths['labels'] = _write(f'{folder}/labels.tif', labels[None], t_dsm, UTM, nodata=0).name
    # Orthophoto at 0.25 m in its CRS: each pixel painted by where its centre
    # stands in UTM, with a fixed texture; the right 37.5 m masked out.
    if ortho_crs == UTM:
        left, top = X0, Y0
    else:
        (left,), (top,) = transform_points(UTM, ortho_crs, [X0 + 6], [Y0 - 6])
    t_ortho = from_origin(left, top, 0.25, 0.25)
    n = int(SIDE * 4) if ortho_crs == UTM else int((SIDE - 12) * 4)
    xs, ys = _centres(t_ortho, n, n)
    if ortho_crs != UTM:
        xs, ys = (np.reshape(v, xs.shape) for v in
                  transform_points(ortho_crs, UTM, xs.ravel(), ys.ravel()))
    texture = (np.add.outer(np.arange(n) % 7, np.arange(n) % 5) * 4).astype(np.uint8)
    image = np.stack([60 + texture, 110 + texture, 70 + texture])
    roof = building_height(xs, ys) > 0
    for band, value in enumerate(BUILDING_RGB):
        image[band][roof] = value
    mask = np.full((n, n), 255, np.uint8)
    mask[:, -MASKED:] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(f'{folder}/ortho.tif', 'w', driver='GTiff', width=n, height=n,
                           count=3, dtype='uint8', crs=ortho_crs, transform=t_ortho,
                           tiled=True, compress='deflate') as out:
            out.write(image)
            out.write_mask(mask)
    paths['ortho'] = f'{folder}/ortho.tif'
    return paths


def prepare(tmp_path, paths, *extra):
    """prepare_dataset.py on the region (with --labels when `paths` has them)."""
    root = tmp_path / 'datasets'
    labels = ['--labels', paths['labels']] if 'labels' in paths else []
    args = ['prepare_dataset.py', 'region', '--images', paths['ortho'], '--dsm', paths['dsm'],
            '--dtm', paths['dtm'], *labels, '--tile', str(TILE),
            '--block', '2', '--set', f'shortcut_path={root}', *extra]
    result = run_python(args, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(root / 'region' / 'dataset.json') as f:
        return root / 'region', json.load(f), result.stdout


def read_tiles(root):
    """{split: [(name, image [3,h,w], valid, height with NaN, labels, transform, crs)]}"""
    tiles = {}
    for split in ('train', 'valid', 'test'):
        tiles[split] = []
        for name in sorted(os.listdir(root / split / 'rgb')):
            if not tiles[split]:        # COGs (masks and all), as GIS tools expect
                for kind in ('rgb', 'dsm', 'sem'):
                    assert_valid_cog(root / split / kind / name)
            with rasterio.open(root / split / 'rgb' / name) as src:
                image, valid = src.read(), src.dataset_mask() != 0
                transform, crs = src.transform, src.crs
            with rasterio.open(root / split / 'dsm' / name) as src:
                height = src.read(1, masked=True).filled(np.nan)
                assert src.transform == transform
            with rasterio.open(root / split / 'sem' / name) as src:
                labels = src.read(1)
            tiles[split].append((name, image, valid, height, labels, transform, crs))
    return tiles


def _check_buildings(tiles, ortho_crs, tolerance, at_least):
    """Every building whose centre lies in a kept tile has its height there;
    and the footprints the image shows and the nDSM shows agree (IoU)."""
    checked, both, either = 0, 0, 0
    for split in tiles.values():
        for _, image, valid, height, _, transform, crs in split:
            roof_image = (image[0] == BUILDING_RGB[0]) & (image[1] == BUILDING_RGB[1]) & valid
            roof_height = (height > 1.5) & valid     # half the lowest building
            both += int((roof_image & roof_height).sum())
            either += int((roof_image | roof_height).sum())
            for left, top, w, h, truth in BUILDINGS:
                x, y = X0 + left + w / 2, Y0 - top - h / 2
                if ortho_crs != UTM:
                    (x,), (y,) = transform_points(UTM, ortho_crs, [x], [y])
                col, row = ~transform @ (x, y)
                row, col = int(math.floor(row)), int(math.floor(col))
                if 0 <= row < TILE and 0 <= col < TILE and valid[row, col]:
                    assert abs(height[row, col] - truth) <= tolerance, (truth, height[row, col])
                    checked += 1
    assert checked >= at_least
    assert both / either >= 0.9, both / either
    print(f"{checked} building centres checked, footprint IoU {both / either:.4f}")


def _check_splits_do_not_touch(tiles):
    boxes = {s: [rasterio.transform.array_bounds(TILE, TILE, t[5]) for t in tiles[s]]
             for s in tiles}
    for a in boxes:
        for b in boxes:
            if a < b:
                for l1, b1, r1, t1 in boxes[a]:
                    for l2, b2, r2, t2 in boxes[b]:
                        # closed boxes: a shared edge or corner would be touching
                        assert l1 > r2 or l2 > r1 or b1 > t2 or b2 > t1, (a, b)


def test_known_truth_same_crs(tmp_path):
    paths = write_region(str(tmp_path / 'sources'))
    root, record, log = prepare(tmp_path, paths)
    tiles = read_tiles(root)
    # Heights: the DSM pixel averaged into a grid pixel has its centre at most
    # half a DSM pixel diagonal away; the DTM is bilinear on a plane (exact).
    slope = math.hypot(*SLOPE)
    _check_buildings(tiles, UTM, slope * 0.5 * math.sqrt(2) / 2 + 1e-3, 10)
    _check_splits_do_not_touch(tiles)
    counts = {s: len(tiles[s]) for s in tiles}
    assert all(counts.values()) and record['tiles'] | counts == record['tiles']
    # The orthophoto is on the grid: tiles hold its pixels unchanged.
    with rasterio.open(paths['ortho']) as src:
        name, image, valid, *_, transform, _ = tiles['train'][0]
        col, row = (round(v) for v in ~src.transform @ (transform.c, transform.f))
        window = ((row, row + TILE), (col, col + TILE))
        np.testing.assert_array_equal(valid, src.dataset_mask(window=window) != 0)
        np.testing.assert_array_equal(image[:, valid], src.read(window=window)[:, valid])
    # Mostly-masked tiles are dropped: the masked strip covers two columns of
    # tiles and a third by 22 of 64 pixels.
    assert record['tiles']['dropped_nodata'] == 16
    # The DSM's nodata hole: nodata exactly at the grid pixels wholly inside it
    # (the average leaves nodata out, so a pixel partly inside keeps a value).
    hole_x = X0 + DSM_SHIFT[0] + 0.5 * np.array(HOLE[2:])
    hole_y = Y0 + DSM_SHIFT[1] - 0.5 * np.array(HOLE[:2])
    seen = 0
    for split in tiles.values():
        for _, _, valid, height, _, transform, _ in split:
            xs, ys = _centres(transform, TILE, TILE)
            inside = (xs - 0.125 >= hole_x[0]) & (xs + 0.125 <= hole_x[1]) & \
                (ys + 0.125 <= hole_y[0]) & (ys - 0.125 >= hole_y[1])
            np.testing.assert_array_equal(np.isnan(height), inside)
            seen += int(inside.sum())
    assert seen > 0
    for split in tiles.values():
        for _, _, valid, height, *_ in split:
            assert (valid & np.isfinite(height)).mean() >= 0.5
    assert record['crs'] == UTM and record['pixel_size'] == 0.25
    assert record['settings'] == dict(layout='split_folders', cropSize=64,
                                      label_codes=[1, 2], unlabelled_code=0)
    assert record['height_unit'] == 'metre' and record['bands'] == [1, 2, 3]
    assert record['radiometric_scale'] == 255
    # The class histogram counts the labels of the valid pixels of the kept tiles.
    histogram = {}
    for split in tiles.values():
        for _, _, valid, height, labels, *_ in split:
            ok = valid & np.isfinite(height)
            for code in (0, 1, 2):
                histogram[str(code)] = histogram.get(str(code), 0) + int((labels[ok] == code).sum())
    assert record['class_histogram'] == {k: v for k, v in histogram.items() if v}
    low, high = record['height_range']
    assert low == 0 and abs(high - 18) <= 0.05
    for word in ('train', 'valid', 'test', 'km2', 'heights', 'classes'):
        assert word in log
    # dataset_name = 'region' now has those settings, no DATASETS entry.
    settings.apply([f'shortcut_path={root.parent}', 'dataset_name=region'])
    assert (config.layout, config.label_codes, config.unlabelled_code, config.cropSize) == \
        ('split_folders', [1, 2], 0, 64)
    assert 'region' not in config.DATASETS


def test_known_truth_orthophoto_in_another_crs(tmp_path):
    paths = write_region(str(tmp_path / 'sources'), ortho_crs='EPSG:3035')
    root, record, _ = prepare(tmp_path, paths)
    tiles = read_tiles(root)
    assert all(t[6].to_epsg() == 3035 for s in tiles.values() for t in s)
    # Across CRSs the grid pixel's centre may also sit half its own diagonal off.
    slope = math.hypot(*SLOPE)
    _check_buildings(tiles, 'EPSG:3035',
                     slope * (0.5 + 0.25) * math.sqrt(2) / 2 + 1e-3, 6)
    _check_splits_do_not_touch(tiles)
    assert record['crs'] == 'EPSG:3035'


def test_a_coarser_gsd_averages(tmp_path):
    """--gsd 0.5: the orthophoto is averaged 2 x 2 and the grid snaps to
    multiples of 0.5 m."""
    paths = write_region(str(tmp_path / 'sources'))
    root, record, _ = prepare(tmp_path, paths, '--gsd', '0.5', '--tile', '32')
    assert record['pixel_size'] == 0.5 and record['resampling']['images'] == ['average']
    name, image, valid, *_, transform, _ = read_tiles(root)['train'][0]
    assert transform.c % 0.5 == 0 and transform.f % 0.5 == 0
    with rasterio.open(paths['ortho']) as src:
        col, row = (round(v) for v in ~src.transform @ (transform.c, transform.f))
        window = ((row, row + 64), (col, col + 64))
        source = src.read(window=window).astype(np.float64)
        whole = (src.dataset_mask(window=window) != 0).reshape(32, 2, 32, 2).all(axis=(1, 3))
    means = source.reshape(3, 32, 2, 32, 2).mean(axis=(2, 4))
    assert whole.sum() > 500 and (valid >= whole).all()
    assert np.abs(image[:, whole] - means[:, whole]).max() <= 0.5 + 1e-9   # rounded to uint8


@pytest.mark.parametrize('args,message', [
    (['--dsm', 'x.tif'], 'give --dsm and --dtm, or --ndsm'),
    (['--ndsm', 'x.tif', '--split', '0.8,0.2'], '--split 0.8,0.2'),
    (['--ndsm', 'x.tif', '--bands', '4,1'], '--bands 4,1'),
])
def test_malformed_command_lines_exit_2(args, message):
    result = run_python(['prepare_dataset.py', 'region', '--images', 'o.tif', *args],
                        timeout=120)
    assert result.returncode == 2 and message in result.stderr


def test_published_names_are_refused_and_missing_files_named(tmp_path):
    result = run_python(['prepare_dataset.py', 'DFC2023_local', '--images', 'o.tif',
                         '--ndsm', 'n.tif'], timeout=120)
    assert result.returncode == 2 and "'DFC2023'" in result.stderr
    result = run_python(['prepare_dataset.py', 'region', '--images', str(tmp_path / 'no.tif'),
                         '--ndsm', 'n.tif', '--set', f'shortcut_path={tmp_path}'], timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith('error: --images') and 'no.tif' in result.stderr
    empty = tmp_path / 'dsm_tiles'
    empty.mkdir()
    (empty / 'readme.txt').write_text('not a raster')
    (tmp_path / 'o.tif').write_bytes(b'')      # found by name; read only after every list
    result = run_python(['prepare_dataset.py', 'region', '--images', str(tmp_path / 'o.tif'),
                         '--dsm', str(empty), '--dtm', 'd.tif',
                         '--set', f'shortcut_path={tmp_path}'], timeout=120)
    assert result.returncode == 1 and result.stderr.startswith(
        f'error: --dsm {empty}: no raster in this folder that GDAL opens')


# Shrunk for a CPU; the scripts build the MTL on tests/stand_in.py's encoder.
SHRINK = ['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
          'backbone_weights=None', 'max_steps=2', 'test_stride=32']


def printed_command(log):
    """The training command prepare_dataset.py's summary ends with, split as
    a shell splits it, without its `python`."""
    lines = [line for line in log.splitlines() if line.startswith('Train with: ')]
    assert len(lines) == 1, log[-2000:]
    words = shlex.split(lines[0][len('Train with: '):])
    assert words[:2] == ['python', 'train_mtl.py'], words
    return words[1:]


def _script(cwd, *args):
    result = run_python([os.path.join(ROOT, args[0]), *args[1:]], cwd=cwd, stand_in=True)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n" \
        f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_prepared_dataset_trains_tests_and_predicts(tmp_path):
    """From the three GeoTIFFs to predict.py outputs with the existing scripts,
    `dataset_name=region` and nothing else about the dataset."""
    paths = write_region(str(tmp_path / 'sources'))
    root, record, log = prepare(tmp_path, paths)
    # The command the summary prints, run where it ran, only shrunk for a CPU.
    command = printed_command(log)
    log = _script(tmp_path, *command, *[f'--set={s}' for s in SHRINK])
    assert 'done after 2 steps' in log and 'unlabelled_code 0' in log
    assert 'best weights' in log and '(by validation rmse)' in log
    sets = [f'--set={s}' for s in ['dataset_name=region', *SHRINK]]
    _script(tmp_path, 'test_dsm.py', '--max-images=1', *sets)
    with open(tmp_path / 'output' / 'region' / 'mtl' / 'metrics.json') as f:
        metrics = json.load(f)
    assert metrics['settings']['label_codes'] == [1, 2] and \
        np.isfinite(metrics['overall']['rmse'])
    name = metrics['per_image'][0]['name']
    with rasterio.open(root / 'test' / 'dsm' / f'{name}.tif') as truth, \
            rasterio.open(tmp_path / 'output' / 'region' / 'mtl' / f'{name}_height.tif') as out:
        assert (out.crs, out.transform) == (truth.crs, truth.transform)
    _script(tmp_path, 'predict.py', paths['ortho'], '--out', str(tmp_path / 'predicted'), *sets)
    with rasterio.open(paths['ortho']) as src, \
            rasterio.open(tmp_path / 'predicted' / 'ortho_height.tif') as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)


@pytest.mark.slow
def test_a_region_without_labels_trains_without_validation_and_tests(tmp_path):
    """Prepared without --labels, the region trains with the printed command,
    no semantics head trained or scored. Without validation (as typed:
    train_valid_flag = False) the run keeps its last weights as
    last.weights.h5, where test_dsm.py and predict.py find them by default."""
    paths = write_region(str(tmp_path / 'sources'))
    del paths['labels']
    root, record, log = prepare(tmp_path, paths)
    assert record['settings'] == dict(layout='split_folders', cropSize=64, sem_flag=False)
    assert not any((root / split / 'sem').exists() for split in ('train', 'valid', 'test'))
    # Asking for the semantics head anyway: the error names the folder and the fix.
    settings.apply([f'shortcut_path={root.parent}', 'dataset_name=region'])
    assert config.sem_flag is False
    settings.apply(['sem_flag=True'])
    with pytest.raises(DatasetError, match=r"^Missing train/sem folder: .*set sem_flag=False"):
        find_split(config, 'train')
    command = printed_command(log)
    shrink = [f'--set={s}' for s in SHRINK]
    log = _script(tmp_path, *command, *shrink, '--set=train_valid_flag=False')
    kept = './checkpoints/region/mtl/last.weights.h5'
    assert f"last weights    {kept} (no validation, train_valid_flag = False" in log
    assert f"done after 2 steps; last weights: {kept}" in log
    assert 'best weights' not in log and 'by validation' not in log
    runs = tmp_path / 'checkpoints' / 'region' / 'mtl'
    assert sorted(p.name for p in runs.glob('*.weights.h5*')) == \
        ['last.weights.h5', 'last.weights.h5.json']
    with open(runs / 'last.weights.h5.json') as f:
        saved = json.load(f)
    assert saved['kept'] == 'last' and saved['settings']['sem_flag'] is False
    _script(tmp_path, 'test_dsm.py', *command[1:], '--max-images=1', *shrink)
    with open(tmp_path / 'output' / 'region' / 'mtl' / 'metrics.json') as f:
        metrics = json.load(f)
    assert metrics['checkpoints']['mtl'] == kept
    assert metrics['overall']['miou'] is None and np.isfinite(metrics['overall']['rmse'])
    assert not list((tmp_path / 'output' / 'region' / 'mtl').glob('*_sem.tif'))
    log = _script(tmp_path, 'predict.py', paths['ortho'], '--out', str(tmp_path / 'predicted'),
                  *command[1:], *shrink)
    assert sorted(os.listdir(tmp_path / 'predicted')) == ['ortho_height.tif',
                                                         'ortho_preview.png']


@pytest.mark.parametrize('seed', range(5))
def test_split_blocks_never_touch_and_no_split_is_empty(seed):
    """On a 3 x 3 grid of one-tile blocks most draws leave a split empty once
    the touching tiles go; the split keeps drawing until none is."""
    from utils.gis import regions
    kept = [(r, c) for r in range(3) for c in range(3)]
    split, dropped = regions.split_tiles(kept, 1, (0.8, 0.1, 0.1), seed)
    assert set(split.values()) == {'train', 'valid', 'test'}
    assert sorted(list(split) + dropped) == kept
    for (r, c), s in split.items():
        for (r2, c2), s2 in split.items():
            if s != s2:
                assert max(abs(r - r2), abs(c - c2)) > 1
    with pytest.raises(Exception, match='at least 3'):
        regions.split_tiles([(0, 0), (0, 1)], 1, (0.8, 0.1, 0.1), seed)


def test_preparing_loads_no_tensorflow(tmp_path):
    """TensorFlow is not prepare_dataset.py's at all."""
    paths = write_region(str(tmp_path / 'sources'))
    argv = ['prepare_dataset.py', 'region', '--images', paths['ortho'], '--ndsm', paths['dsm'],
            '--tile', str(TILE), '--set', f"shortcut_path={tmp_path / 'datasets'}"]
    code = ("import runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            "try:\n"
            "    runpy.run_path('prepare_dataset.py', run_name='__main__')\n"
            "except SystemExit as end:\n"
            "    print(end.code, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    result = run_python(['-c', code], timeout=300)
    assert result.stdout.split()[-3:] == ['0', 'False', 'False'], result.stderr[-2000:]


def test_a_setting_that_breaks_its_rule_exits_1():
    result = run_python(['prepare_dataset.py', 'region', '--images', 'o.tif', '--ndsm', 'n.tif',
                         '--set', 'seed=-1'], timeout=120)
    assert result.returncode == 1 and result.stderr == \
        'error: seed = -1: use a whole number >= 0\n'


def test_a_folder_of_orthophoto_tiles_is_one_mosaic(tmp_path):
    """The orthophoto cut into two files in a folder gives the tiles the whole file gives."""
    paths = write_region(str(tmp_path / 'sources'))
    folder = tmp_path / 'ortho_tiles'
    folder.mkdir()
    with rasterio.open(paths['ortho']) as src:
        for name, cols in (('a.tif', (0, 200)), ('b.tif', (200, src.width))):
            window = rasterio.windows.Window(cols[0], 0, cols[1] - cols[0], src.height)
            profile = dict(src.profile, width=window.width,
                           transform=src.window_transform(window))
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                with rasterio.open(folder / name, 'w', **profile) as out:
                    out.write(src.read(window=window))
                    out.write_mask(src.dataset_mask(window=window))
    whole, _, _ = prepare(tmp_path / 'whole', paths)
    mosaic, record, _ = prepare(tmp_path / 'mosaic', dict(paths, ortho=str(folder)))
    assert [os.path.basename(p) for p in record['sources']['images']] == ['a.tif', 'b.tif']
    for split in ('train', 'valid', 'test'):
        names = sorted(os.listdir(whole / split / 'rgb'))
        assert names == sorted(os.listdir(mosaic / split / 'rgb'))
        for name in names:
            with rasterio.open(whole / split / 'rgb' / name) as a, \
                    rasterio.open(mosaic / split / 'rgb' / name) as b:
                np.testing.assert_array_equal(a.read(), b.read())
                np.testing.assert_array_equal(a.dataset_mask(), b.dataset_mask())
