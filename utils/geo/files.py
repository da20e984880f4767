"""Raster files: finding them, opening them through GDAL, and GDAL's errors
as one line naming the file.

Anything GDAL opens is an input, whatever its extension: GeoTIFF/COG, JPEG
2000, a VRT mosaic, ERDAS .img, PNG/JPEG with a world file and .aux.xml,
and http(s):// or s3:// addresses (GDAL's /vsicurl/ and /vsis3/, read a
block at a time, credentials from the environment as GDAL reads them).
Folders are scanned for files named as images and for what else GDAL
opens; sidecars (.aux.xml, .msk, .ovr, world files) belong to their image
and are never taken for one. Every raster of the project is opened here.
"""
import os
import sys
import warnings

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from utils.errors import DatasetError

REMOTE = ('http://', 'https://', 's3://', '/vsi')
# Files that belong to an image beside them, never images themselves.
SIDECARS = ('.aux.xml', '.aux', '.msk', '.ovr', '.rrd', '.prj', '.wld', '.tfw', '.tifw',
            '.tiffw', '.pgw', '.pngw', '.jgw', '.jpgw', '.jpegw', '.j2w', '.gfw', '.bpw')
# Names a user means as images: taken from a folder even when GDAL cannot
# open them, so that a damaged one is reported, not silently left out.
IMAGE_NAMES = ('.tif', '.tiff', '.jp2', '.png', '.jpg', '.jpeg', '.vrt', '.img')
# GDAL settings, defaults for the whole process (the environment wins).
# geo/image.py holds the band of whole block rows it reads, so GDAL's block
# cache need not hold the image (its default, 5% of the RAM, kept 520 MB of
# a 12 000 px image read in bands: bench/RESULTS.md). For remote files,
# neighbouring byte ranges are merged into one request. GDAL's own messages
# stay off the terminal: its errors reach the user as our one-line errors
# naming the file. A remote request answered 429 or 5xx (an object store
# under load) is retried 3 times, 1 s apart and then doubling, instead of
# failing the image (GDAL's default: no retry).
for _name, _value in (('GDAL_CACHEMAX', '16'), ('CPL_LOG', os.devnull),
                      ('GDAL_HTTP_MAX_RETRY', '3'), ('GDAL_HTTP_RETRY_DELAY', '1'),
                      ('GDAL_HTTP_MULTIRANGE', 'YES'),
                      ('GDAL_HTTP_MERGE_CONSECUTIVE_RANGES', 'YES'), ('VSI_CACHE', 'TRUE')):
    os.environ.setdefault(_name, _value)
# For remote files: no directory listing per open (an HTTP request each).
REMOTE_OPTIONS = dict(GDAL_DISABLE_READDIR_ON_OPEN='EMPTY_DIR')
# rasterio warns of a file without a grid on opening or writing it: the
# Grid says so (georeferenced), and predict.py decides. A filter for the
# process, since catch_warnings around each open is not thread-safe and the
# training pipeline opens files from several threads (the warning slipped out).
warnings.filterwarnings('ignore', category=NotGeoreferencedWarning, module='rasterio')
# What reading a raster raises when GDAL cannot.
READ_ERRORS = (RasterioError, OSError)


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
    if is_remote(path) and 'certificate' in reason:
        fix = ("trust the server's certificate authority: GDAL_CURL_CA_BUNDLE=<its .pem "
               "file> in the environment")
    elif str(path).startswith(('https://', '/vsicurl/https://')) and \
            'response code: 0' in reason:
        # No HTTP answer at all; GDAL does not always pass curl's reason on,
        # and a TLS refusal of the server's certificate is one such case.
        fix = ("check the address and the network; if the server's certificate is signed "
               "by its own authority, trust it: GDAL_CURL_CA_BUNDLE=<its .pem file> in the "
               "environment")
    elif is_remote(path):
        fix = 'check the address, the network and the credentials GDAL reads'
    else:
        fix = 'replace the file with one GDAL reads (gdalinfo shows what it sees)'
    return DatasetError(f"Cannot read {path} ({reason}). Fix: {fix}.")


def _open(path):
    if is_remote(path):
        with rasterio.Env(**REMOTE_OPTIONS):
            return rasterio.open(path)
    return rasterio.open(path)


def open_raster(path, what=''):
    """The rasterio dataset of a file or address; a DatasetError naming it
    (after `what`, e.g. the option it came from) when GDAL cannot open it."""
    path = str(path)
    prefix = f"{what} " if what else ''
    if not is_remote(path) and not os.path.exists(path):
        raise DatasetError(f"{prefix}{path}: no such file. Fix: check the path.")
    try:
        return _open(path)
    except READ_ERRORS as err:
        raise DatasetError(f"{prefix}{unreadable(path, err)}") from None


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
    except READ_ERRORS:
        return False


def without_mosaic_tiles(found, kind='image'):
    """A folder's files less the tiles that a VRT among them mosaics: those
    pixels are taken once, through the VRT, and a line says so. A VRT GDAL
    cannot open keeps its tiles (it is named when read)."""
    tiles = {}
    for path in found:
        if path.lower().endswith('.vrt'):
            try:
                with _open(path) as src:
                    sources = [os.path.realpath(f) for f in src.files[1:]]
            except READ_ERRORS:
                continue
            for source in sources:
                tiles.setdefault(source, path)
    kept, dropped = [], {}
    for path in found:
        vrt = tiles.get(os.path.realpath(path))
        if vrt is None:
            kept.append(path)
        else:
            dropped[vrt] = dropped.get(vrt, 0) + 1
    for vrt, count in sorted(dropped.items()):
        print(f"{vrt}: {count} {kind}(s) of its folder are its tiles, taken once through "
              f"it, not again on their own", file=sys.stderr)
    return kept


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
            files += without_mosaic_tiles(found, kind)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise DatasetError(f"{prefix}{item}: no such file or folder. Fix: check the path.")
    return files


def metadata(path):
    """The dataset-level metadata items of a raster ({} when unreadable)."""
    try:
        with _open(path) as src:
            return src.tags()
    except READ_ERRORS:
        return {}
