"""Rasters of any CRS, resolution and tiling read onto one grid, a window at
a time, through GDAL's warped VRTs (prepare_dataset.py's inputs).

Each role has its resampling: images bilinear (averaged where the source is
finer than the grid), surface heights averaged (area-weighted, nodata left
out), terrain heights bilinear (averaged where finer: terrain is smooth, and
the blocks an average makes of a coarser DTM would show in the nDSM as
steps), labels nearest (the most frequent class where finer). Several files
of one role form a mosaic: where they overlap, the first file listed with a
valid pixel wins. A pixel is valid where GDAL's mask of the warped file says
so (the file's mask, alpha or nodata, and its extent)."""
import math

import numpy as np
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from utils.errors import DatasetError
from utils.geo.files import open_raster

# Cap on GDAL's block cache while warping: its default (5% of the RAM) would
# grow with the area read.
GDAL_CACHE_MB = 64


def bounds_in(src, crs):
    """The bounds of an open dataset in `crs`; an error naming a file without a CRS."""
    if src.crs is None:
        raise DatasetError(f"{src.name} has no coordinate reference system. Fix: assign its "
                           f"CRS (e.g. gdal_edit.py -a_srs EPSG:25832 {src.name}).")
    return transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)


def union(boxes):
    """The box (left, bottom, right, top) holding every box."""
    boxes = list(boxes)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


class Source:
    """One input file of `role` ('image', 'dsm', 'ndsm', 'dtm', 'labels'),
    warped onto the north-up `grid`; reads windows of it."""

    def __init__(self, path, role, grid, bands=None):
        self.path, self.role = path, role
        self.src = src = open_raster(path, role)
        box = bounds_in(src, grid.crs)
        self.pixels = grid.pixels(box)
        # The source's pixel size in grid units: its area over its pixels.
        self.res = math.sqrt((box[2] - box[0]) * (box[3] - box[1]) / (src.width * src.height))
        finer = self.res < grid.res[0] * (1 - 1e-6)
        if role == 'labels':
            resampling = Resampling.mode if finer else Resampling.nearest
        elif role in ('dsm', 'ndsm'):
            resampling = Resampling.average
        else:
            resampling = Resampling.average if finer else Resampling.bilinear
        self.resampling = resampling
        self.bands = bands or [1]
        if max(self.bands) > src.count:
            raise DatasetError(f"{path} has {src.count} band(s); --bands asks for "
                               f"{','.join(map(str, self.bands))}. Fix: choose bands 1.."
                               f"{src.count}.")
        extra = dict(nodata=src.nodata) if src.nodata is not None else dict(add_alpha=True)
        self.vrt = WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                             height=grid.height, resampling=resampling, **extra)

    def covers(self, window):
        c0, r0, c1, r1 = self.pixels
        return c0 < window.col_off + window.width and c1 > window.col_off and \
            r0 < window.row_off + window.height and r1 > window.row_off

    def read(self, window, dtype):
        """(values [bands, h, w] of `dtype`, valid [h, w])."""
        values = self.vrt.read(self.bands, window=window, out_dtype=dtype)
        return values, self.vrt.dataset_mask(window=window) != 0

    def close(self):
        self.vrt.close()
        self.src.close()


class Layer:
    """The files of one role as one mosaic on the grid."""

    def __init__(self, paths, role, grid, bands=None):
        self.role = role
        self.sources = []
        try:
            for path in paths:
                self.sources.append(Source(path, role, grid, bands))
        except BaseException:
            self.close()
            raise
        first = self.sources[0].src
        self.dtype = np.dtype(first.dtypes[0]) if role in ('image', 'labels') else \
            np.dtype(np.float32)
        self.nodata = first.nodata

    def read(self, window, fill=0):
        """(values [bands, h, w], valid [h, w]); `fill` where no file is valid."""
        shape = (len(self.sources[0].bands), int(window.height), int(window.width))
        out = np.full(shape, fill, self.dtype)
        valid = np.zeros(shape[1:], bool)
        for source in self.sources:
            if valid.all():
                break
            if not source.covers(window):
                continue
            values, ok = source.read(window, self.dtype)
            take = ok & ~valid
            out[:, take] = values[:, take]
            valid |= take
        return out, valid

    def close(self):
        for source in self.sources:
            source.close()
