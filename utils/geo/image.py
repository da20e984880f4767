"""Imagery as the network takes it: the chosen bands of a raster in bands
of rows, scaled to [0, 1], and where its pixels are valid.

`Image` reads the way GDAL presents the file: the palette expanded through
its colour table, JPEG YCbCr decoded by GDAL, and a pixel invalid where
GDAL's mask is 0 (internal mask, `.msk` sidecar or alpha), where every
chosen band equals the nodata value, or where a band is not finite. A
nodata value the type cannot hold is ignored, as GDAL does.

Values map to [0, 1] by the `image_scale` setting (config.py): 'auto'
divides integers by the largest value of their declared bit depth
(full_scale: GDAL's NBITS, else the type's), keeps floats within [0, 1]
and min-max scales other floats over the image's valid pixels; 'minmax'
min-max scales every type; a number N divides by N (values above N become
1). An undeclared uint16 image whose values all fit in 12 bits gets a
warning naming the file, its range and the setting.
"""
import math

import numpy as np
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window

from utils.errors import DatasetError, SettingError, imagery_warning
from utils.geo.files import READ_ERRORS, open_raster, unreadable
from utils.geo.grid import Grid

TILE = 256                  # rows read at a time when the blocks are not taller
UNDECLARED_BITS = (11, 12)  # common sensor depths stored in uint16 without a declaration


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


def has_mask(src):
    """Whether GDAL has a mask for the whole dataset (internal, .msk or alpha)."""
    return MaskFlags.per_dataset in src.mask_flag_enums[0]


def full_scale(src, band=1):
    """The value that means full scale for an integer band of an open
    dataset: the largest of its declared bit depth (GDAL's NBITS, e.g.
    4095 for 12 bits in uint16), else of its type; None for floats."""
    dtype = np.dtype(src.dtypes[band - 1])
    if dtype.kind not in 'ui':
        return None
    bits = src.tags(band, ns='IMAGE_STRUCTURE').get('NBITS')
    return 2 ** int(bits) - 1 if bits else int(np.iinfo(dtype).max)


class BandStatistics:
    """Running count, sum and sum of squares per band (float64), and the
    lowest and highest value: add() values [n, bands] as they come."""

    def __init__(self, bands):
        self.low, self.high = np.full(bands, np.inf), np.full(bands, -np.inf)
        self.count, self.total, self.squares = 0, np.zeros(bands), np.zeros(bands)

    def add(self, values):
        if not len(values):
            return
        self.low = np.minimum(self.low, values.min(0))
        self.high = np.maximum(self.high, values.max(0))
        values = values.astype(np.float64)
        self.count += len(values)
        self.total = self.total + values.sum(0)
        self.squares = self.squares + np.square(values).sum(0)

    def mean_spread(self):
        """(mean, standard deviation) per band; None without values."""
        if not self.count:
            return None
        mean = self.total / self.count
        return mean, np.sqrt(np.maximum(self.squares / self.count - mean ** 2, 0))


class Image:
    """A raster in bands of rows: the chosen bands scaled to [0, 1] by `scale`
    (the image_scale setting), where its pixels are valid, and its `grid`.

    bands: 0-based band indices in the order the network takes them (an
    error names --bands when they do not fit), or None: the first `channels`;
    channels: how many the network takes.
    """

    def __init__(self, path, bands, channels, scale='auto'):
        self.path = str(path)
        self._src = src = open_raster(self.path)
        try:
            self._describe(src)
        except READ_ERRORS as err:
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
        self.grid = Grid.of(src)
        self.height, self.width, self.count = src.height, src.width, src.count
        self.nodata = src.nodata
        self.masked = has_mask(src)
        self.lut, self.declared = None, None
        if src.colorinterp[0] == ColorInterp.palette:
            table = src.colormap(1)
            self.lut = np.zeros((max(table) + 1, 3), np.uint8)
            for index, colour in table.items():
                self.lut[index] = colour[:3]
            self.count = 3
        self.raw_dtype = np.dtype(src.dtypes[0])
        full = full_scale(src)
        if full is not None and full < np.iinfo(self.raw_dtype).max:
            self.declared = full
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
        except READ_ERRORS as err:
            raise unreadable(self.path, err) from None
        return raw, valid

    def _bands_of_rows(self, rows=None):
        rows = rows or self._step
        for r0 in range(0, self.height, rows):
            yield r0, self._raw(r0, min(r0 + rows, self.height))

    def survey(self):
        """One pass over the image: the BandStatistics of the chosen bands'
        valid raw values."""
        if self._survey is None:
            self._survey = BandStatistics(len(self.bands))
            for _, (picked, valid) in self._bands_of_rows():
                self._survey.add(picked[valid])
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
            low, high = self.survey().low, self.survey().high
            if not np.isfinite(low).all():
                return 0.0, 1.0
            low, high = float(low.min()), float(high.max())
            if scale == 'auto' and dtype.kind == 'f' and low >= 0 and high <= 1:
                return 0.0, 1.0
            return low, (high - low) or 1.0
        raise SettingError(f"image_scale = {scale!r}: use 'auto', 'minmax' or a number > 0")

    def _warn_undeclared(self):
        low, high = self.survey().low, self.survey().high
        if not np.isfinite(high).all():
            return
        top = int(high.max())
        bits = next((b for b in UNDECLARED_BITS if top < 2 ** b), None)
        if bits:
            imagery_warning(f"{self.path}: uint16 values {int(low.min())}..{top} declare "
                            f"no bit depth, scaled by 65535 (image_scale = 'auto'); if "
                            f"this is {bits}-bit imagery set image_scale = {2 ** bits - 1}")

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
        found = self.survey().mean_spread()
        if found is None:
            return None
        offset, span = self.span
        mean, spread = found
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
