"""Class maps as GIS tools show a classification: one band of class values,
a colour table, and a nodata value no class uses."""
import colorsys

import numpy as np

from utils.geo.files import open_raster
from utils.geo.grid import Grid
from utils.geo.write import CogWriter, write_cog


def label_nodata(label_codes):
    """A value no label code uses, for the class map's nodata pixels."""
    codes = np.asarray(label_codes)
    used = set(codes.ravel().tolist()) if codes.ndim == 1 else \
        {c[0] for c in label_codes if c[0] == c[1] == c[2]}
    for candidate in (255, 0, *range(1, 255)):
        if candidate not in used:
            return candidate
    return int(codes.max()) + 1


def class_colours(count):
    """`count` distinct colours for classes that have none of their own
    (integer label codes): hues a golden-ratio turn apart."""
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(i * 0.618034 % 1, 0.7, 0.95)]
                     for i in range(count)], np.uint8)


class ClassMap:
    """How the class map of a dataset's `label_codes` is coded: class i is
    written as values[i] (RGB-coded datasets: i; integer-coded: the
    dataset's code) in colours[i] (the dataset's colours, or
    class_colours), in a colour table `colormap` [entries, 3] uint8, with a
    `nodata` value no class uses, in the `dtype` holding them."""

    def __init__(self, label_codes):
        codes = np.asarray(label_codes)
        if codes.ndim == 2:
            self.values, self.colours = np.arange(len(codes)), codes.astype(np.uint8)
        else:
            self.values, self.colours = codes.astype(np.int64), class_colours(len(codes))
        self.nodata = label_nodata(self.values.tolist())
        self.colormap = np.zeros((max(int(self.values.max()), self.nodata) + 1, 3), np.uint8)
        self.colormap[self.values] = self.colours
        self.dtype = np.uint8 if len(self.colormap) <= 256 else np.uint16

    def encode(self, indices, valid=None):
        """Class indices [H, W] as the values written; nodata where not `valid`."""
        values = self.values[np.maximum(indices, 0)].astype(self.dtype)
        if valid is not None:
            values[~valid] = self.nodata
        return values

    def writer(self, path, grid, **kwargs):
        """A CogWriter of this class map on `grid` (CogWriter's keywords)."""
        return CogWriter(path, grid.shape, self.dtype, grid=grid, nodata=self.nodata,
                         colormap=self.colormap, resampling='nearest', **kwargs)

    def write(self, path, indices, grid=None):
        """Class indices [H, W] as a COG with this coding."""
        write_cog(path, self.encode(indices), grid=grid, nodata=self.nodata,
                  colormap=self.colormap, resampling='nearest')


def read_class_map(path):
    """(band 1 of a class map, its nodata or None, its colour table
    {value: (r, g, b)} or None, its north-up Grid)."""
    with open_raster(path) as ds:
        grid = Grid.of(ds)
        grid.check_north_up(ds.name)
        values = ds.read(1)
        try:
            colours = {k: tuple(v[:3]) for k, v in ds.colormap(1).items()}
        except ValueError:      # no colour table
            colours = None
        return values, ds.nodata, colours, grid
