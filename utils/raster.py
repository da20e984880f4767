"""Rasters read and written in bands of rows, with their georeferencing.

`Image` reads an image file the way GDAL presents it: a TIFF strip by strip
or tile by tile (tifffile decodes each segment; imagecodecs supplies LZW,
JPEG and the other codecs), a palette image through its colour map, and
where its pixels are valid. PNG and JPEG files have no row access and are
read whole. Outputs are written by utils/cog.py; class_map() says how a
class map is coded for GIS tools.

A pixel is invalid where the GDAL mask is 0 (the TIFF's internal mask page,
or a `<file>.msk` sidecar), where alpha is 0, where every chosen band equals
the GDAL_NODATA value, or where a band is not finite. A nodata value the
data type cannot hold is ignored with a warning, as GDAL does.

Values map to [0, 1] by the `image_scale` setting (config.py): 'auto'
divides integers by the largest value of their declared bit depth
(BitsPerSample, else MaxSampleValue, else the type's), keeps floats within
[0, 1] and min-max scales other floats over the image's valid pixels;
'minmax' min-max scales every type; a number N divides by N (values above
N become 1). An undeclared uint16 image whose values all fit in 12 bits
gets a warning naming the file, its range and the setting.
"""
import colorsys
import contextlib
import math
import os
import sys
import warnings

import cv2
import numpy as np
import tifffile

from utils.errors import DatasetError, ImageryWarning, SettingError

IMAGE_EXTENSIONS = ('.tif', '.tiff', '.png', '.jpg', '.jpeg')
# GeoTIFF tags: ModelPixelScale, ModelTiepoint, ModelTransformation,
# GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams (the georeferencing:
# CRS and geotransform or tie points), GDAL_METADATA, GDAL_NODATA.
GEOREFERENCING = (33550, 33922, 34264, 34735, 34736, 34737)
GEO_TAGS = GEOREFERENCING + (42112, 42113)
NODATA_TAG = 42113
MAX_SAMPLE_VALUE_TAG = 281
HEIGHT_NODATA = -9999.0     # below datasets.NODATA_BELOW, so read back as nodata
TILE = 256
UNDECLARED_BITS = (11, 12)  # common sensor depths stored in uint16 without a declaration


@contextlib.contextmanager
def _quiet_stderr():
    """Silence what C libraries print on stderr (libjpeg's 'Premature end of
    JPEG file' through OpenCV): our error names the file instead."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def is_tiff(path):
    return str(path).lower().endswith(('.tif', '.tiff'))


def warn(message):
    warnings.warn(message, ImageryWarning, stacklevel=2)


def geo_tags(path, codes=GEO_TAGS):
    """The GeoTIFF tags of an image file as tifffile extratags ([] if none / not a TIFF)."""
    if not is_tiff(path):
        return []
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        return [(code, tags[code].dtype, tags[code].count, tags[code].value, True)
                for code in codes if code in tags]


def find_images(inputs, extensions=IMAGE_EXTENSIONS, kind='image', option=''):
    """Files named by `inputs` (files, or folders whose files ending in one
    of `extensions` are taken in name order); a missing path or an empty
    folder is an error, naming the command-line `option` it came from."""
    files = []
    prefix = f"{option} " if option else ''
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(extensions))
            if not found:
                raise DatasetError(f"{prefix}{item}: no {kind} file in this folder (looked "
                                   f"for {' '.join(extensions)}). Fix: name a folder holding "
                                   f"{kind}s, or the {kind} files themselves.")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise DatasetError(f"{prefix}{item}: no such file or folder. Fix: check the path.")
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


def nodata_value(text, dtype, path):
    """The GDAL_NODATA text as a value of `dtype`, or None (with a warning,
    as GDAL does) when the type cannot hold it: -1 on uint8 must not mark
    every 255."""
    try:
        value = float(str(text).strip('\x00 '))
    except ValueError:
        warn(f"{path}: GDAL_NODATA {text!r} is not a number; ignored")
        return None
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        fits = math.isfinite(value) and value == int(value) and info.min <= value <= info.max
    else:
        fits = not math.isfinite(value) or abs(value) <= np.finfo(dtype).max
    if not fits:
        warn(f"{path}: GDAL_NODATA {value:g} cannot be a {dtype} value; ignored "
             f"(no pixel is nodata by value)")
        return None
    return value


def read_raw(path):
    """(array channels-last, GDAL nodata value or None) of a whole image file;
    a palette stays indices (label files are palette images of class codes)."""
    if not os.path.isfile(path):
        raise DatasetError(f"File not found: {path}. Fix: restore the file or remove its "
                           f"partners so the sample is not listed.")
    if is_tiff(path):
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                array = page.asarray()
                if array.ndim == 3 and page.axes.startswith('S'):   # planar channels
                    array = np.moveaxis(array, 0, -1)
                tag = page.tags.get('GDAL_NODATA')
                nodata = None if tag is None else nodata_value(tag.value, array.dtype, path)
                return array, nodata
        except Exception as err:
            raise _unreadable(path, err) from None
    with _quiet_stderr():
        array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise _unreadable(path, 'OpenCV cannot decode it')
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3
                             else cv2.COLOR_BGRA2RGBA)
    return array, None


def _unreadable(path, err):
    """The error for a file no decoder could read; `err`: the decoder's
    exception, or the reason in words."""
    if isinstance(err, Exception):
        err = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
    return DatasetError(f"Cannot read {path} ({err}). Fix: replace the file with a valid "
                        f"TIFF/PNG/JPEG.")


class _Segments:
    """Row access to one page of a TIFF through its strips or tiles, for
    reads from top to bottom. Uncompressed strips are read by rows straight
    from the file; other segments are decoded once per row of segments and
    kept only while later rows still need theirs (a single compressed strip
    is the whole image: decoded once, kept to the end)."""

    def __init__(self, tif, page):
        self.page, self.tif = page, tif
        self.seg_h = page.tilelength if page.is_tiled else min(page.rowsperstrip,
                                                                 page.imagelength)
        self.seg_w = page.tilewidth if page.is_tiled else page.imagewidth
        self.across = -(-page.imagewidth // self.seg_w)
        self.down = -(-page.imagelength // self.seg_h)
        self.planes = page.samplesperpixel if page.planarconfig == 2 else 1
        self.shape = (page.imagelength, page.imagewidth, page.samplesperpixel)
        self.dtype = page.dtype
        self.raw = (page.compression == 1 and not page.is_tiled and page.fillorder == 1
                    and page.bitspersample == page.dtype.itemsize * 8
                    and all(page.databytecounts))     # GDAL's sparse files: no strip
        self.cache = {}     # row of segments -> its decoded rows [seg_h, W, bands]
        if self.raw:        # read by rows later: a truncated file must fail now
            end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts))
            if end > tif.filehandle.size:
                raise ValueError(f"truncated: its strips end at byte {end}, the file at "
                                 f"{tif.filehandle.size}")
        self.read(0, 1)     # fails now, not midway, when a segment cannot be decoded
        self.cache.clear()

    def read(self, r0, r1):
        if self.raw:
            return self._read_raw(r0, r1)
        out = np.zeros((r1 - r0, self.shape[1], self.shape[2]), self.dtype)
        first, last = r0 // self.seg_h, (r1 - 1) // self.seg_h
        for row in range(first, last + 1):
            if row not in self.cache:
                self.cache[row] = self._decode_row(row)
            top = row * self.seg_h
            part = self.cache[row]
            lo, hi = max(r0, top), min(r1, top + len(part))
            out[lo - r0:hi - r0] = part[lo - top:hi - top]
        for row in [k for k in self.cache if (k + 1) * self.seg_h <= r1]:
            del self.cache[row]     # rows below r1 are read next, not these
        return out

    def _decode_row(self, row):
        """Every segment of one row of segments, decoded: [rows, W, bands]."""
        page, (h, w, bands) = self.page, self.shape
        top = row * self.seg_h
        out = np.zeros((min(self.seg_h, h - top), w, bands), self.dtype)
        fh = self.tif.filehandle
        for plane in range(self.planes):
            for col in range(self.across):
                index = (plane * self.down + row) * self.across + col
                fh.seek(page.dataoffsets[index])
                data = fh.read(page.databytecounts[index]) or None
                seg, (s, _, y, x, c), _ = page.decode(data, index, jpegtables=page.jpegtables)
                if seg is None:     # a segment never written: zeros
                    continue
                seg = seg[0]        # (length, width, contiguous samples)
                bottom, right = min(y + seg.shape[0], h), min(x + seg.shape[1], w)
                out[y - top:bottom - top, x:right, s + c:s + c + seg.shape[2]] = \
                    seg[:bottom - y, :right - x]
        return out

    def _read_raw(self, r0, r1):
        """Rows of uncompressed strips, read from their offsets in the file."""
        h, w, bands = self.shape
        per_plane = bands // self.planes
        stored = self.dtype.newbyteorder(self.tif.byteorder)
        row_bytes = w * per_plane * stored.itemsize
        out = np.empty((r1 - r0, w, bands), self.dtype)
        fh = self.tif.filehandle
        for plane in range(self.planes):
            for strip in range(r0 // self.seg_h, (r1 - 1) // self.seg_h + 1):
                top = strip * self.seg_h
                lo, hi = max(r0, top), min(r1, top + self.seg_h, h)
                fh.seek(self.page.dataoffsets[plane * self.down + strip] + (lo - top) * row_bytes)
                rows = np.frombuffer(fh.read((hi - lo) * row_bytes), stored)
                out[lo - r0:hi - r0, :, plane * per_plane:(plane + 1) * per_plane] = \
                    rows.reshape(hi - lo, w, per_plane)
        return out


def _mask_of(tif, page, path):
    """(mask page, its TiffFile if a sidecar's, else None) of `page`, or
    (None, None): the GDAL mask GDAL_TIFF_INTERNAL_MASK writes (a page flagged
    NewSubfileType 4 with the image's size), else a `<path>.msk` sidecar."""
    size = (page.imagelength, page.imagewidth)
    for other in tif.pages[1:]:
        if other.subfiletype & 4 and (other.imagelength, other.imagewidth) == size:
            return other, None
    if not os.path.isfile(path + '.msk'):
        return None, None
    sidecar = tifffile.TiffFile(path + '.msk')
    mask = sidecar.pages[0]
    if (mask.imagelength, mask.imagewidth) != size:
        sidecar.close()
        raise DatasetError(f"{path}.msk is {mask.imagewidth}x{mask.imagelength}, its image "
                           f"{size[1]}x{size[0]}. Fix: remove or rebuild the mask.")
    return mask, sidecar


def read_mask(path):
    """bool HxW, False where the GDAL mask of a TIFF (internal or .msk) is 0;
    None when the file has none."""
    if not is_tiff(path):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            mask, sidecar = _mask_of(tif, tif.pages[0], path)
            if mask is None:
                return None
            try:
                return np.asarray(mask.asarray()).reshape(mask.imagelength,
                                                          mask.imagewidth) != 0
            finally:
                if sidecar is not None:
                    sidecar.close()
    except DatasetError:
        raise
    except Exception as err:
        raise _unreadable(path, err) from None


def _stats_of(values):
    """[n, bands] -> (count, sum, sum of squares) per band, in float64."""
    values = values.astype(np.float64)
    return len(values), values.sum(0), np.square(values).sum(0)


class Image:
    """An image file in bands of rows: the chosen bands scaled to [0, 1] by
    `scale` (the image_scale setting), and where its pixels are valid.

    bands: 0-based band indices in the order the network takes them (an
    error names --bands when they do not fit), or None: the first `channels`;
    channels: how many the network takes.
    """

    def __init__(self, path, bands, channels, scale='auto'):
        self.path = path
        self._tif, self._segments, self._mask, self._mask_tif, self._whole = \
            None, None, None, None, None
        self.nodata, self.alpha, self.lut, self.declared = None, None, None, None
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: no such file. Fix: check the path.")
        try:
            if is_tiff(path):
                self._open_tiff(path)
            else:
                array, _ = read_raw(path)
                self._whole = array[..., None] if array.ndim == 2 else array
                if path.lower().endswith('.png') and self._whole.shape[2] in (2, 4):
                    self.alpha = self._whole.shape[2] - 1
        except DatasetError:
            self.close()
            raise
        except Exception as err:
            self.close()
            raise _unreadable(path, err) from None
        h, w, count = (self._segments.shape if self._segments else self._whole.shape)
        if self.lut is not None:
            count = 3
        self.height, self.width, self.count = h, w, count
        if bands is None and count < channels:     # a training image
            self.close()
            raise DatasetError(f"{path}: expected a colour image with {channels} channels, "
                               f"got {count}. Fix: export it as RGB.")
        bands = range(channels) if bands is None else bands
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
        self.scale = scale
        self._span, self._survey = None, None

    def _open_tiff(self, path):
        tif = self._tif = tifffile.TiffFile(path)
        page = tif.pages[0]
        self._segments = _Segments(tif, page)
        tag = page.tags.get('GDAL_NODATA')
        if tag is not None:
            self.nodata = nodata_value(tag.value, page.dtype, path)
        extra = tuple(page.extrasamples or ())
        alpha = [i for i, e in enumerate(extra) if int(e) in (1, 2)]
        if alpha:
            self.alpha = page.samplesperpixel - len(extra) + alpha[0]
        if page.photometric == 3 and page.colormap is not None:
            self.lut = self._palette(page.colormap)
        if page.dtype.kind in 'ui':
            bits = page.bitspersample
            if bits < page.dtype.itemsize * 8:
                self.declared = 2 ** bits - 1
            elif MAX_SAMPLE_VALUE_TAG in page.tags:
                value = np.max(page.tags[MAX_SAMPLE_VALUE_TAG].value)
                if 0 < value < np.iinfo(page.dtype).max:
                    self.declared = int(value)
        mask, self._mask_tif = _mask_of(tif, page, path)
        if mask is not None:
            self._mask = _Segments(self._mask_tif or tif, mask)

    @staticmethod
    def _palette(colormap):
        """[entries, 3] colours of a TIFF ColorMap (0..65535): uint8 when every
        entry is an 8-bit colour scaled by 257, as GDAL writes them."""
        colours = np.asarray(colormap).T
        if np.all(colours % 257 == 0):
            return (colours // 257).astype(np.uint8)
        return colours.astype(np.uint16)

    @property
    def dtype(self):
        if self.lut is not None:
            return self.lut.dtype
        return self._segments.dtype if self._segments else self._whole.dtype

    # ------------------------------------------------------------ raw values

    def _raw(self, r0, r1):
        """(bands [n, W, count] with a palette expanded, valid [n, W])."""
        raw = self._segments.read(r0, r1) if self._segments else self._whole[r0:r1]
        valid = np.ones(raw.shape[:2], bool)
        if self._mask is not None:
            valid &= self._mask.read(r0, r1)[..., 0] != 0
        if self.alpha is not None:
            valid &= raw[..., self.alpha] != 0
        if self.lut is not None:     # nodata of a palette image is an index
            if self.nodata is not None:
                valid &= raw[..., 0] != self.nodata
            return self.lut[raw[..., 0]][..., self.bands], valid
        picked = raw[..., self.bands]
        if np.issubdtype(raw.dtype, np.floating):
            valid &= np.isfinite(picked).all(-1)
        if self.nodata is not None:
            valid &= ~(picked == np.asarray(self.nodata).astype(raw.dtype)).all(-1)
        return picked, valid

    def _bands_of_rows(self, rows=TILE):
        for r0 in range(0, self.height, rows):
            yield r0, self._raw(r0, min(r0 + rows, self.height))

    def survey(self):
        """One pass over the image: (low, high, count, sum, sum of squares)
        per chosen band of its valid raw values (low/high None if none is valid)."""
        if self._survey is None:
            bands = len(self.bands)
            low, high = np.full(bands, np.inf), np.full(bands, -np.inf)
            count, total, squares = 0, np.zeros(bands), np.zeros(bands)
            for _, (picked, valid) in self._bands_of_rows():
                values = picked[valid]
                if len(values):
                    low = np.minimum(low, values.min(0))
                    high = np.maximum(high, values.max(0))
                    n, s, q = _stats_of(values)
                    count, total, squares = count + n, total + s, squares + q
            self._survey = (low, high, count, total, squares)
        return self._survey

    # ------------------------------------------------------------ scale

    @property
    def span(self):
        """(offset, span): unit = (value - offset) / span, clipped to [0, 1]."""
        if self._span is None:
            self._span = self._choose_span()
        return self._span

    def _choose_span(self):
        scale, dtype = self.scale, self.dtype
        if not isinstance(scale, str):
            return 0.0, float(scale)
        if scale == 'auto' and self.declared:
            return 0.0, float(self.declared)
        if scale == 'auto' and dtype in (np.uint8, np.uint16):
            if dtype == np.uint16:
                self._warn_undeclared()
            return 0.0, float(np.iinfo(dtype).max)
        if scale == 'auto' or scale == 'minmax':
            low, high = self.survey()[:2]
            if not np.isfinite(low).all():
                return 0.0, 1.0
            low, high = float(low.min()), float(high.max())
            if scale == 'auto' and dtype.kind == 'f' and low >= 0 and high <= 1:
                return 0.0, 1.0
            return low, (high - low) or 1.0
        raise SettingError(f"image_scale = {scale!r}: use 'auto', 'minmax' or a number > 0")

    def _warn_undeclared(self):
        low, high = self.survey()[:2]
        if not np.isfinite(high).all():
            return
        top = int(high.max())
        bits = next((b for b in UNDECLARED_BITS if top < 2 ** b), None)
        if bits:
            warn(f"{self.path}: uint16 values {int(low.min())}..{top} declare no bit "
                 f"depth, scaled by 65535 (image_scale = 'auto'); if this is {bits}-bit "
                 f"imagery set image_scale = {2 ** bits - 1}")

    def to_unit(self, picked):
        offset, span = self.span
        if offset == 0 and span == 1 and picked.dtype.kind == 'f':
            return np.asarray(picked, np.float32)   # floats already in [0, 1]
        if offset == 0 and picked.dtype.kind in 'ui':
            # the division the training images have always had: float32 / span
            unit = picked.astype(np.float32)
            unit /= np.float32(span)
            return np.minimum(unit, 1, out=unit)
        values = (picked.astype(np.float64) - offset) / span
        return np.clip(np.where(np.isfinite(values), values, 0), 0, 1).astype(np.float32)

    def statistics(self):
        """(mean, spread) per chosen band of the valid pixels in [0, 1] units,
        or None when no pixel is valid."""
        _, _, count, total, squares = self.survey()
        if not count:
            return None
        offset, span = self.span
        mean = total / count
        spread = np.sqrt(np.maximum(squares / count - mean ** 2, 0))
        return (mean - offset) / span, spread / span

    # ------------------------------------------------------------ reading

    def rows(self, r0, r1):
        """(float32 [r1 - r0, W, channels] in [0, 1], bool [r1 - r0, W] valid);
        invalid pixels are given to the network as 0."""
        picked, valid = self._raw(r0, r1)
        image = self.to_unit(picked)
        image[~valid] = 0
        return image, valid

    def read(self):
        """rows() over the whole image."""
        return self.rows(0, self.height)

    def preview(self, step):
        """The image at every `step`-th row and column, float32 [0, 1]."""
        parts = []
        for _, (picked, valid) in self._bands_of_rows(step * max(1, TILE // step)):
            # a copy: to_unit may return its input, and a view would keep the band
            image = self.to_unit(np.ascontiguousarray(picked[::step, ::step]))
            image[~valid[::step, ::step]] = 0
            parts.append(image)
        return np.concatenate(parts)

    def close(self):
        for tif in (self._tif, self._mask_tif):
            if tif is not None:
                tif.close()
        self._tif = self._mask_tif = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


def class_map(label_codes):
    """How a class map is coded for GIS tools: one band, whose value of class
    i is values[i] (RGB-coded datasets: i; integer-coded: the dataset's code),
    a colour table `colormap` [entries, 3] uint8 (the dataset's colours, or
    class_colours), a `nodata` value no class uses, and the `dtype` holding them."""
    codes = np.asarray(label_codes)
    if codes.ndim == 2:
        values, colours = np.arange(len(codes)), codes.astype(np.uint8)
    else:
        values, colours = codes.astype(np.int64), class_colours(len(codes))
    nodata = label_nodata(values.tolist())
    colormap = np.zeros((max(int(values.max()), nodata) + 1, 3), np.uint8)
    colormap[values] = colours
    dtype = np.uint8 if len(colormap) <= 256 else np.uint16
    return dict(values=values, colours=colours, colormap=colormap, nodata=nodata, dtype=dtype)


# ------------------------------------------------- height and class maps by area
# For buildings.py: a map's grid, and the part of it under some footprints, read
# by rasterio (GDAL) with the file's own nodata, CRS and transform.

def _open_map(path):
    import rasterio
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        raise _unreadable(path, err)


def map_grid(path):
    """{crs (rasterio CRS or None), transform, width, height, nodata, res,
    bounds (left, bottom, right, top)} of a one-band map. Only north-up grids
    (no rotation): their cells are rectangles in the map's CRS."""
    with _open_map(path) as ds:
        t = ds.transform
        if t.b != 0 or t.d != 0 or t.e >= 0:
            raise DatasetError(f"{path}: a rotated or south-up grid ({tuple(t)[:6]}); "
                               f"warp it north-up first (gdalwarp {path} out.tif)")
        return dict(crs=ds.crs, transform=t, width=ds.width, height=ds.height,
                    nodata=ds.nodata, res=(t.a, -t.e), bounds=tuple(ds.bounds))


def read_map_area(path, bounds):
    """The cells of band 1 of `path` under `bounds` (left, bottom, right, top in
    the map's CRS), cells partly inside included: (float64 values with NaN where
    the file has nodata or a mask of 0, (left, bottom, right, top) of the cells
    read), or (None, None) where the map has no cell there."""
    from rasterio.windows import Window, from_bounds
    with _open_map(path) as ds:
        w = from_bounds(*bounds, transform=ds.transform)
        c0, r0 = max(0, math.floor(w.col_off)), max(0, math.floor(w.row_off))
        c1 = min(ds.width, math.ceil(w.col_off + w.width))
        r1 = min(ds.height, math.ceil(w.row_off + w.height))
        if c1 <= c0 or r1 <= r0:
            return None, None
        window = Window(c0, r0, c1 - c0, r1 - r0)
        values = ds.read(1, window=window, masked=True)
        out = np.ma.filled(values.astype(np.float64), np.nan)
        t = ds.window_transform(window)
        return out, (t.c, t.f + t.e * out.shape[0], t.c + t.a * out.shape[1], t.f)


def read_class_map(path):
    """(band 1 of a class map, its nodata or None, its colour table
    {value: (r, g, b)} or None, its grid as map_grid gives it)."""
    grid = map_grid(path)
    with _open_map(path) as ds:
        values = ds.read(1)
        try:
            colours = {k: tuple(v[:3]) for k, v in ds.colormap(1).items()}
        except ValueError:      # no colour table
            colours = None
        return values, ds.nodata, colours, grid
