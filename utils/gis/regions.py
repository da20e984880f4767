"""A region's orthophotos and LiDAR rasters on one grid, and the rules that
make a training dataset of them: the grid over the area every input covers
(make_grid), the nDSM (DSM - DTM, negatives clipped), and the split by
spatial blocks of tiles: blocks are drawn at random (seeded) for test,
valid and train, and a tile touching a tile of another split, even at a
corner, is dropped (test wins over valid, valid over train), so no crop of
one split sees the ground of another. The inputs are read onto the grid by
utils/geo/warp.py; utils/gis/tiles.py writes the tiles.
"""
import math
import os

import numpy as np

from utils.data.layouts import SPLITS, layout_named
from utils.errors import DatasetError
from utils.geo.files import find_images
from utils.geo.grid import Grid
from utils.geo.warp import bounds_in, union

# The split_folders names utils/data/layouts.py expects of a dataset name matching no entry.
FOLDERS = {k: v for k, v in layout_named('split_folders').folders.items() if k != 'sar'}


def find_rasters(items, what):
    """The rasters named by `items` (files, addresses, or folders whose
    files GDAL opens, in name order); `what`: the option they came from."""
    return find_images(items, 'raster', what)


def make_grid(images, *heights, gsd=None):
    """The grid over the area the images and every group of height files
    (DSM and DTM, or the nDSM) all cover: the first image's CRS; its pixel
    size and pixel grid, or with `gsd` that pixel size on a grid of
    multiples of it (as gdalwarp -tap)."""
    first = images[0]
    crs = first.crs
    if crs is None:
        bounds_in(first, None)
    t = first.transform
    size = gsd or math.sqrt(abs(t.a * t.e - t.b * t.d))
    rotated = abs(t.b) > 1e-12 or abs(t.d) > 1e-12
    # The first image's own pixel grid keeps its pixels unresampled; a rotated
    # image or another pixel size snaps to multiples of the pixel size.
    origin_x, origin_y = (0.0, 0.0) if gsd or rotated else (t.c, t.f)
    boxes = [('the orthophotos', union(bounds_in(s, crs) for s in images))] + \
        [(f'the heights ({os.path.basename(group[0].name)} ...)',
          union(bounds_in(s, crs) for s in group)) for group in heights]
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
    return Grid.north_up(crs, origin_x + col0 * size, origin_y - row0 * size, size,
                         col1 - col0, row1 - row0)


def _box(box):
    return ', '.join(f'{v:.1f}' for v in box)


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
