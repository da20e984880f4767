"""utils/cog.py: Cloud Optimized GeoTIFFs as GDAL (rasterio) reads them.

rasterio does not ship GDAL's validate_cloud_optimized_geotiff script; the
tests check the facts it checks: tiled, overviews down to one tile, the
first IFD right after the header, every IFD before any pixel data, the
overviews' IFDs in order and their tiles smallest level first (offsets as
GDAL reports them, TIFF metadata domain), and the values GDAL decodes
against the arrays written and hand-computed overviews."""
import numpy as np
import pytest
import rasterio
import tifffile

from utils import cog, raster

GEO = [(33550, 'd', 3, (0.5, 0.5, 0.0), True),
       (33922, 'd', 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
       (34735, 'H', 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632), True),
       (34737, 's', 0, 'WGS 84 / UTM zone 32N|', True)]
NODATA = -9999.0


def _write(path, data, rows=97, **kwargs):
    writer = cog.CogWriter(str(path), data.shape, data.dtype, GEO, **kwargs)
    for r0 in range(0, len(data), rows):        # bands unaligned with the tiles
        writer.write(data[r0:r0 + rows])
    writer.close()
    return str(path)


def _heights(shape=(1201, 1103)):
    data = np.random.default_rng(0).random(shape).astype(np.float32) * 30
    data[100:301, 50:61] = NODATA       # whole 2 x 2 blocks and split ones
    data[7, 9] = np.nan
    return data


def _layout_is_cloud_optimized(path, levels):
    """The validator's layout checks, on GDAL's own offsets."""
    with rasterio.open(path) as src:
        assert src.block_shapes == [(512, 512)] * src.count
        assert len(src.overviews(1)) == levels
        ifd = [int(src.get_tag_item('IFD_OFFSET', 'TIFF', bidx=1))] + [
            int(src.get_tag_item('IFD_OFFSET', 'TIFF', bidx=1, ovr=i)) for i in range(levels)]
        data = [int(src.get_tag_item('BLOCK_OFFSET_0_0', 'TIFF', bidx=1))] + [
            int(src.get_tag_item('BLOCK_OFFSET_0_0', 'TIFF', bidx=1, ovr=i))
            for i in range(levels)]
    with tifffile.TiffFile(path) as tif:
        header = 16 if tif.is_bigtiff else 8
        first_tile = min(min(page.dataoffsets) for page in
                         [tif.pages[0]] + list(tif.pages[0].pages or []))
    assert ifd[0] == header
    assert ifd == sorted(ifd) and max(ifd) < first_tile == min(data)
    assert data == sorted(data, reverse=True)      # smallest level first, the image last


def test_heights_as_gdal_reads_them(tmp_path):
    data = _heights()
    path = _write(tmp_path / 'h.tif', data, nodata=NODATA, metadata={'NOTE': 'a <b> "c"'})
    assert cog.level_shapes(*data.shape) == [(1201, 1103), (601, 552), (301, 276)]
    _layout_is_cloud_optimized(path, 2)
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32632
        assert tuple(src.transform)[:6] == (0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)
        assert src.nodata == NODATA and src.overviews(1) == [2, 4]
        assert src.tags()['NOTE'] == 'a <b> "c"'
        structure = src.tags(ns='IMAGE_STRUCTURE')
        assert structure['COMPRESSION'] == 'DEFLATE' and structure['PREDICTOR'] == '3'
        np.testing.assert_array_equal(src.read(1), data)
    # the first overview: the mean of each 2 x 2 block's valid pixels
    padded = np.full((1202, 1104), np.nan)
    padded[:1201, :1103] = np.where(data == NODATA, np.nan, data)
    blocks = padded.reshape(601, 2, 552, 2).transpose(0, 2, 1, 3).reshape(601, 552, 4)
    with np.errstate(invalid='ignore'), pytest.warns(RuntimeWarning):
        expected = np.nanmean(blocks, -1)
    expected = np.where(np.isnan(expected), NODATA, expected).astype(np.float32)
    with rasterio.open(path, overview_level=0) as level:
        got = level.read(1)
    assert (got == NODATA).sum() == (expected == NODATA).sum() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-6)    # float32 rounding of the mean


def test_class_map_with_colour_table(tmp_path):
    classes = raster.class_map([(255, 255, 255), (0, 0, 255), (0, 255, 255),
                                (0, 255, 0), (255, 255, 0), (255, 0, 0)])
    assert list(classes['values']) == list(range(6)) and classes['nodata'] == 255
    data = np.random.default_rng(1).integers(0, 6, (700, 1000)).astype(np.uint8)
    data[:40, :70] = 255
    path = _write(tmp_path / 'c.tif', data, nodata=255, overview='nearest',
                  photometric='palette', colormap=classes['colormap'])
    _layout_is_cloud_optimized(path, 1)
    with rasterio.open(path) as src:
        assert src.count == 1 and src.nodata == 255
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
        table = src.colormap(1)
        assert [table[i][:3] for i in range(6)] == [(255, 255, 255), (0, 0, 255), (0, 255, 255),
                                                    (0, 255, 0), (255, 255, 0), (255, 0, 0)]
        assert src.tags(ns='IMAGE_STRUCTURE')['PREDICTOR'] == '2'
        np.testing.assert_array_equal(src.read(1), data)
    with rasterio.open(path, overview_level=0) as level:
        np.testing.assert_array_equal(level.read(1), data[::2, ::2])    # nearest: no blends


def test_integer_codes_keep_their_values_and_get_colours():
    classes = raster.class_map([2, 5, 6, 9, 17, 65])
    assert list(classes['values']) == [2, 5, 6, 9, 17, 65] and classes['nodata'] == 255
    table = classes['colormap']
    assert len({tuple(table[v]) for v in classes['values']}) == 6     # distinct colours
    assert classes['dtype'] == np.uint8


@pytest.mark.parametrize('shape,dtype,photometric', [
    ((530, 600, 3), np.float32, 'minisblack'),      # normals: three float bands
    ((300, 520, 3), np.uint8, 'rgb'),
    ((40, 30), np.int16, 'minisblack'),              # one tile: no overview
])
def test_other_layouts_read_back(tmp_path, shape, dtype, photometric):
    data = (np.random.default_rng(2).random(shape) * 200).astype(dtype)
    path = _write(tmp_path / 'x.tif', data, rows=64, photometric=photometric,
                  overview='nearest' if dtype != np.float32 else 'average')
    with rasterio.open(path) as src:
        got = src.read()
        assert len(src.overviews(1)) == (1 if max(shape[:2]) > 512 else 0)
    np.testing.assert_array_equal(np.moveaxis(got, 0, -1).reshape(shape), data)


def test_bigtiff_layout(tmp_path):
    data = _heights((600, 540))
    path = _write(tmp_path / 'big.tif', data, nodata=NODATA, bigtiff=True)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
    _layout_is_cloud_optimized(path, 1)
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(1), data)


def test_abort_removes_the_file_and_an_incomplete_image_is_an_error(tmp_path):
    writer = cog.CogWriter(str(tmp_path / 'a.tif'), (600, 40), np.float32)
    writer.write(np.zeros((100, 40), np.float32))
    with pytest.raises(ValueError, match='got 100 of 600 rows'):
        writer.close()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
