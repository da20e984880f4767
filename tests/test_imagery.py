"""Image files as GDAL writes them (through rasterio), read by utils/geo
and utils/data: masks, bit depths, palettes, impossible nodata
values, damaged files. The reference is what GDAL itself reads from the same
file, or the same pixels written as plain 8-bit RGB."""
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import config
from utils import settings
from utils.data.checks import check_training_splits
from utils.data.layouts import find_split
from utils.data.samples import load_sample, read_height, read_image
from utils.errors import DatasetError, ImageryWarning
from utils.geo.image import Image
from utils.geo.read import read_raw

H, W = 70, 90
PROFILE = dict(driver='GTiff', height=H, width=W, crs='EPSG:32632',
               transform=from_origin(500000, 5000000, 0.5, 0.5))


def _levels(seed=0, bands=3):
    """[bands, H, W] uint8 of the 16 levels k * 17: k / 15 is the same float32
    whether divided as k * 17 / 255 or k * 273 / 4095 (both correctly rounded)."""
    return (np.random.default_rng(seed).integers(0, 16, (bands, H, W)) * 17).astype(np.uint8)


def _write(path, bands, **profile):
    with rasterio.open(path, 'w', **dict(PROFILE, count=len(bands), dtype=bands.dtype,
                                         **profile)) as out:
        out.write(bands)
    return str(path)


def _read(path, bands=(0, 1, 2), scale='auto'):
    with Image(str(path), list(bands), len(bands), scale) as image:
        return image.read()


def _collar():
    """A no-data collar on the left and a hole, as masks of orthophotos have."""
    mask = np.full((H, W), 255, np.uint8)
    mask[:, :13] = 0
    mask[30:40, 50:61] = 0
    return mask


def _gdal(path):
    with rasterio.open(path) as source:
        return source.read().transpose(1, 2, 0), source.dataset_mask() != 0


def test_internal_mask_of_a_jpeg_cog_is_where_gdal_says(tmp_path):
    """A COG with JPEG (YCbCr 4:2:0) tiles and GDAL's internal mask: the valid
    pixels and the decoded colours are exactly GDAL's."""
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(40, 200, (3, H // 5 + 1, W // 5 + 1)),
                     np.ones((5, 5)))[:, :H, :W].astype(np.uint8)
    path = str(tmp_path / 'ortho_cog.tif')
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, 'w', **dict(PROFILE, driver='COG', count=3, dtype='uint8',
                                             compress='JPEG')) as out:
            out.write(smooth)
            out.write_mask(_collar())
    with rasterio.open(path) as source:      # really an internal mask, no sidecar
        assert source.tags(ns='IMAGE_STRUCTURE')['COMPRESSION'] == 'YCbCr JPEG'
        assert source.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
    assert not (tmp_path / 'ortho_cog.tif.msk').exists()
    image, valid = _read(path)
    reference, gdal_valid = _gdal(path)
    np.testing.assert_array_equal(valid, gdal_valid)
    assert (~valid).sum() == (_collar() == 0).sum()
    assert (image[~valid] == 0).all()
    np.testing.assert_array_equal(image[valid], reference[valid] / np.float32(255))


def test_msk_sidecar_marks_invalid_pixels_and_heights(tmp_path):
    levels = _levels()
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False):
        with rasterio.open(tmp_path / 'rgb.tif', 'w',
                           **dict(PROFILE, count=3, dtype='uint8')) as out:
            out.write(levels)
            out.write_mask(_collar())
        with rasterio.open(tmp_path / 'dsm.tif', 'w',
                           **dict(PROFILE, count=1, dtype='float32')) as out:
            out.write(np.full((1, H, W), 7.5, np.float32))
            out.write_mask(_collar())
    assert (tmp_path / 'rgb.tif.msk').exists()
    image, valid = _read(tmp_path / 'rgb.tif')
    np.testing.assert_array_equal(valid, _collar() != 0)
    np.testing.assert_array_equal(image[valid],
                                  levels.transpose(1, 2, 0)[valid] / np.float32(255))
    height = read_height(str(tmp_path / 'dsm.tif'))
    np.testing.assert_array_equal(np.isnan(height), _collar() == 0)


def test_training_sample_leaves_out_masked_image_pixels(tmp_path):
    """A masked orthophoto in a training split: its invalid pixels get NaN
    heights, so the loss mask and every metric leave them out."""
    root = tmp_path / 'MyCity' / 'train'
    for folder in ('rgb', 'dsm'):
        (root / folder).mkdir(parents=True)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(root / 'rgb' / 'a.tif', 'w', compress='JPEG',
                           **dict(PROFILE, count=3, dtype='uint8')) as out:
            out.write(_levels())
            out.write_mask(_collar())
    _write(root / 'dsm' / 'a.tif', np.full((1, H, W), 3.0, np.float32))
    (root / 'sem').mkdir()
    _write(root / 'sem' / 'a.tif', np.ones((1, H, W), np.uint8))
    settings.apply(['dataset_name=MyCity', f'shortcut_path={tmp_path}'])
    loaded = load_sample(config, find_split(config, 'train')[0])
    np.testing.assert_array_equal(np.isnan(loaded.height), _collar() == 0)
    assert (loaded.image[_collar() == 0] == 0).all()
    # class 1 where valid, the unlabelled index (no class: no loss) elsewhere
    np.testing.assert_array_equal(loaded.labels, np.where(_collar() == 0, 2, 1))


def test_declared_12_bit_bands_scale_like_8_bit(tmp_path):
    """Band-interleaved RGBI with NBITS=12 (BitsPerSample 12): the values /
    4095, bit for bit the same as the 8-bit file of the same levels / 255."""
    levels = _levels(bands=4)
    eight = _write(tmp_path / 'rgb8.tif', levels[:3])
    twelve = _write(tmp_path / 'rgbi12.tif', (levels.astype(np.uint16) // 17 * 273),
                    nbits=12, interleave='band')
    with rasterio.open(twelve) as source:
        assert source.tags(1, ns='IMAGE_STRUCTURE')['NBITS'] == '12'
    with warnings.catch_warnings():
        warnings.simplefilter('error')      # declared: nothing to warn about
        image12, _ = _read(twelve)
    image8, _ = _read(eight)
    np.testing.assert_array_equal(image12, image8)
    nir, _ = _read(twelve, bands=(3, 0, 1))
    np.testing.assert_array_equal(nir[..., 0], levels[3] / np.float32(255))


@pytest.mark.parametrize('bits', [11, 12])
def test_undeclared_11_and_12_bit_values_warn_with_the_setting(tmp_path, bits):
    levels = _levels()
    top = 2 ** bits - 1
    values = (levels.astype(np.uint32) * top // 255).astype(np.uint16)
    path = _write(tmp_path / 'u16.tif', values)
    with pytest.warns(ImageryWarning) as caught:
        image, _ = _read(path)
    [message] = [str(w.message) for w in caught if w.category is ImageryWarning]
    assert path in message and f'{values.min()}..{values.max()}' in message
    assert f'image_scale = {top}' in message
    np.testing.assert_array_equal(image, values.transpose(1, 2, 0) / np.float32(65535))
    with warnings.catch_warnings():
        warnings.simplefilter('error')      # the setting decides: no warning
        fixed, _ = _read(path, scale=top)
    np.testing.assert_array_equal(fixed, values.transpose(1, 2, 0) / np.float32(top))


def test_full_range_uint16_does_not_warn(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (3, H, W)).astype(np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        image, _ = _read(_write(tmp_path / 'u16.tif', values))
    np.testing.assert_array_equal(image, values.transpose(1, 2, 0) / np.float32(65535))


def test_palette_image_is_expanded_through_its_colour_map(tmp_path):
    colours = {0: (255, 0, 0, 255), 1: (0, 200, 0, 255), 2: (0, 0, 255, 255),
               3: (250, 250, 250, 255)}
    indices = np.random.default_rng(2).integers(0, 4, (1, H, W)).astype(np.uint8)
    path = str(tmp_path / 'palette.tif')
    with rasterio.open(path, 'w', photometric='PALETTE',
                       **dict(PROFILE, count=1, dtype='uint8')) as out:
        out.write(indices)
        out.write_colormap(1, colours)
    with rasterio.open(path) as source:    # GDAL's colour table, as it reads it
        table = np.array([source.colormap(1)[i][:3] for i in range(4)], np.uint8)
    image, valid = _read(path)
    assert valid.all()
    np.testing.assert_array_equal(image, table[indices[0]] / np.float32(255))
    # a label file is a palette image of class codes: its indices stay indices
    np.testing.assert_array_equal(read_raw(path)[0], indices[0])


def test_nodata_the_type_cannot_hold_is_ignored(tmp_path):
    """uint8 with GDAL_NODATA -1 (GDAL ignores it): a white roof stays valid."""
    levels = _levels()
    levels[:, 10:20, 10:20] = 255
    path = _write(tmp_path / 'white.tif', levels, nodata=255)
    data = open(path, 'rb').read()
    # the tag's ASCII value '255' becomes '-1' (the levels k * 17 never hold
    # the bytes of '255\0', and the file is uncompressed)
    assert data.count(b'255\x00') == 1
    open(path, 'wb').write(data.replace(b'255\x00', b'-1\x00\x00'))
    with rasterio.open(path) as source:
        assert source.nodata is None and (source.dataset_mask() == 255).all()
    image, valid = _read(path)
    assert valid.all()
    np.testing.assert_array_equal(image[10:20, 10:20], 1.0)
    assert read_raw(path)[1] is None


def test_representable_nodata_still_marks_pixels(tmp_path):
    levels = _levels()
    levels[:, 5, :] = 0
    image, valid = _read(_write(tmp_path / 'nd.tif', levels, nodata=0))
    np.testing.assert_array_equal(valid, ~(levels == 0).all(0))


@pytest.mark.parametrize('damage', ['truncated', 'not a tiff'])
def test_damaged_file_is_one_error_naming_it(tmp_path, damage):
    path = _write(tmp_path / 'good.tif', _levels())
    data = open(path, 'rb').read()
    bad = tmp_path / 'bad.tif'
    bad.write_bytes(data[:len(data) // 3] if damage == 'truncated' else b'II*\x00 broken')
    with pytest.raises(DatasetError, match=f'Cannot read {bad}') as err:
        _read(bad)
    assert '\n' not in str(err.value)


def test_setting_image_scale_reaches_the_training_images(tmp_path):
    values = (_levels().astype(np.uint16) // 17 * 273)
    path = _write(tmp_path / 'u16.tif', values)
    settings.apply(['image_scale=4095'])
    assert config.image_scale == 4095
    np.testing.assert_array_equal(read_image(config, path),
                                  values.transpose(1, 2, 0) / np.float32(4095))
    settings.apply(['image_scale=minmax'])
    low, high = values.min(), values.max()
    np.testing.assert_allclose(read_image(config, path),
                               (values.transpose(1, 2, 0) - low) / (high - low), atol=1e-7)


def test_best_weights_record_how_training_images_were_fed(tmp_path):
    """check_training_splits measures the training images' bands; the
    weights' .json records them with the scale and the band order."""
    import json
    import keras
    from utils.model import weights
    root = tmp_path / 'MyCity'
    rng = np.random.default_rng(3)
    images = {}
    for split in ('train', 'valid'):
        for folder in ('rgb', 'dsm'):
            (root / split / folder).mkdir(parents=True)
        images[split] = rng.integers(0, 256, (3, H, W)).astype(np.uint8)
        _write(root / split / 'rgb' / 'a.tif', images[split])
        heights = np.full((1, H, W), 2.0, np.float32)
        heights[0, :10] = np.nan        # left out of the statistics, like the losses
        _write(root / split / 'dsm' / 'a.tif', heights)
    settings.apply(['dataset_name=MyCity', f'shortcut_path={tmp_path}', 'sem_flag=False',
                    'cropSize=32', 'image_scale=minmax'])
    statistics = check_training_splits(config).imagery()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    path = str(tmp_path / 'm.weights.h5')
    weights.save(model, path, 'mtl', config, imagery=statistics)
    with open(path + '.json') as f:
        meta = json.load(f)
    assert meta['settings']['image_scale'] == 'minmax'
    valid = images['train'][:, 10:].reshape(3, -1).astype(np.float64)
    low, high = images['train'].min(), images['train'].max()
    unit = (valid - low) / (high - low)
    assert meta['imagery']['bands'] == [1, 2, 3]
    np.testing.assert_allclose(meta['imagery']['band_mean'], unit.mean(1), atol=1e-6)
    np.testing.assert_allclose(meta['imagery']['band_spread'], unit.std(1), atol=1e-6)


def test_a_grey_training_image_is_named_with_the_fix(tmp_path):
    """Training takes the first three bands; a one-band image is the
    dataset's error, not the --bands advice predict.py gives."""
    path = _write(tmp_path / 'grey.tif', _levels(bands=1))
    with pytest.raises(DatasetError, match=f'{path}: expected a colour image with 3 '
                                           f'channels, got 1. Fix: export it as RGB.'):
        read_image(config, path)
