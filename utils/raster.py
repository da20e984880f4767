"""Every raster read and written, through GDAL (rasterio).

Anything GDAL opens is an input, whatever its extension: GeoTIFF/COG, JPEG
2000, a VRT mosaic, ERDAS .img, PNG/JPEG with a world file and .aux.xml,
and http(s):// or s3:// addresses (GDAL's /vsicurl/ and /vsis3/, read a
block at a time, credentials from the environment as GDAL reads them).
Folders are scanned for what GDAL opens; sidecars (.aux.xml, .msk, .ovr,
world files) belong to their image and are never taken for one.

`Image` reads an image in bands of rows the way GDAL presents it: the
palette expanded through its colour table, JPEG YCbCr decoded by GDAL, and
a pixel invalid where GDAL's mask is 0 (internal mask, `.msk` sidecar or
alpha), where every chosen band equals the nodata value, or where a band is
not finite. A nodata value the type cannot hold is ignored, as GDAL does.

Values map to [0, 1] by the `image_scale` setting (config.py): 'auto'
divides integers by the largest value of their declared bit depth (GDAL's
NBITS, else the type's), keeps floats within [0, 1] and min-max scales
other floats over the image's valid pixels; 'minmax' min-max scales every
type; a number N divides by N (values above N become 1). An undeclared
uint16 image whose values all fit in 12 bits gets a warning naming the
file, its range and the setting. class_map() says how a class map is coded
for GIS tools.
"""
import colorsys
import contextlib
import math
import os
import warnings

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window, from_bounds

from utils.errors import DatasetError, ImageryWarning, SettingError

HEIGHT_NODATA = -9999.0     # below datasets.NODATA_BELOW, so read back as nodata
TILE = 256                  # rows read at a time when the blocks are not taller
UNDECLARED_BITS = (11, 12)  # common sensor depths stored in uint16 without a declaration
REMOTE = ('http://', 'https://', 's3://', '/vsi')
# Files that belong to an image beside them, never images themselves.
SIDECARS = ('.aux.xml', '.aux', '.msk', '.ovr', '.rrd', '.prj', '.wld', '.tfw', '.tifw',
            '.tiffw', '.pgw', '.pngw', '.jgw', '.jpgw', '.jpegw', '.j2w', '.gfw', '.bpw')
# GDAL settings, defaults for the whole process (the environment wins). Image
# holds the band of whole block rows it reads, so GDAL's block cache need not
# hold the image (its default, 5% of the RAM, kept 520 MB of a 12 000 px image
# read in bands: bench/RESULTS.md). For remote files, neighbouring byte
# ranges are merged into one request. GDAL's own messages stay off the
# terminal: its errors reach the user as our one-line errors naming the file.
for _name, _value in (('GDAL_CACHEMAX', '16'), ('CPL_LOG', os.devnull),
                      ('GDAL_HTTP_MULTIRANGE', 'YES'),
                      ('GDAL_HTTP_MERGE_CONSECUTIVE_RANGES', 'YES'), ('VSI_CACHE', 'TRUE')):
    os.environ.setdefault(_name, _value)
# For remote files: no directory listing per open (an HTTP request each).
REMOTE_OPTIONS = dict(GDAL_DISABLE_READDIR_ON_OPEN='EMPTY_DIR')
# Names a user means as images: taken from a folder even when GDAL cannot
# open them, so that a damaged one is reported, not silently left out.
IMAGE_NAMES = ('.tif', '.tiff', '.jp2', '.png', '.jpg', '.jpeg', '.vrt', '.img')


def warn(message):
    warnings.warn(message, ImageryWarning, stacklevel=2)


def is_remote(path):
    return str(path).startswith(REMOTE)


def is_sidecar(path):
    return str(path).lower().endswith(SIDECARS)


def _reason(err):
    """The first line of GDAL's own message: rasterio's 'Read failed. See
    previous exception' carries it in the exception it was raised from."""
    while 'previous exception' in str(err) and (err.__cause__ or err.__context__):
        err = err.__cause__ or err.__context__
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def unreadable(path, err):
    """The error for a raster GDAL cannot read; `err`: its exception, or the reason."""
    reason = _reason(err) if isinstance(err, Exception) else err
    if is_remote(path):
        fix = 'check the address, the network and the credentials GDAL reads'
    else:
        fix = 'replace the file with one GDAL reads (gdalinfo shows what it sees)'
    return DatasetError(f"Cannot read {path} ({reason}). Fix: {fix}.")


# rasterio warns of a file without a grid on opening or writing it:
# Image.crs / transform say so, and predict.py decides. A filter for the
# process, since catch_warnings around each open is not thread-safe and the
# training pipeline opens files from several threads (the warning slipped out).
warnings.filterwarnings('ignore', category=NotGeoreferencedWarning, module='rasterio')


def _open(path):
    if is_remote(path):
        with rasterio.Env(**REMOTE_OPTIONS):
            return rasterio.open(path)
    return rasterio.open(path)


def open_raster(path):
    """The rasterio dataset of a file or address; a DatasetError naming it
    when GDAL cannot open it."""
    path = str(path)
    if not is_remote(path) and not os.path.exists(path):
        raise DatasetError(f"{path}: no such file. Fix: check the path.")
    try:
        return _open(path)
    except (RasterioError, OSError) as err:
        raise unreadable(path, err) from None


def is_image_file(path):
    """Whether a file found in a folder is taken as a raster: named as an
    image (IMAGE_NAMES: then read, and named if GDAL cannot read it), or
    else opened by GDAL (sidecars excluded). Opening every file would cost
    a dataset of 300 images a second for each scan of its folders."""
    if is_sidecar(path):
        return False
    if str(path).lower().endswith(IMAGE_NAMES):
        return True
    try:
        with _open(path):
            return True
    except (RasterioError, OSError):
        return False


def find_images(inputs, kind='image', option=''):
    """Files and addresses named by `inputs`: files, http(s)/s3 addresses, or
    folders whose files GDAL opens or are named as images (IMAGE_NAMES;
    sidecars left out), in name order. A missing path or a folder without
    any is an error naming the command-line `option` it came from."""
    files = []
    prefix = f"{option} " if option else ''
    for item in map(str, inputs):
        if is_remote(item):
            files.append(item)
        elif os.path.isdir(item):
            found = [p for p in sorted(os.path.join(item, f) for f in os.listdir(item))
                     if os.path.isfile(p) and is_image_file(p)]
            if not found:
                raise DatasetError(f"{prefix}{item}: no {kind} in this folder that GDAL "
                                   f"opens. Fix: name a folder holding {kind}s, or the "
                                   f"{kind} files themselves.")
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


def _has_mask(src):
    """Whether GDAL has a mask for the whole dataset (internal, .msk or alpha)."""
    return MaskFlags.per_dataset in src.mask_flag_enums[0]


def read_raw(path, mask=False):
    """(array channels-last, nodata value or None) of a whole raster, and with
    `mask` a third item: bool HxW, False where GDAL's mask of the dataset
    (internal, .msk, alpha) is 0, or None when it has none. A palette stays
    indices (label files are palette images of class codes)."""
    with open_raster(path) as src:
        try:
            array = np.moveaxis(src.read(), 0, -1)
            valid = src.read_masks(1) != 0 if mask and _has_mask(src) else None
        except (RasterioError, OSError) as err:
            raise unreadable(path, err) from None
        array = array[..., 0] if array.shape[2] == 1 else array
        return (array, src.nodata, valid) if mask else (array, src.nodata)


def grid(path):
    """(crs, transform) of a raster: rasterio CRS and Affine, each None when
    the file declares none."""
    with open_raster(path) as src:
        return _grid(src)


def _grid(src):
    transform = None if src.transform.is_identity else src.transform
    return src.crs, transform


def metadata(path):
    """The dataset-level metadata items of a raster ({} when unreadable)."""
    try:
        with _open(path) as src:
            return src.tags()
    except (RasterioError, OSError):
        return {}


def _stats_of(values):
    """[n, bands] -> (count, sum, sum of squares) per band, in float64."""
    values = values.astype(np.float64)
    return len(values), values.sum(0), np.square(values).sum(0)


class Image:
    """A raster in bands of rows: the chosen bands scaled to [0, 1] by `scale`
    (the image_scale setting), where its pixels are valid, and its grid
    (`crs`, `transform`: None when the file declares none).

    bands: 0-based band indices in the order the network takes them (an
    error names --bands when they do not fit), or None: the first `channels`;
    channels: how many the network takes.
    """

    def __init__(self, path, bands, channels, scale='auto'):
        self.path = str(path)
        self._src = src = open_raster(self.path)
        try:
            self._describe(src)
        except (RasterioError, OSError) as err:
            self.close()
            raise unreadable(self.path, err) from None
        count = self.count
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

    def _describe(self, src):
        self.height, self.width, self.count = src.height, src.width, src.count
        self.crs, self.transform = _grid(src)
        self.nodata = src.nodata
        self.masked = _has_mask(src)
        self.lut, self.declared = None, None
        if src.colorinterp[0] == ColorInterp.palette:
            table = src.colormap(1)
            self.lut = np.zeros((max(table) + 1, 3), np.uint8)
            for index, colour in table.items():
                self.lut[index] = colour[:3]
            self.count = 3
        self.raw_dtype = np.dtype(src.dtypes[0])
        if self.raw_dtype.kind in 'ui':
            bits = src.tags(1, ns='IMAGE_STRUCTURE').get('NBITS')
            if bits and int(bits) < self.raw_dtype.itemsize * 8:
                self.declared = 2 ** int(bits) - 1
        # rows per read: whole blocks, at least TILE rows
        block = src.block_shapes[0][0]
        self._step = max(1, -(-TILE // block)) * block if block < self.height else TILE
        # one block taller than a read (a single compressed strip): decoded
        # once and held, not again for every band of rows
        if block >= self.height > self._step:
            self._step = self.height
        self._held = None       # (first row, bands, mask) of the band of rows last read

    @property
    def dtype(self):
        return self.lut.dtype if self.lut is not None else self.raw_dtype

    # ------------------------------------------------------------ raw values

    def _raw(self, r0, r1):
        """(bands [n, W, len(bands)] with a palette expanded, valid [n, W])."""
        raw, valid = self._aligned(r0, r1)
        if self.lut is not None:     # nodata of a palette image is an index
            if self.nodata is not None:
                valid &= raw[..., 0] != self.nodata
            return self.lut[raw[..., 0]][..., self.bands], valid
        if raw.dtype.kind == 'f':
            valid &= np.isfinite(raw).all(-1)
        if self.nodata is not None and not math.isnan(self.nodata):
            valid &= ~(raw == np.asarray(self.nodata).astype(raw.dtype)).all(-1)
        return raw, valid

    def _aligned(self, r0, r1):
        """_read(r0, r1) through bands of whole block rows (_step rows from a
        multiple of _step), each read once: reads from top to bottom decode
        every block once, whatever rows they ask for."""
        parts = []
        row = r0
        while row < r1:
            top = row // self._step * self._step
            if self._held is None or self._held[0] != top:
                self._held = (top,) + self._read(top, min(top + self._step, self.height))
            _, raw, valid = self._held
            end = min(r1, top + len(raw))
            parts.append((raw[row - top:end - top], valid[row - top:end - top]))
            row = end
        if len(parts) == 1:
            return parts[0][0], parts[0][1].copy()
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def _read(self, r0, r1):
        """(the bands read [n, W, bands or 1 index], GDAL's mask [n, W])."""
        window = Window(0, r0, self.width, r1 - r0)
        indexes = [1] if self.lut is not None else [b + 1 for b in self.bands]
        try:
            raw = np.moveaxis(self._src.read(indexes, window=window), 0, -1)
            valid = (self._src.read_masks(1, window=window) != 0 if self.masked
                     else np.ones(raw.shape[:2], bool))
        except (RasterioError, OSError) as err:
            raise unreadable(self.path, err) from None
        return raw, valid

    def _bands_of_rows(self, rows=None):
        rows = rows or self._step
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
            return np.array(picked, np.float32)     # a copy: rows() zeroes invalid pixels
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
        self._held = None
        if self._src is not None:
            self._src.close()
            self._src = None

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
# with the file's own nodata, CRS and transform.
def map_grid(path):
    """{crs (rasterio CRS or None), transform, width, height, nodata, res,
    bounds (left, bottom, right, top)} of a one-band map. Only north-up grids
    (no rotation): their cells are rectangles in the map's CRS."""
    with open_raster(path) as ds:
        return _map_grid(ds)


def _map_grid(ds):
    t = ds.transform
    if t.b != 0 or t.d != 0 or t.e >= 0:
        raise DatasetError(f"{ds.name}: a rotated or south-up grid ({tuple(t)[:6]}); "
                           f"warp it north-up first (gdalwarp {ds.name} out.tif)")
    return dict(crs=ds.crs, transform=t, width=ds.width, height=ds.height,
                nodata=ds.nodata, res=(t.a, -t.e), bounds=tuple(ds.bounds))


def read_map_area(path, bounds):
    """The cells of band 1 of `path` under `bounds` (left, bottom, right, top in
    the map's CRS), cells partly inside included: (float64 values with NaN where
    the file has nodata or a mask of 0, (left, bottom, right, top) of the cells
    read), or (None, None) where the map has no cell there."""
    with open_raster(path) as ds:
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
    with open_raster(path) as ds:
        grid = _map_grid(ds)
        values = ds.read(1)
        try:
            colours = {k: tuple(v[:3]) for k, v in ds.colormap(1).items()}
        except ValueError:      # no colour table
            colours = None
        return values, ds.nodata, colours, grid


# ---------------------------------------------------------------- writing
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

    crs, transform: the georeferencing (rasterio CRS and Affine, as
    grid() gives them; None: none); nodata: the value of pixels
    without one; colormap: [entries, 3] uint8 colours of a class map (one
    band of class values, see class_map()); metadata: {name: value} items
    GDAL reads back as metadata() (GDAL_METADATA); resampling: how overviews are
    made, 'average' (of the valid pixels: nodata left out) for continuous
    values, 'nearest' or 'mode' for classes; masked: write(rows, valid)
    also writes where pixels are valid, as a GDAL internal mask; nbits: the
    declared bit depth of integers (e.g. 12 in uint16; no predictor then,
    GDAL has none for packed samples); blocksize: the tiles' side.

    Files: `<path>.stream.tmp` while rows arrive, `<path>.cog.tmp` while GDAL
    copies, renamed to `path` when complete, so `path` is never a partial
    file; a rerun after a crash overwrites the leftovers."""

    def __init__(self, path, shape, dtype, *, crs=None, transform=None, nodata=None,
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


def write_class_map(path, indices, label_codes, **kwargs):
    """Class indices [H, W] as a COG coded as class_map(label_codes) says,
    with its colour table and nodata (CogWriter's keywords: crs, transform)."""
    coding = class_map(label_codes)
    write_cog(path, coding['values'][indices].astype(coding['dtype']),
              nodata=coding['nodata'], colormap=coding['colormap'], resampling='nearest',
              **kwargs)


def write_geotiff(path, array):
    """A whole array [H, W] or [H, W, bands] as a plain GeoTIFF (strips, no
    compression, no georeferencing): generated training data, which only
    this project reads, where a COG's copy costs ten times the write."""
    bands = array.reshape(array.shape[0], array.shape[1], -1)
    with rasterio.open(path, 'w', driver='GTiff', height=bands.shape[0],
                       width=bands.shape[1], count=bands.shape[2],
                       dtype=bands.dtype.name) as dataset:
        dataset.write(np.moveaxis(bands, -1, 0))
