"""Cloud Optimized GeoTIFFs written from bands of rows, top to bottom.

The layout GDAL's COG driver writes and its validator checks
(/work/shared/design/rasters.md, "What GIS users expect of outputs"):
512 px tiles, deflate with a predictor (3, floating point, for floats; 2,
horizontal differencing, for integers), reduced-resolution levels halved
until one tile holds them, stored as SubIFDs of the image (GDAL reads them
as overviews), and every IFD before any pixel data, the smallest level's
tiles first and the full resolution's last.

The pixel data can only be placed once every IFD's size is known, so the
tiles of each level are compressed as soon as a row of them is complete and
spooled to an unnamed temporary file per level beside the output; close() writes the
header and IFDs and copies the spooled tiles after them. Memory: one row of
tiles per level. Disk: the spool and the output, briefly.

Overviews: 'average' means the mean of the valid pixels of each 2 x 2
block (nodata and non-finite values left out; a block with none is nodata),
'nearest' its top-left pixel (class maps). The file is classic TIFF, or
BigTIFF when its offsets need 64 bits.
"""
import os
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from xml.sax.saxutils import escape

import imagecodecs
import numpy as np

TILE = 512
DEFLATE_LEVEL = 6
# TIFF field types: (code, NumPy little-endian type of one value)
TYPES = {'B': (1, '<u1'), 's': (2, 'u1'), 'H': (3, '<u2'), 'I': (4, '<u4'), 'b': (6, '<i1'),
         'h': (8, '<i2'), 'i': (9, '<i4'), 'f': (11, '<f4'), 'd': (12, '<f8'),
         'Q': (16, '<u8'), 'q': (17, '<i8')}
BY_CODE = {code: np_type for code, np_type in TYPES.values()}
BY_CODE.update({5: '<u4', 13: '<u4', 18: '<u8'})   # RATIONAL (2 LONG), IFD, IFD8
PHOTOMETRIC = {'minisblack': 1, 'rgb': 2, 'palette': 3}
SAMPLE_FORMAT = {'u': 1, 'i': 2, 'f': 3}
SUBIFDS, GDAL_METADATA, GDAL_NODATA = 330, 42112, 42113
# GeoTIFF tags: ModelPixelScale, ModelTiepoint, ModelTransformation,
# GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams
GEOREFERENCING = (33550, 33922, 34264, 34735, 34736, 34737)


def level_shapes(height, width):
    """(height, width) of the image and of each overview: halved (rounded up)
    until one tile holds the level."""
    shapes = [(height, width)]
    while max(shapes[-1]) > TILE:
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
    return shapes


def geotiff_tags(crs, transform):
    """The GeoTIFF tags GDAL writes for a grid, as tifffile extratags ([]
    without one): those of a 1 x 1 GeoTIFF GDAL writes in memory."""
    if crs is None and transform is None:
        return []
    import io
    import rasterio
    import tifffile
    from rasterio.io import MemoryFile
    profile = dict(driver='GTiff', width=1, height=1, count=1, dtype='uint8')
    with MemoryFile() as memory:
        with memory.open(crs=crs, transform=transform or rasterio.Affine.identity(),
                         **profile):
            pass
        with tifffile.TiffFile(io.BytesIO(memory.read())) as tif:
            tags = tif.pages[0].tags
            return [(code, tags[code].dtype, tags[code].count, tags[code].value, True)
                    for code in GEOREFERENCING if code in tags]


def metadata_xml(items):
    """GDAL_METADATA text for dataset-level items {name: value}."""
    rows = ''.join(f'<Item name="{escape(str(k), {chr(34): "&quot;"})}">{escape(str(v))}</Item>'
                   for k, v in items.items())
    return f'<GDALMetadata>{rows}</GDALMetadata>'


def _valid(values, nodata):
    valid = np.isfinite(values) if values.dtype.kind == 'f' else np.ones(values.shape, bool)
    if nodata is not None:
        valid &= values != nodata
    return valid


def _halve(rows, how, nodata):
    """One overview row per two rows [2k or 2k-1, W, S] (the image's last
    row may be unpaired; an odd last column is a block of one column)."""
    if how == 'nearest':
        return rows[::2, ::2]
    values = rows.astype(np.float64)
    valid = _valid(rows, nodata)
    values[~valid] = 0
    h, w = rows.shape[:2]
    pad = ((0, h % 2), (0, w % 2)) + ((0, 0),) * (rows.ndim - 2)
    values, valid = np.pad(values, pad), np.pad(valid, pad)
    total = values.reshape(values.shape[0] // 2, 2, values.shape[1] // 2, 2,
                           *values.shape[2:]).sum((1, 3))
    count = valid.reshape(total.shape[0], 2, total.shape[1], 2, *total.shape[2:]).sum((1, 3))
    fill = nodata if nodata is not None else np.nan
    out = np.where(count > 0, total / np.maximum(count, 1), fill)
    return out.astype(rows.dtype)


class _Level:
    """One resolution: rows in, compressed tiles out to the spool."""

    def __init__(self, shape, writer):
        self.shape, self.writer = shape, writer
        self.pending, self.rows_in = [], 0
        self.offsets, self.counts = [], []      # per tile, row-major, within the spool
        self.spool = tempfile.TemporaryFile(dir=writer.folder)

    def add(self, rows):
        if len(rows):
            self.pending.append(rows)
            self.rows_in += len(rows)
        held = sum(len(p) for p in self.pending)
        last = self.rows_in == self.shape[0]
        if held < TILE and not (last and held):
            return
        band = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        done = len(band) if last else len(band) - len(band) % TILE
        for y in range(0, done, TILE):
            self._tiles(band[y:y + TILE])
        self.pending = [band[done:].copy()] if done < len(band) else []

    def _tiles(self, band):
        w = self.writer
        full = np.full((TILE, -(-self.shape[1] // TILE) * TILE, w.samples), w.fill, w.dtype)
        full[:len(band), :self.shape[1]] = band.reshape(len(band), self.shape[1], w.samples)
        tiles = [full[:, x:x + TILE] for x in range(0, full.shape[1], TILE)]
        for data in w.pool.map(w.encode, tiles):
            self.offsets.append(self.spool.tell())
            self.counts.append(len(data))
            self.spool.write(data)


class CogWriter:
    """A COG of `shape` (H, W) or (H, W, samples) and `dtype`, written by
    write(rows) top to bottom and finished by close(); abort() removes it.

    crs, transform: the grid (rasterio CRS and Affine, None: none);
    extratags: tifffile-style (code, type, count, value, writeonce) tuples
    copied onto the image; nodata: the GDAL_NODATA
    value; overview: 'average' or 'nearest'; photometric: 'minisblack',
    'rgb' or 'palette' (with colormap [entries, 3] of 0..255); metadata:
    {name: value} written as GDAL_METADATA; bigtiff: None chooses (BigTIFF
    only when classic TIFF's 32-bit offsets cannot reach the data)."""

    def __init__(self, path, shape, dtype, extratags=(), nodata=None, overview='average',
                 photometric='minisblack', colormap=None, metadata=None, bigtiff=None,
                 crs=None, transform=None):
        extratags = list(extratags) + geotiff_tags(crs, transform)
        self.path, self.dtype = path, np.dtype(dtype).newbyteorder('<')
        self.shape = tuple(shape)
        self.samples = self.shape[2] if len(self.shape) == 3 else 1
        self.nodata, self.overview, self.photometric = nodata, overview, photometric
        self.colormap, self.extratags, self.metadata = colormap, list(extratags), metadata
        self.bigtiff = bigtiff
        self.fill = nodata if nodata is not None else 0
        self.predictor = 3 if self.dtype.kind == 'f' else 2
        # the output exists (under its temporary name) from the start
        self.out = open(path, 'wb')
        self.folder = os.path.dirname(os.path.abspath(path))
        # the tiles of a row compress in parallel (the codecs release the GIL)
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        self.levels = [_Level(s, self) for s in level_shapes(*self.shape[:2])]
        self.carry = [None] * len(self.levels)   # an unpaired row awaiting its partner

    def encode(self, tile):
        """One tile's bytes: the predictor along its rows, then deflate
        (libdeflate's zlib stream, what TIFF's Adobe deflate holds)."""
        tile = np.ascontiguousarray(tile)
        if self.predictor == 3:
            tile = imagecodecs.floatpred_encode(tile, axis=-2)
        else:
            tile = imagecodecs.delta_encode(tile, axis=-2)
        return imagecodecs.deflate_encode(tile, level=DEFLATE_LEVEL)

    def write(self, rows):
        """The next rows [n, W(, samples)] of the image."""
        self._feed(0, np.asarray(rows, self.dtype))

    def _feed(self, index, rows):
        level = self.levels[index]
        level.add(rows)
        if index + 1 == len(self.levels):
            return
        if self.carry[index] is not None:
            rows = np.concatenate([self.carry[index], rows])
            self.carry[index] = None
        last = level.rows_in == level.shape[0]
        if len(rows) % 2 and not last:
            rows, self.carry[index] = rows[:-1], rows[-1:].copy()
        if len(rows) or last:
            self._feed(index + 1, _halve(rows, self.overview, self.nodata))

    # ------------------------------------------------------------ the file

    def _tags(self, index, level):
        """[(code, type, values)] of one IFD, values as a NumPy array or bytes."""
        h, w = level.shape
        tags = [(254, 'I', [0 if index == 0 else 1]), (256, 'I', [w]), (257, 'I', [h]),
                (258, 'H', [self.dtype.itemsize * 8] * self.samples), (259, 'H', [8]),
                (262, 'H', [PHOTOMETRIC[self.photometric]]), (277, 'H', [self.samples]),
                (284, 'H', [1]), (317, 'H', [self.predictor]), (322, 'H', [TILE]),
                (323, 'H', [TILE]), (339, 'H', [SAMPLE_FORMAT[self.dtype.kind]] * self.samples)]
        extra = self.samples - (3 if self.photometric == 'rgb' else 1)
        if extra > 0:
            tags.append((338, 'H', [0] * extra))    # unspecified extra samples
        if self.colormap is not None:
            entries = 2 ** (self.dtype.itemsize * 8)
            table = np.zeros((3, entries), np.uint16)
            table[:, :len(self.colormap)] = np.asarray(self.colormap, np.uint16).T * 257
            tags.append((320, 'H', table.ravel()))
        if self.nodata is not None:
            tags.append((GDAL_NODATA, 's', f'{self.nodata:g}'))
        if index == 0:
            for code, kind, _, value, _ in self.extratags:
                if code not in (GDAL_METADATA, GDAL_NODATA):
                    tags.append((code, kind, value))
            if self.metadata:
                tags.append((GDAL_METADATA, 's', metadata_xml(self.metadata)))
        return tags

    @staticmethod
    def _encode(kind, value):
        """(type code, count, little-endian bytes) of a tag value."""
        if isinstance(kind, str) and kind in TYPES:
            code, np_type = TYPES[kind]
        else:
            code = int(kind)
            np_type = BY_CODE[code]
        if code == 2:
            data = (value.encode('latin-1') if isinstance(value, str) else bytes(value))
            data = data.rstrip(b'\0') + b'\0'
            return code, len(data), data
        array = np.asarray(value, np_type).ravel()
        count = len(array) // 2 if code == 5 else len(array)
        return code, count, array.tobytes()

    def close(self):
        """Write the header, the IFDs and the tiles; the spool goes."""
        if self.out is None:
            return
        for index, level in enumerate(self.levels):
            if level.rows_in != level.shape[0]:
                raise ValueError(f"{self.path}: level {index} got {level.rows_in} of "
                                 f"{level.shape[0]} rows")
        data_size = sum(sum(level.counts) for level in self.levels)
        ifds = [self._tags(i, level) for i, level in enumerate(self.levels)]
        for big in (False, True) if self.bigtiff is None else (self.bigtiff,):
            layout = self._layout(ifds, big)
            if big or layout['end'] + data_size < 2 ** 32:
                break
        self._write(ifds, layout, big)
        self._release()

    def _release(self):
        self.out.close()
        self.out = None
        self.pool.shutdown()
        for level in self.levels:
            level.spool.close()

    def _layout(self, ifds, big):
        """Where each IFD goes, and its size, given the entries' widths."""
        word, entry, header = (8, 20, 16) if big else (4, 12, 8)
        positions, at = [], header
        for index, tags in enumerate(ifds):
            tiles = len(self.levels[index].offsets)
            count = len(tags) + 2 + (index == 0 and len(ifds) > 1)   # + offsets, counts, SubIFDs
            size = (8 if big else 2) + count * entry + word
            outside = 0
            for _, kind, value in tags:
                n = len(self._encode(kind, value)[2])
                outside += 0 if n <= word else n + n % 2
            for n in (tiles * word, tiles * word) + (((len(ifds) - 1) * word,)
                                                     if index == 0 and len(ifds) > 1 else ()):
                outside += 0 if n <= word else n
            positions.append(at)
            at += size + outside
        return {'ifds': positions, 'end': at, 'word': word}

    def _write(self, ifds, layout, big):
        word = layout['word']
        pack_word = '<Q' if big else '<I'
        # tile data after the IFDs: smallest level first, full resolution last
        starts, at = {}, layout['end']
        for index in reversed(range(len(self.levels))):
            level = self.levels[index]
            starts[index] = at
            at += sum(level.counts)
        out = self.out
        out.write(b'II' + (struct.pack('<HHHQ', 43, 8, 0, 16) if big else
                           struct.pack('<HI', 42, 8)))
        for index, tags in enumerate(ifds):
            level = self.levels[index]
            base = starts[index]
            tile_type = 'Q' if big else 'I'
            full = list(tags) + [(324, tile_type, np.asarray(level.offsets) + base),
                                 (325, tile_type, level.counts)]
            if index == 0 and len(ifds) > 1:
                full.append((SUBIFDS, 18 if big else 13, layout['ifds'][1:]))
            full.sort(key=lambda t: t[0])
            position = layout['ifds'][index]
            assert out.tell() == position, (out.tell(), position)
            entries, outside = [], b''
            outside_at = position + (8 if big else 2) + len(full) * (20 if big else 12) + word
            for code, kind, value in full:
                type_code, count, data = self._encode(kind, value)
                if len(data) <= word:
                    field = data.ljust(word, b'\0')
                else:
                    field = struct.pack(pack_word, outside_at + len(outside))
                    outside += data + b'\0' * (len(data) % 2)
                entries.append(struct.pack('<HHQ' if big else '<HHI', code, type_code, count)
                               + field)
            out.write(struct.pack('<Q' if big else '<H', len(full)) + b''.join(entries)
                      + struct.pack(pack_word, 0) + outside)
        assert out.tell() == layout['end'], (out.tell(), layout['end'])
        for index in reversed(range(len(self.levels))):
            level = self.levels[index]
            level.spool.seek(0)
            while chunk := level.spool.read(2 ** 20):
                out.write(chunk)

    def abort(self):
        """Drop the output (an error elsewhere): close and remove it."""
        if self.out is not None:
            self._release()
        if os.path.exists(self.path):
            os.remove(self.path)
