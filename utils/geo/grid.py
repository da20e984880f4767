"""One grid: where a raster's cells lie, and the windows placed on it.

A Grid is a raster's size in cells, its CRS and its affine transform (cell
-> CRS coordinates; the identity where a file declares none). Reading
(geo/image.py, geo/read.py), writing (geo/write.py), the training crops
(random_window, and holds: a crop must fit), the prediction windows
(sliding), a prepared region's tiles (tiles) and the cells under a
building (window_of) are all placed on it.
"""
import dataclasses
import math

from rasterio.transform import Affine, array_bounds
from rasterio.windows import Window, from_bounds
from rasterio.windows import transform as window_transform

from utils.errors import DatasetError
from utils.rules import CROP_MULTIPLE


@dataclasses.dataclass(frozen=True)
class Grid:
    height: int
    width: int
    crs: object = None                  # rasterio CRS, None when the file declares none
    transform: Affine = Affine.identity()

    @classmethod
    def of(cls, dataset):
        """The grid of an open rasterio dataset."""
        return cls(dataset.height, dataset.width, dataset.crs, dataset.transform)

    @classmethod
    def north_up(cls, crs, left, top, size, width, height):
        """Square cells of `size` CRS units from the corner (left, top)."""
        return cls(height, width, crs, Affine(size, 0, left, 0, -size, top))

    @property
    def shape(self):
        return self.height, self.width

    @property
    def georeferenced(self):
        """Whether the file declared where its cells lie (a transform)."""
        return not self.transform.is_identity

    @property
    def res(self):
        """(cell width, cell height) in CRS units, of a north-up grid."""
        return self.transform.a, -self.transform.e

    @property
    def left(self):
        return self.transform.c

    @property
    def top(self):
        return self.transform.f

    @property
    def bounds(self):
        """(left, bottom, right, top) in the CRS."""
        return tuple(array_bounds(self.height, self.width, self.transform))

    def check_north_up(self, name):
        """DatasetError unless the cells are rectangles in the CRS: no
        rotation, rows from north to south."""
        t = self.transform
        if t.b != 0 or t.d != 0 or t.e >= 0:
            raise DatasetError(f"{name}: a rotated or south-up grid ({tuple(t)[:6]}); "
                               f"warp it north-up first (gdalwarp {name} out.tif)")

    def window_transform(self, window):
        """The transform of the window's own grid."""
        return window_transform(window, self.transform)

    def part(self, window):
        """The Grid of a window of this grid's cells."""
        return Grid(int(window.height), int(window.width), self.crs,
                    self.window_transform(window))

    def pixels(self, bounds):
        """(col0, row0, col1, row1), fractional, of `bounds` (left, bottom,
        right, top) on a north-up grid."""
        left, bottom, right, top = bounds
        size = self.res[0]
        return ((left - self.left) / size, (self.top - top) / size,
                (right - self.left) / size, (self.top - bottom) / size)

    def window_of(self, bounds):
        """The Window of the cells under `bounds` (left, bottom, right, top),
        cells partly inside included, clipped to the grid; None where the
        grid has no cell there."""
        w = from_bounds(*bounds, transform=self.transform)
        c0, r0 = max(0, math.floor(w.col_off)), max(0, math.floor(w.row_off))
        c1 = min(self.width, math.ceil(w.col_off + w.width))
        r1 = min(self.height, math.ceil(w.row_off + w.height))
        if c1 <= c0 or r1 <= r0:
            return None
        return Window(c0, r0, c1 - c0, r1 - r0)

    def tiles(self, tile):
        """{(row, col): Window} of the whole tile x tile cell tiles (a strip
        narrower than a tile at the right and bottom edge is left out)."""
        return {(r, c): Window(c * tile, r * tile, tile, tile)
                for r in range(self.height // tile) for c in range(self.width // tile)}

    def sliding(self, crop, stride):
        """(rows, cols): the first row and column of the crop x crop windows
        every `stride` cells, the last at the far edge; window i is at
        (rows[i // len(cols)], cols[i % len(cols)])."""
        return starts(self.height, crop, stride), starts(self.width, crop, stride)

    def holds(self, crop, what):
        """DatasetError naming `what` unless the grid holds a crop x crop window."""
        check_crop_fits(what, self.shape, crop)


def starts(size, crop, stride):
    """Window starts along one side of `size` cells: every `stride`, the
    last one at size - crop."""
    check_crop_fits('an image side', (size,), crop)
    if stride < 1:
        raise ValueError(f"window stride {stride}: use a positive step")
    found = list(range(0, size - crop + 1, stride))
    if found[-1] != size - crop:
        found.append(size - crop)
    return found


def check_crop_fits(what, shape, crop):
    """DatasetError unless every side of `shape` ((rows, cols), or one side)
    holds the crop: training samples and the window layout need it
    (prediction reflection-pads a smaller image to the crop first)."""
    if min(shape[:2]) < crop:
        size = 'x'.join(str(side) for side in reversed(shape[:2]))   # width x height
        fitting = min(shape[:2]) // CROP_MULTIPLE * CROP_MULTIPLE
        raise DatasetError(f"{what} is {size}, smaller than cropSize={crop}. Fix: set "
                           f"cropSize to at most {fitting} (a multiple of {CROP_MULTIPLE}), "
                           f"or remove the image.")


def random_window(key, height, width, crop):
    """(row, col) of a uniformly random crop x crop window of a height x
    width image, from the stateless random key `key` (TensorFlow ops: the
    training crops, drawn inside the input pipeline's graph)."""
    import tensorflow as tf
    ky, kx = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    y = tf.random.stateless_uniform([], ky, 0, height - crop + 1, tf.int32)
    x = tf.random.stateless_uniform([], kx, 0, width - crop + 1, tf.int32)
    return y, x
