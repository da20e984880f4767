"""Every raster the project writes: Cloud Optimized GeoTIFFs made by GDAL's
COG driver from rows written top to bottom, and plain GeoTIFFs for
generated training data."""
import contextlib
import os

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

# Heights written where there is none: below utils/data/samples.NODATA_BELOW,
# so read back as nodata.
HEIGHT_NODATA = -9999.0

# Every raster this project writes is a Cloud Optimized GeoTIFF made by
# GDAL's COG driver. That driver only copies a finished dataset (CreateCopy),
# so CogWriter streams the rows into a tiled GTiff beside the output, in
# windows aligned with its blocks, and close() copies it to the COG: tiles,
# overviews, predictor, compression, nodata, colour table and metadata.
# Both steps go band by band of blocks (GDAL_CACHEMAX caps the cache), so
# memory follows the width, not the image.
COG_BLOCK = 512             # GDAL's default COG tile
# Deflate level 5: as much CPU as the hand-written writer's level 6 took,
# files 0.6% larger; GDAL's level 6 costs 1.26x the CPU (bench/cog_write.py).
COG_OPTIONS = dict(BLOCKSIZE=COG_BLOCK, COMPRESS='DEFLATE', LEVEL=5,
                   PREDICTOR='YES',      # 2 (horizontal differences) for integers, 3 for floats
                   OVERVIEWS='AUTO',     # halved until one tile holds the image
                   BIGTIFF='IF_SAFER')
# The streamed file is read once by the copy: uncompressed, it costs disk
# (4 bytes a pixel for heights) but less time and memory than ZSTD level 1
# (bench/cog_write.py).
STREAM_OPTIONS = dict(bigtiff='IF_SAFER')
THREADS = 'ALL_CPUS'        # GDAL's threads compressing tiles and computing overviews
GDAL_WRITE_CACHE_MB = 64      # GDAL_CACHEMAX while copying: a cap (its default is 5% of the RAM)
OVERVIEW_RESAMPLING = ('average', 'nearest', 'mode')


class CogWriter:
    """A Cloud Optimized GeoTIFF of `shape` (H, W) or (H, W, bands) and
    `dtype` at `path`, written by write(rows) top to bottom and finished by
    close(); abort() (or an exception inside `with`) removes every file.

    grid: where the cells lie (utils/geo/grid.Grid; None, or a grid
    without a transform: none); nodata: the value of pixels
    without one; colormap: [entries, 3] uint8 colours of a class map (one
    band of class values, see geo/classes.ClassMap); metadata: {name: value} items
    GDAL reads back as metadata() (GDAL_METADATA); resampling: how overviews are
    made, 'average' (of the valid pixels: nodata left out) for continuous
    values, 'nearest' or 'mode' for classes; masked: write(rows, valid)
    also writes where pixels are valid, as a GDAL internal mask; nbits: the
    declared bit depth of integers (e.g. 12 in uint16; no predictor then,
    GDAL has none for packed samples); blocksize: the tiles' side.

    Files: `<path>.stream.tmp` while rows arrive, `<path>.cog.tmp` while GDAL
    copies, renamed to `path` when complete, so `path` is never a partial
    file; a rerun after a crash overwrites the leftovers."""

    def __init__(self, path, shape, dtype, *, grid=None, nodata=None,
                 colormap=None, metadata=None, resampling='average', masked=False, nbits=None,
                 blocksize=COG_BLOCK):
        if resampling not in OVERVIEW_RESAMPLING:
            raise ValueError(f"resampling {resampling!r}: one of {OVERVIEW_RESAMPLING}")
        self.path, self.shape = str(path), tuple(shape)
        self.dtype, self.resampling = np.dtype(dtype), resampling
        self.bands = self.shape[2] if len(self.shape) == 3 else 1
        self.stream, self.copy = self.path + '.stream.tmp', self.path + '.cog.tmp'
        self.pending, self.rows_in, self.rows_out, self.done = [], 0, 0, False
        self.masked, self.block = masked, blocksize
        self.options = dict(COG_OPTIONS, BLOCKSIZE=blocksize)
        crs = grid.crs if grid is not None else None
        transform = grid.transform if grid is not None and grid.georeferenced else None
        profile = dict(driver='GTiff', height=self.shape[0], width=self.shape[1],
                       count=self.bands, dtype=self.dtype.name, crs=crs, transform=transform,
                       nodata=nodata, tiled=True, blockxsize=blocksize, blockysize=blocksize,
                       num_threads=THREADS, **STREAM_OPTIONS)
        if colormap is not None:
            profile['photometric'] = 'palette'
        if nbits:
            profile['nbits'] = self.options['NBITS'] = nbits
            self.options['PREDICTOR'] = 'NO'
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            self.dataset = rasterio.open(self.stream, 'w', **profile)
        try:
            if colormap is not None:
                self.dataset.write_colormap(1, {i: tuple(int(v) for v in colour) + (255,)
                                                for i, colour in enumerate(colormap)})
            if metadata:
                self.dataset.update_tags(**{k: str(v) for k, v in metadata.items()})
        except BaseException:
            self.abort()
            raise

    def write(self, rows, valid=None):
        """The next rows [n, W] or [n, W, bands] of the image (and, masked,
        `valid` [n, W]: where they are valid)."""
        rows = np.asarray(rows, self.dtype).reshape(-1, self.shape[1], self.bands)
        if self.rows_in + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows_in + len(rows)} rows written to an "
                             f"image of {self.shape[0]}")
        if self.masked:     # the mask rides along as one more band until written
            valid = np.ones(rows.shape[:2], bool) if valid is None else valid
            rows = np.concatenate([rows, np.asarray(valid, rows.dtype)[..., None]], -1)
        self.pending.append(rows)
        self.rows_in += len(rows)
        held = sum(len(p) for p in self.pending)
        if held >= self.block or self.rows_in == self.shape[0]:
            band = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
            done = len(band) if self.rows_in == self.shape[0] else \
                len(band) - len(band) % self.block
            self._put(band[:done])
            self.pending = [band[done:].copy()] if done < len(band) else []

    def _put(self, band):
        """Whole rows of blocks (the last may be short): each block is
        compressed once, never read back."""
        if not len(band):
            return
        window = Window(0, self.rows_out, self.shape[1], len(band))
        if self.masked:
            self.dataset.write_mask(band[..., -1] != 0, window=window)
            band = band[..., :-1]
        self.dataset.write(np.moveaxis(band, -1, 0), window=window)
        self.rows_out += len(band)

    def close(self):
        """The COG, from the streamed file; an incomplete image is an error
        (the writer stays open: abort() drops it)."""
        if self.dataset is None:
            return
        if self.rows_in != self.shape[0]:
            raise ValueError(f"{self.path}: got {self.rows_in} of {self.shape[0]} rows")
        try:
            self.dataset.close()
            self.dataset = None
            with rasterio.Env(GDAL_CACHEMAX=GDAL_WRITE_CACHE_MB, GDAL_NUM_THREADS=THREADS):
                rasterio.shutil.copy(self.stream, self.copy, driver='COG',
                                     OVERVIEW_RESAMPLING=self.resampling.upper(),
                                     NUM_THREADS=THREADS, **self.options)
            os.remove(self.stream)
            os.replace(self.copy, self.path)
        except BaseException:
            self.abort()
            raise
        self.done = True

    def abort(self):
        """Drop the output (an error elsewhere): close and remove its files."""
        if self.dataset is not None:
            with contextlib.suppress(Exception):
                self.dataset.close()
            self.dataset = None
        # the output itself only if this writer made it: an older one stays
        for name in (self.stream, self.copy) + ((self.path,) if self.done else ()):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)
        self.done = False

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise


def write_cog(path, array, valid=None, **kwargs):
    """A whole array [H, W] or [H, W, bands] as a COG (CogWriter's keywords),
    with `valid` [H, W] as its mask if given."""
    with CogWriter(path, array.shape, array.dtype, masked=valid is not None,
                   **kwargs) as writer:
        writer.write(array, valid)


def write_geotiff(path, array):
    """A whole array [H, W] or [H, W, bands] as a plain GeoTIFF (strips, no
    compression, no georeferencing): generated training data, which only
    this project reads, where a COG's copy costs ten times the write."""
    bands = array.reshape(array.shape[0], array.shape[1], -1)
    with rasterio.open(path, 'w', driver='GTiff', height=bands.shape[0],
                       width=bands.shape[1], count=bands.shape[2],
                       dtype=bands.dtype.name) as dataset:
        dataset.write(np.moveaxis(bands, -1, 0))
