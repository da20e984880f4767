"""Orthophotos and LiDAR rasters of one region on one grid, cut into tiles.

Used by prepare_dataset.py; files are opened by utils/raster.py (any raster
GDAL opens, local or remote). Each input file is read through a GDAL warped
VRT onto the target grid, one tile window at a time, so memory follows the
tile, not the area:

  image    bilinear; averaged where the source is finer than the grid
  dsm      averaged (area-weighted, nodata left out)
  ndsm     averaged
  dtm      bilinear; averaged where the source is finer than the grid
           (terrain is smooth: the blocks an average makes of a coarser DTM
           would show in the nDSM as steps)
  labels   nearest; mode where the source is finer than the grid

Several files of one role form a mosaic: where they overlap, the first
file listed with a valid pixel wins. A pixel is valid where GDAL's mask of
the warped file says so (the file's mask, alpha or nodata, and its extent).

The split is by spatial blocks of tiles: blocks are drawn at random (seeded)
for test, valid and train, and a tile touching a tile of another split,
even at a corner, is dropped (test wins over valid, valid over train), so no
crop of one split sees the ground of another.
"""
import dataclasses
import math
import os

import numpy as np
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from utils import raster
from utils.datasets import SPLITS, layout_named
from utils.errors import DatasetError

# The split_folders names utils/datasets.py expects of a dataset name matching no entry.
FOLDERS = {k: v for k, v in layout_named('split_folders').folders.items() if k != 'sar'}
# Cap on GDAL's block cache: its default (5% of the RAM) would grow with the area read.
GDAL_CACHE_MB = 64


def find_rasters(items, what):
    """The rasters named by `items` (files, addresses, or folders whose
    files GDAL opens, in name order); `what`: the option they came from."""
    return raster.find_images(items, 'raster', what)


@dataclasses.dataclass(frozen=True)
class Grid:
    """The target grid: north-up, square pixels of `gsd` in `crs`."""
    crs: object
    left: float
    top: float
    gsd: float
    width: int
    height: int

    @property
    def transform(self):
        return Affine(self.gsd, 0, self.left, 0, -self.gsd, self.top)

    def window_transform(self, window):
        return Affine(self.gsd, 0, self.left + window.col_off * self.gsd,
                      0, -self.gsd, self.top - window.row_off * self.gsd)

    def pixels(self, bounds):
        """(col0, row0, col1, row1) of `bounds` (left, bottom, right, top) on the grid."""
        left, bottom, right, top = bounds
        return ((left - self.left) / self.gsd, (self.top - top) / self.gsd,
                (right - self.left) / self.gsd, (self.top - bottom) / self.gsd)


def open_raster(path, what):
    try:
        return raster.open_raster(path)
    except DatasetError as err:
        raise DatasetError(f"{what} {err}") from None


def _bounds_in(src, crs):
    if src.crs is None:
        raise DatasetError(f"{src.name} has no coordinate reference system. Fix: assign its "
                           f"CRS (e.g. gdal_edit.py -a_srs EPSG:25832 {src.name}).")
    return transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)


def _union(boxes):
    boxes = list(boxes)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


def make_grid(images, *heights, gsd=None):
    """The grid over the area the images and every group of height files
    (DSM and DTM, or the nDSM) all cover: the first image's CRS; its pixel
    size and pixel grid, or with `gsd` that pixel size on a grid of
    multiples of it (as gdalwarp -tap)."""
    first = images[0]
    crs = first.crs
    if crs is None:
        _bounds_in(first, None)
    t = first.transform
    size = gsd or math.sqrt(abs(t.a * t.e - t.b * t.d))
    rotated = abs(t.b) > 1e-12 or abs(t.d) > 1e-12
    # The first image's own pixel grid keeps its pixels unresampled; a rotated
    # image or another pixel size snaps to multiples of the pixel size.
    origin_x, origin_y = (0.0, 0.0) if gsd or rotated else (t.c, t.f)
    boxes = [('the orthophotos', _union(_bounds_in(s, crs) for s in images))] + \
        [(f'the heights ({os.path.basename(group[0].name)} ...)',
          _union(_bounds_in(s, crs) for s in group)) for group in heights]
    left, bottom = max(b[1][0] for b in boxes), max(b[1][1] for b in boxes)
    right, top = min(b[1][2] for b in boxes), min(b[1][3] for b in boxes)
    if right <= left or top <= bottom:
        listed = '; '.join(f'{what}: {_box(box)}' for what, box in boxes)
        raise DatasetError(f"the inputs cover no common area in {crs_text(crs)} ({listed}). "
                           f"Fix: give files of the same area.")
    # Whole pixels of the chosen grid, inside the common area (a tolerance of
    # a millionth of a pixel keeps exact edges from losing a pixel to rounding).
    eps = 1e-6
    col0 = math.ceil((left - origin_x) / size - eps)
    col1 = math.floor((right - origin_x) / size + eps)
    row0 = math.ceil((origin_y - top) / size - eps)
    row1 = math.floor((origin_y - bottom) / size + eps)
    return Grid(crs, origin_x + col0 * size, origin_y - row0 * size, size,
                col1 - col0, row1 - row0)


def _box(box):
    return ', '.join(f'{v:.1f}' for v in box)


class Source:
    """One input file, warped onto the grid; reads tile windows of it."""

    def __init__(self, path, role, grid, bands=None):
        self.path, self.role = path, role
        self.src = src = open_raster(path, role)
        box = _bounds_in(src, grid.crs)
        self.pixels = grid.pixels(box)
        # The source's pixel size in grid units: its area over its pixels.
        self.res = math.sqrt((box[2] - box[0]) * (box[3] - box[1]) / (src.width * src.height))
        finer = self.res < grid.gsd * (1 - 1e-6)
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


def clip_negative(height, valid, negative):
    """(height, valid) with values in [-negative, 0) made 0 (the DSM and the
    DTM interpolate the same ground differently) and lower ones made nodata
    (a DTM above the surface is an error of one of them). A value GDAL
    averaged from an undeclared NaN is nodata too."""
    valid = valid & np.isfinite(height)
    below = valid & (height < 0)
    height[below & (height >= -negative)] = 0
    return height, valid & ~(below & (height < -negative))


def ndsm(dsm, dtm, dsm_valid, dtm_valid, negative):
    """(nDSM = DSM - DTM, valid where both are), negatives as clip_negative."""
    return clip_negative(dsm - dtm, dsm_valid & dtm_valid, negative)


def tile_windows(grid, tile):
    """{(row, col): Window} of the whole tiles of the grid (a strip narrower
    than a tile at the right and bottom edge is left out)."""
    return {(r, c): Window(c * tile, r * tile, tile, tile)
            for r in range(grid.height // tile) for c in range(grid.width // tile)}


def split_tiles(kept, block, fractions, seed, draws=64):
    """({(row, col): split} of the tiles kept, [tiles dropped as a buffer]).

    Blocks of block x block tiles holding kept tiles are drawn in a seeded
    random order: the first share of them test, the next valid, the rest
    train (at least one block each). Then every tile with a tile of an
    earlier split among its 8 neighbours is dropped, test before valid
    before train, so tiles of different splits never touch. Of `draws`
    orders the one keeping the most tiles with none of the splits empty wins."""
    blocks = sorted({(r // block, c // block) for r, c in kept})
    if len(blocks) < 3:
        raise DatasetError(f"the kept tiles fall in {len(blocks)} block(s) of {block} x "
                           f"{block} tiles; three splits need at least 3. Fix: a smaller "
                           f"--block or --tile, or a larger area.")
    n_test = max(1, round(fractions[2] / sum(fractions) * len(blocks)))
    n_valid = max(1, round(fractions[1] / sum(fractions) * len(blocks)))
    if n_test + n_valid >= len(blocks):
        n_test, n_valid = 1, 1
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(draws):
        order = rng.permutation(len(blocks))
        rank = {blocks[index]: r for r, index in enumerate(order)}
        split = {t: 'test' if rank[(t[0] // block, t[1] // block)] < n_test else
                 'valid' if rank[(t[0] // block, t[1] // block)] < n_test + n_valid else
                 'train' for t in kept}
        dropped = _buffer(split)
        score = (set(split.values()) == set(SPLITS), len(split))
        if best is None or score > best[0]:
            best = score, split, dropped
    if not best[0][0]:
        raise DatasetError(f"every way of drawing {len(blocks)} blocks of {block} x {block} "
                           f"tiles left a split without tiles once the tiles touching "
                           f"another split were dropped. Fix: a smaller --block or --tile, "
                           f"or a larger area.")
    return best[1], best[2]


def _buffer(split):
    """Drop (from `split`, in place) and return the tiles touching a tile of
    a later split in SPLITS, even at a corner: test first, then valid."""
    dropped = []
    for lower in ('valid', 'train'):
        higher = SPLITS[SPLITS.index(lower) + 1:]
        found = [(r, c) for (r, c), s in sorted(split.items())
                 if s == lower and any(split.get((r + dr, c + dc)) in higher
                                       for dr in (-1, 0, 1) for dc in (-1, 0, 1))]
        for t in found:
            del split[t]
        dropped += found
    return dropped


def band_scale(src, band):
    """The value that means full scale for an integer band (its declared NBITS,
    else its type's maximum); None for floating point, scaled per image."""
    dtype = np.dtype(src.dtypes[band - 1])
    if dtype.kind not in 'ui':
        return None
    bits = src.tags(band, ns='IMAGE_STRUCTURE').get('NBITS')
    return 2 ** int(bits) - 1 if bits else int(np.iinfo(dtype).max)


def crs_text(crs):
    """'EPSG:n' when the CRS has one, else its WKT."""
    epsg = crs.to_epsg() if crs else None
    return f'EPSG:{epsg}' if epsg else (crs.to_wkt() if crs else None)


def height_unit(src):
    """The unit of a height file: its band's declared unit, else the linear unit of its CRS."""
    unit = (src.units or [None])[0]
    if unit:
        return unit
    return src.crs.linear_units if src.crs and src.crs.is_projected else 'unknown'
