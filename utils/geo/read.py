"""Rasters read whole or by area, as stored: label files, height maps,
SAR bands, and the cells of a map under some footprints."""
import numpy as np

from utils.errors import DatasetError
from utils.geo.files import READ_ERRORS, open_raster, unreadable
from utils.geo.grid import Grid
from utils.geo.image import has_mask


def read_raw(path, mask=False):
    """(array channels-last, nodata value or None) of a whole raster, and with
    `mask` a third item: bool HxW, False where GDAL's mask of the dataset
    (internal, .msk, alpha) is 0, or None when it has none. A palette stays
    indices (label files are palette images of class codes)."""
    with open_raster(path) as src:
        try:
            array = np.moveaxis(src.read(), 0, -1)
            valid = src.read_masks(1) != 0 if mask and has_mask(src) else None
        except READ_ERRORS as err:
            raise unreadable(path, err) from None
        array = array[..., 0] if array.shape[2] == 1 else array
        return (array, src.nodata, valid) if mask else (array, src.nodata)


def single_channel(array, path, what):
    """HxW from HxW, HxWx1, or HxWxC with identical channels (grey saved as colour)."""
    if array.ndim == 3 and (array.shape[2] == 1 or
                            all(np.array_equal(array[..., 0], array[..., c])
                                for c in range(1, array.shape[2]))):
        array = array[..., 0]
    if array.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel {what}, got shape "
                           f"{array.shape}. Fix: export it as one band.")
    return array


def read_grid(path):
    """The Grid of a raster file."""
    with open_raster(path) as src:
        return Grid.of(src)


def read_area(path, bounds):
    """The cells of band 1 of `path` under `bounds` (left, bottom, right, top in
    the map's CRS), cells partly inside included: (float64 values with NaN where
    the file has nodata or a mask of 0, (left, bottom, right, top) of the cells
    read), or (None, None) where the map has no cell there."""
    with open_raster(path) as ds:
        grid = Grid.of(ds)
        window = grid.window_of(bounds)
        if window is None:
            return None, None
        values = ds.read(1, window=window, masked=True)
        out = np.ma.filled(values.astype(np.float64), np.nan)
        t = grid.window_transform(window)
        return out, (t.c, t.f + t.e * out.shape[0], t.c + t.a * out.shape[1], t.f)
