"""Rasters read and written in bands of rows, with their georeferencing.

predict.py covers images of any size without holding them: `Image` reads a
TIFF strip by strip or tile by tile (tifffile decodes each segment;
imagecodecs supplies LZW, JPEG and the other codecs), and `TiledWriter`
writes finished rows as tiled, zlib-compressed GeoTIFF tiles. PNG and JPEG
files have no row access and are read whole.

An input pixel is nodata when every band equals the TIFF's GDAL_NODATA
value, when a band is not finite, or when its alpha band is 0.
"""
import math
import os
import queue
import threading

import numpy as np
import tifffile

from utils import datasets
from utils.errors import DatasetError, SettingError

# GeoTIFF tags: ModelPixelScale, ModelTiepoint, ModelTransformation,
# GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams (the georeferencing:
# CRS and geotransform or tie points), GDAL_METADATA, GDAL_NODATA.
GEOREFERENCING = (33550, 33922, 34264, 34735, 34736, 34737)
GEO_TAGS = GEOREFERENCING + (42112, 42113)
NODATA_TAG = 42113
HEIGHT_NODATA = -9999.0     # below datasets.NODATA_BELOW, so read back as nodata
TILE = 256
BIGTIFF_ABOVE = 2 ** 32 - 2 ** 27   # bytes of pixels; leaves room for tags and offsets


def geo_tags(path, codes=GEO_TAGS):
    """The GeoTIFF tags of an image file as tifffile extratags ([] if none / not a TIFF)."""
    if not str(path).lower().endswith(('.tif', '.tiff')):
        return []
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        return [(code, tags[code].dtype, tags[code].count, tags[code].value, True)
                for code in codes if code in tags]


def find_images(inputs):
    """Image files named by `inputs` (files, or folders whose image files are
    taken in name order); a missing path or an empty folder is an error."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(datasets.IMAGE_EXTENSIONS))
            if not found:
                raise DatasetError(f"{item}: no image file in this folder (looked for "
                                   f"{' '.join(datasets.IMAGE_EXTENSIONS)}). Fix: name a "
                                   f"folder holding images, or the image files themselves.")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise DatasetError(f"{item}: no such file or folder. Fix: check the path.")
    return files


def parse_bands(text):
    """'4,1,2' -> [3, 0, 1] (0-based band indices)."""
    try:
        bands = [int(b) - 1 for b in str(text).split(',')]
    except ValueError:
        bands = [-1]
    if min(bands) < 0:
        raise SettingError(f"--bands {text}: give 1-based band numbers separated by "
                           f"commas, e.g. --bands 1,2,3")
    return bands


class _Segments:
    """Row access to the first page of a TIFF through its strips or tiles."""

    def __init__(self, tif):
        page = self.page = tif.pages[0]
        self.tif = tif
        self.seg_h = page.tilelength if page.is_tiled else min(page.rowsperstrip,
                                                                 page.imagelength)
        self.seg_w = page.tilewidth if page.is_tiled else page.imagewidth
        self.across = -(-page.imagewidth // self.seg_w)
        self.down = -(-page.imagelength // self.seg_h)
        self.planes = page.samplesperpixel if page.planarconfig == 2 else 1
        self.shape = (page.imagelength, page.imagewidth, page.samplesperpixel)
        self.dtype = page.dtype
        self.read(0, 1)     # fails now, not midway, when a segment cannot be decoded

    def read(self, r0, r1):
        page, (h, w, bands) = self.page, self.shape
        out = np.zeros((r1 - r0, w, bands), self.dtype)
        fh = self.tif.filehandle
        for plane in range(self.planes):
            for row in range(r0 // self.seg_h, (r1 - 1) // self.seg_h + 1):
                for col in range(self.across):
                    index = (plane * self.down + row) * self.across + col
                    fh.seek(page.dataoffsets[index])
                    data = fh.read(page.databytecounts[index]) or None
                    seg, (s, _, y, x, c), _ = page.decode(data, index,
                                                          jpegtables=page.jpegtables)
                    if seg is None:     # a segment never written: zeros
                        continue
                    seg = seg[0]        # (length, width, contiguous samples)
                    top, bottom = max(y, r0), min(y + seg.shape[0], r1, h)
                    right = min(x + seg.shape[1], w)
                    out[top - r0:bottom - r0, x:right, s + c:s + c + seg.shape[2]] = \
                        seg[top - y:bottom - y, :right - x]
        return out


class Image:
    """An input image in bands of rows: the chosen bands scaled to [0, 1]
    exactly as the training images are (datasets.to_unit over the whole
    image), and where its pixels are valid."""

    def __init__(self, path, bands, channels):
        self.path = path
        self._tif, self._segments, self._whole = None, None, None
        self.nodata, self.alpha = None, None
        if path.lower().endswith(('.tif', '.tiff')):
            try:
                self._tif = tifffile.TiffFile(path)
                page = self._tif.pages[0]
                tag = page.tags.get('GDAL_NODATA')
                if tag is not None:
                    self.nodata = float(str(tag.value).strip('\x00 '))
                extra = tuple(page.extrasamples or ())
                alpha = [i for i, e in enumerate(extra) if int(e) in (1, 2)]
                if alpha:
                    self.alpha = page.samplesperpixel - len(extra) + alpha[0]
                self._segments = _Segments(self._tif)
            except Exception:   # not a TIFF tifffile can decode: read it whole below
                self.close()
                self.nodata = self.alpha = None
        if self._segments is None:
            array, self.nodata = datasets.read_raw(path)
            self._whole = array[..., None] if array.ndim == 2 else array
            if path.lower().endswith('.png') and self._whole.shape[2] in (2, 4):
                self.alpha = self._whole.shape[2] - 1
        h, w, count = (self._segments.shape if self._segments
                       else self._whole.shape)
        self.height, self.width = h, w
        if len(bands) != channels or max(bands) >= count:
            self.close()
            have = 'band' if count == 1 else 'bands'
            raise SettingError(
                f"{path} has {count} {have}; the network takes {channels} "
                f"(--bands {','.join(str(b + 1) for b in bands)} picks "
                f"{len(bands)}). Fix: list {channels} of bands 1..{count} with --bands, "
                f"in the order of the training images (e.g. --bands "
                f"{','.join(str(min(i, count - 1) + 1) for i in range(channels))}).")
        self.bands = list(bands)
        self._bounds = None

    @property
    def bounds(self):
        """The value range to_unit scales by: None for uint8 / uint16, else
        that of the whole image (a first pass over it, on first use)."""
        dtype = self._segments.dtype if self._segments else self._whole.dtype
        if self._bounds is None and dtype not in (np.uint8, np.uint16):
            self._bounds = self._range() or (0.0, 0.0)
        return self._bounds

    def _raw(self, r0, r1):
        if self._segments:
            return self._segments.read(r0, r1)
        return self._whole[r0:r1]

    def _valid(self, raw):
        picked = raw[..., self.bands]
        valid = np.ones(raw.shape[:2], bool)
        if np.issubdtype(raw.dtype, np.floating):
            valid &= np.isfinite(picked).all(-1)
        if self.nodata is not None:
            valid &= ~(picked == np.asarray(self.nodata).astype(raw.dtype)).all(-1)
        if self.alpha is not None:
            valid &= raw[..., self.alpha] != 0
        return valid

    def _bands_of_rows(self, rows=TILE):
        for r0 in range(0, self.height, rows):
            yield r0, self._raw(r0, min(r0 + rows, self.height))

    def _range(self):
        """(low, high) of the valid values of the chosen bands, over the whole image."""
        low, high = math.inf, -math.inf
        for _, raw in self._bands_of_rows():
            values = raw[..., self.bands][self._valid(raw)]
            if values.size:
                low, high = min(low, float(values.min())), max(high, float(values.max()))
        return (low, high) if low <= high else None

    def rows(self, r0, r1):
        """(float32 [r1 - r0, W, channels] in [0, 1], bool [r1 - r0, W] valid);
        nodata pixels are given to the network as 0."""
        raw = self._raw(r0, r1)
        valid = self._valid(raw)
        image = datasets.to_unit(raw[..., self.bands], self.bounds)
        image[~valid] = 0
        return image, valid

    def preview(self, step):
        """The image at every `step`-th row and column, float32 [0, 1]."""
        parts = []
        for _, raw in self._bands_of_rows(step * max(1, TILE // step)):
            image = datasets.to_unit(raw[::step, ::step][..., self.bands], self.bounds)
            image[~self._valid(raw[::step, ::step])] = 0
            parts.append(image)
        return np.concatenate(parts)

    def close(self):
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TiledWriter:
    """A tiled, zlib-compressed (Big)TIFF written from bands of rows, top to
    bottom, holding at most one row of tiles. tifffile takes the tiles from
    an iterator, which a thread runs, fed through a short queue."""

    def __init__(self, path, shape, dtype, extratags=(), photometric='minisblack'):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.pending, self.rows_done, self.error = [], 0, None
        self.queue = queue.Queue(maxsize=1)
        size = math.prod(self.shape) * self.dtype.itemsize
        kwargs = dict(shape=self.shape, dtype=self.dtype, tile=(TILE, TILE),
                      compression='zlib', photometric=photometric,
                      planarconfig='contig' if len(self.shape) == 3 else None,
                      extratags=list(extratags), metadata=None,
                      # tifffile gathers this many bytes of tiles per compression
                      # pass (default 512 MB): one row of tiles, like the queue
                      buffersize=TILE * math.prod(self.shape[1:]) * self.dtype.itemsize)

        def run():
            try:
                with tifffile.TiffWriter(path, bigtiff=size > BIGTIFF_ABOVE) as tif:
                    tif.write(self._tiles(), **kwargs)
            except BaseException as err:     # handed to the main thread by close()
                self.error = err
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def _tiles(self):
        while (band := self.queue.get()) is not None:
            for x in range(0, self.shape[1], TILE):
                yield band[:, x:x + TILE]

    def _put(self, item):
        while True:
            try:
                self.queue.put(item, timeout=1)
                return
            except queue.Full:
                if not self.thread.is_alive():
                    raise RuntimeError(f"writing {self.path} failed: {self.error}")

    def write(self, rows):
        """The next rows [n, W(, C)] of the image."""
        self.pending.append(np.asarray(rows, self.dtype))
        self.rows_done += len(rows)
        held = sum(len(p) for p in self.pending)
        if held >= TILE or self.rows_done == self.shape[0]:
            band = np.concatenate(self.pending)
            for y in range(0, len(band) - TILE + 1, TILE):
                self._put(band[y:y + TILE])
            rest = band[len(band) - len(band) % TILE:]
            if self.rows_done == self.shape[0] and len(rest):
                pad = np.zeros((TILE - len(rest),) + band.shape[1:], self.dtype)
                self._put(np.concatenate([rest, pad]))
                rest = rest[:0]
            self.pending = [rest.copy()] if len(rest) else []

    def close(self):
        """Finish the file; raises what went wrong while writing it."""
        self._put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def label_nodata(label_codes):
    """A value no label code uses, for the class map's nodata pixels."""
    codes = np.asarray(label_codes)
    used = set(codes.ravel().tolist()) if codes.ndim == 1 else \
        {c[0] for c in label_codes if c[0] == c[1] == c[2]}
    for candidate in (255, 0, *range(1, 255)):
        if candidate not in used:
            return candidate
    return int(codes.max()) + 1
