"""Reading one sample of a dataset: its image, heights and labels as the
losses and metrics take them, from the files its layout found.

  image   float32 HxWx3 (HxWx4 with SAR) in [0, 1], read by utils/geo/image.Image:
          scaled by cfg.image_scale (default: uint8 / 255, uint16 / 65535 or
          the declared bit depth, floats within [0, 1] kept, other types min-max
          scaled per image); a palette expanded through its colour map. Channels
          after the third (alpha, NIR) are dropped. Pixels the file marks invalid
          (GDAL mask, alpha 0, nodata) get NaN heights. A multi-band SAR file is
          averaged into one channel, then scaled like a float image.
  height  float32 HxW metres (Vaihingen: the 8-bit nDSM value as stored). Nodata
          becomes NaN: non-finite values, the file's nodata value, its GDAL
          mask, and values below -1000 (e.g. -9999, -32768, -3.4e38). DFC2018
          instead applies its published outlier rule to DSM and DEM (see
          correct_dfc2018).
  labels  int32 HxW class indices (utils/data/labels.py).
Every file is read through utils/geo (GDAL).
"""
from typing import NamedTuple

import numpy as np

from utils.data.labels import read_labels, unlabelled_index
from utils.errors import DatasetError
from utils.geo.image import Image
from utils.geo.read import read_raw, single_channel

NODATA_BELOW = -1000.0      # heights below this are nodata (DFC2018: outliers)
DFC2018_OUTLIER = 1000.0


class Loaded(NamedTuple):
    image: np.ndarray           # float32 HxWxC in [0, 1]
    height: np.ndarray          # float32 HxW, NaN where nodata
    labels: np.ndarray | None   # int32 HxW class indices


def image_channels(cfg):
    """Channels of a loaded image: RGB, and the SAR channel with sar_mode."""
    return 4 if cfg.sar_mode else 3


def sar_to_unit(array):
    """The SAR channel (read_sar: its bands averaged) scaled to float32 [0, 1]
    as image files are with image_scale = 'minmax' for floats outside [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.float32)
    low, high = values[finite].min(), values[finite].max()
    if not (np.issubdtype(array.dtype, np.floating) and low >= 0 and high <= 1):
        values = (values - low) / (high - low) if high > low else values - low
    return np.where(finite, values, 0).astype(np.float32)


def load_image(cfg, path):
    """(float32 HxWx3 in [0, 1] scaled by cfg.image_scale, bool HxW valid):
    the first three bands (a palette expanded), and where the file's mask,
    alpha, nodata value and finite values say the pixels are valid."""
    with Image(path, None, 3, cfg.image_scale) as image:
        return image.read()


def read_image(cfg, path):
    """float32 HxWx3 in [0, 1] (invalid pixels 0)."""
    return load_image(cfg, path)[0]


def read_sar(path):
    """float32 HxW in [0, 1]; several bands are averaged."""
    array, _ = read_raw(path)
    if array.ndim == 3:
        array = array.astype(np.float64).mean(axis=-1) if array.shape[2] > 1 else array[..., 0]
    return sar_to_unit(array)


def read_height(path, nodata_to_nan=True):
    """float32 HxW heights; nodata -> NaN unless `nodata_to_nan` is False
    (NaN where the file's GDAL mask is 0 either way)."""
    array, nodata, mask = read_raw(path, mask=True)
    height = single_channel(array, path, 'height map').astype(np.float32)
    if nodata_to_nan:
        bad = ~np.isfinite(height) | (height < NODATA_BELOW)
        if nodata is not None:
            bad |= height == np.float32(nodata)
        height[bad] = np.nan
    if mask is not None:
        height[~mask] = np.nan
    return height


def correct_dfc2018(values):
    """The published DFC2018 outlier rule, applied to one DSM or DEM raster.

    Values > 1000 become the raster's max and values < -1000 its min, where
    max and min are taken over the remaining (in-range, non-NaN) values: the
    max over all values would be the outlier itself. NaN stays NaN; a raster
    with no in-range value becomes all NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    in_range = (values >= -DFC2018_OUTLIER) & (values <= DFC2018_OUTLIER)
    if not in_range.any():
        return np.full(values.shape, np.nan, np.float32)
    fixed = values.copy()
    fixed[values > DFC2018_OUTLIER] = values[in_range].max()
    fixed[values < -DFC2018_OUTLIER] = values[in_range].min()
    return fixed.astype(np.float32)


def load_sample(cfg, sample):
    """Decode one sample: Loaded(image, height, labels). Pixels the image
    marks invalid (mask, alpha, nodata) get NaN heights and the unlabelled
    class index, so every loss and metric leaves them out."""
    image, valid = load_image(cfg, sample.image)
    sizes = {sample.image: image.shape[:2]}
    if sample.sar:
        sar = read_sar(sample.sar)
        sizes[sample.sar] = sar.shape
        _check_sizes(sizes)
        image = np.concatenate([image, sar[..., None]], axis=-1)
    if sample.dem:      # DFC2018: height = DSM - DEM after the outlier rule on each
        dsm = read_height(sample.height, nodata_to_nan=False)
        dem = read_height(sample.dem, nodata_to_nan=False)
        _check_sizes({sample.height: dsm.shape, sample.dem: dem.shape})
        height = correct_dfc2018(dsm) - correct_dfc2018(dem)
    else:
        height = read_height(sample.height)
    sizes[sample.height] = height.shape
    labels = None
    if sample.labels:
        labels = read_labels(cfg, sample.labels)
        sizes[sample.labels] = labels.shape
    _check_sizes(sizes)
    if not valid.all():
        height = np.where(valid, height, np.float32(np.nan))
        if labels is not None:
            labels = np.where(valid, labels, np.int32(unlabelled_index(cfg)))
    return Loaded(image, height, labels)


def _check_sizes(sizes):
    if len({tuple(s) for s in sizes.values()}) > 1:
        listed = ', '.join(f"{p} is {s[1]}x{s[0]}" for p, s in sizes.items())
        raise DatasetError(f"Files of one sample differ in size: {listed} (width x height). "
                           f"Fix: resample them to the same grid.")
