"""utils/geo/write.py's CogWriter: Cloud Optimized GeoTIFFs as GDAL (rasterio)
reads them and as rio-cogeo's validator (the checks of GDAL's
validate_cloud_optimized_geotiff) judges them; values against the arrays
written and overviews against hand-computed block means."""
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_validate

from utils.geo.classes import ClassMap
from utils.geo.grid import Grid
from utils.geo.read import read_grid
from utils.geo.write import CogWriter, write_cog

CRS = rasterio.crs.CRS.from_epsg(32632)
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)
NODATA = -9999.0


def assert_valid_cog(path):
    """rio-cogeo's verdict: tiled, overviews, IFDs before the data, in order."""
    valid, errors, problems = cog_validate(str(path), quiet=True)
    assert valid and not errors, errors
    assert not problems, problems


def _write(path, data, rows=97, **kwargs):
    kwargs = dict(dict(grid=Grid(data.shape[0], data.shape[1], CRS, TRANSFORM)), **kwargs)
    writer = CogWriter(path, data.shape, data.dtype, **kwargs)
    for r0 in range(0, len(data), rows):        # bands unaligned with the tiles
        writer.write(data[r0:r0 + rows])
    writer.close()
    return str(path)


def _heights(shape=(1200, 1104)):
    data = np.random.default_rng(0).random(shape).astype(np.float32) * 30
    data[100:301, 50:61] = NODATA       # whole 2 x 2 blocks and split ones
    return data


def test_heights_as_gdal_reads_them(tmp_path):
    data = _heights()
    path = _write(tmp_path / 'h.tif', data, nodata=NODATA, metadata={'NOTE': 'a <b> "c"'})
    assert_valid_cog(path)
    with rasterio.open(path) as src:
        assert src.crs == CRS and src.transform == TRANSFORM
        assert src.nodata == NODATA and src.dtypes == ('float32',)
        assert src.block_shapes == [(512, 512)]
        # halved until one 512 px tile holds the image
        assert src.overviews(1) == [2, 4]
        assert src.tags()['NOTE'] == 'a <b> "c"'
        assert src.profile['compress'] == 'deflate'
        assert src.tags(ns='IMAGE_STRUCTURE')['PREDICTOR'] == '3'     # floating point
        np.testing.assert_array_equal(src.read(1), data)
    # the first overview: the mean of each 2 x 2 block's valid pixels
    blocks = np.where(data == NODATA, np.nan, data).reshape(600, 2, 552, 2)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)     # all-nodata blocks
        expected = np.nanmean(blocks.astype(np.float64), (1, 3))
    expected = np.where(np.isnan(expected), NODATA, expected)
    with rasterio.open(path, overview_level=0) as level:
        assert level.shape == (600, 552)
        got = level.read(1)
    assert (got == NODATA).sum() == (expected == NODATA).sum() > 0
    # a mean of <= 4 float32 values below 30, rounded to float32: a few ulp
    np.testing.assert_allclose(got, expected, rtol=0, atol=4 * np.spacing(np.float32(30)))
    with rasterio.open(path, overview_level=1) as level:
        assert level.shape == (300, 276)


def test_class_map_with_colour_table(tmp_path):
    classes = ClassMap([(255, 255, 255), (0, 0, 255), (0, 255, 255),
                        (0, 255, 0), (255, 255, 0), (255, 0, 0)])
    assert list(classes.values) == list(range(6)) and classes.nodata == 255
    data = np.random.default_rng(1).integers(0, 6, (700, 1000)).astype(np.uint8)
    data[:40, :70] = 255
    path = _write(tmp_path / 'c.tif', data, nodata=255, resampling='nearest',
                  colormap=classes.colormap)
    assert_valid_cog(path)
    with rasterio.open(path) as src:
        assert src.count == 1 and src.nodata == 255
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
        table = src.colormap(1)
        assert [table[i][:3] for i in range(6)] == [(255, 255, 255), (0, 0, 255), (0, 255, 255),
                                                    (0, 255, 0), (255, 255, 0), (255, 0, 0)]
        assert src.tags(ns='IMAGE_STRUCTURE')['PREDICTOR'] == '2'     # integers
        assert src.overviews(1) == [2]
        np.testing.assert_array_equal(src.read(1), data)
    with rasterio.open(path, overview_level=0) as level:
        np.testing.assert_array_equal(level.read(1), data[::2, ::2])    # nearest: no blends


def test_integer_codes_keep_their_values_and_get_colours():
    classes = ClassMap([2, 5, 6, 9, 17, 65])
    assert list(classes.values) == [2, 5, 6, 9, 17, 65] and classes.nodata == 255
    table = classes.colormap
    assert len({tuple(table[v]) for v in classes.values}) == 6     # distinct colours
    assert classes.dtype == np.uint8


@pytest.mark.parametrize('shape,dtype,resampling', [
    ((530, 600, 3), np.float32, 'average'),       # normals: three float bands
    ((300, 520, 3), np.uint8, 'nearest'),
    ((40, 30), np.int16, 'mode'),                 # one tile: no overview
])
def test_other_layouts_read_back(tmp_path, shape, dtype, resampling):
    data = (np.random.default_rng(2).random(shape) * 200).astype(dtype)
    path = _write(tmp_path / 'x.tif', data, rows=64, resampling=resampling)
    assert_valid_cog(path)
    with rasterio.open(path) as src:
        got = src.read()
        assert len(src.overviews(1)) == (1 if max(shape[:2]) > 512 else 0)
    np.testing.assert_array_equal(np.moveaxis(got, 0, -1).reshape(shape), data)


def test_georeferencing_copied_from_a_geotiff_and_none_from_a_png(tmp_path):
    source = tmp_path / 'in.tif'
    with rasterio.open(source, 'w', driver='GTiff', height=8, width=9, count=1, dtype='uint8',
                       crs=CRS, transform=TRANSFORM) as dst:
        dst.write(np.zeros((1, 8, 9), np.uint8))
    grid = read_grid(source)
    assert (grid.crs, grid.transform) == (CRS, TRANSFORM)
    import cv2
    cv2.imwrite(str(tmp_path / 'in.png'), np.zeros((8, 9, 3), np.uint8))
    grid = read_grid(tmp_path / 'in.png')
    assert grid.crs is None and not grid.georeferenced      # no transform declared
    write_cog(tmp_path / 'out.tif', np.ones((8, 9), np.float32), grid=grid)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / 'out.tif') as src:
            assert src.crs is None and src.transform.is_identity
            np.testing.assert_array_equal(src.read(1), 1)


def test_abort_removes_the_files_and_an_incomplete_image_is_an_error(tmp_path):
    writer = CogWriter(tmp_path / 'a.tif', (600, 40), np.float32)
    writer.write(np.zeros((100, 40), np.float32))
    with pytest.raises(ValueError, match='got 100 of 600 rows'):
        writer.close()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    # an error inside `with`: nothing at the final path, nothing beside it
    with pytest.raises(RuntimeError, match='device lost'):
        with CogWriter(tmp_path / 'b.tif', (600, 40), np.float32) as writer:
            writer.write(np.zeros((550, 40), np.float32))    # a block of rows written
            raise RuntimeError('device lost')
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_older_output(tmp_path):
    path = tmp_path / 'a.tif'
    write_cog(path, np.full((30, 20), 7, np.float32), grid=Grid(30, 20, CRS, TRANSFORM))
    with pytest.raises(ValueError, match='got 10 of 30 rows'):
        with CogWriter(path, (30, 20), np.float32, grid=Grid(30, 20, CRS)) as writer:
            writer.write(np.zeros((10, 20), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ['a.tif']
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(1), 7)
