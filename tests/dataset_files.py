"""Tiny datasets in the real folder layouts and file formats of every published dataset.

A scene is (image uint8 HxWx3, height float32 HxW metres with NaN for nodata,
classes int HxW indices into the dataset's label codes, UNLABELLED for an
unlabelled pixel); each writer stores it the way the real dataset does:

  Vaihingen         IRRG .tif, 8-bit nDSM .jpg, colour-coded label .tif written by
                    GDAL, unlabelled pixels black (the "eroded" reference)
  Vaihingen_crp256  the same formats in train/ valid/ test/ rgb/ ndsm/ sem/
  DFC2018           RGB .tif, float32 DSM and DEM GeoTIFFs (georeferenced, with a
                    GDAL_NODATA value), label GeoTIFF written by GDAL with codes
                    1..20, 0 for unclassified pixels
  DFC2019           <base>_RGB_<n>.tif, float32 <base>_AGL_<n>.tif (NaN heights),
                    uint8 <base>_CLS_<n>.tif with the LAS codes
  DFC2023           rgb/ sar/ dsm/ sem/ .tif, one SAR band

The split lists (Vaihingen areas, DFC2018 tiles) and codes are the published
ones, written out here rather than taken from utils.datasets, so that a
change there is caught.
"""
import os

import cv2
import numpy as np
import rasterio
import tifffile
from rasterio.transform import Affine

SIZE = 32
VAIHINGEN_AREAS = {'train': (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 30, 34),
                   'valid': (28, 32, 37),
                   'test': (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)}
VAIHINGEN_COLOURS = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0),
                     (255, 0, 0)]
DFC2018_TILES = {
    'train': ('UH_NAD83_272056_3289689', 'UH_NAD83_272652_3289689', 'UH_NAD83_273248_3289689'),
    'valid': ('UH_NAD83_273844_3289689',),
    'test': ('UH_NAD83_271460_3289689', 'UH_NAD83_271460_3290290', 'UH_NAD83_272056_3290290',
             'UH_NAD83_272652_3290290', 'UH_NAD83_273248_3290290', 'UH_NAD83_273844_3290290',
             'UH_NAD83_274440_3289689', 'UH_NAD83_274440_3290290', 'UH_NAD83_275036_3289689',
             'UH_NAD83_275036_3290290')}
DFC2018_CODES = list(range(1, 21))
DFC2018_UNCLASSIFIED = 0
VAIHINGEN_BOUNDARY = (0, 0, 0)      # the eroded reference's boundary band
UNLABELLED = -1                     # a scene's class index for an unlabelled pixel
DFC2018_NODATA = -3.4028234663852886e38     # float32 lowest, as GDAL writes it
DFC2018_GSD = 0.5
DFC2019_CODES = [2, 5, 6, 9, 17, 65]
DFC2019_SPLITS = {'train': 'Train', 'valid': 'Valid', 'test': 'Test'}
BINARY_CODES = [0, 1]


def tif(path, array, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tifffile.imwrite(path, array, **kwargs)


def jpg(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, array, [cv2.IMWRITE_JPEG_QUALITY, 95]), path


def rgb(value=100, size=SIZE):
    return np.full((size, size, 3), value, np.uint8)


def coded(indices, codes, unlabelled):
    """Class indices as the dataset's codes (integers or colours), UNLABELLED as
    `unlabelled`."""
    indices = np.asarray(indices)
    table = np.array(list(codes) + [unlabelled], np.uint8)
    return table[np.where(indices == UNLABELLED, len(codes), indices)]


def colour_labels(indices):
    return coded(indices, VAIHINGEN_COLOURS, VAIHINGEN_BOUNDARY)


def grid(west, north, pixel):
    """The geotransform of a north-up raster with square pixels."""
    return Affine(pixel, 0.0, west, 0.0, -pixel, north)


def gdal_tif(path, array, crs=None, transform=None, **options):
    """A TIFF written by GDAL (rasterio), as the benchmarks' label files are:
    HxW one band, HxWx3 three bands (GDAL makes 3-band 8-bit files RGB,
    pixel-interleaved unless options say interleave='band')."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    bands = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    # 9 cm pixels (Vaihingen) when no grid is given: GDAL warns about files without one.
    transform = transform or grid(0.0, 0.0, 0.09)
    with rasterio.open(path, 'w', driver='GTiff', height=bands.shape[1],
                       width=bands.shape[2], count=len(bands), dtype=bands.dtype, crs=crs,
                       transform=transform, **options) as raster:
        raster.write(bands)


# ------------------------------------------------------------------ scenes

def flat_scene(value, size=SIZE, height=None, label=None):
    """Everything constant: image `value`, height (default `value`) metres,
    class index label (default value % 6)."""
    height = value if height is None else height
    label = value % 6 if label is None else label
    return (rgb(value, size), np.full((size, size), float(height), np.float32),
            np.full((size, size), label, np.int64))


def block_scene(seed, shape, classes, nodata=0.0, max_height=20.0, unlabelled=False):
    """Ground of class 0 with a few flat-roofed blocks of the other classes; the
    image is brighter where it is higher, so there is something to learn. A
    share `nodata` of the pixels (one rectangle) has NaN heights. With
    `unlabelled`, each block's one-pixel outline is UNLABELLED (like the
    boundary band of an eroded reference)."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    height = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int64)
    for _ in range(3):
        h, w = rng.integers(rows // 6, rows // 2), rng.integers(cols // 6, cols // 2)
        y, x = rng.integers(0, rows - h), rng.integers(0, cols - w)
        height[y:y + h, x:x + w] = rng.uniform(3, max_height)
        labels[y:y + h, x:x + w] = rng.integers(1, classes)
        if unlabelled:
            labels[y:y + h, x:x + w][[0, -1], :] = UNLABELLED
            labels[y:y + h, x:x + w][:, [0, -1]] = UNLABELLED
    grey = 60 + 180 * height / max_height + rng.normal(0, 5, shape)
    image = np.clip(np.stack([grey, grey * 0.8, 255 - grey], -1), 0, 255).astype(np.uint8)
    if nodata:
        h = max(1, int(rows * nodata))
        height[:h, :cols // 2] = np.nan
    return image, height, labels


# ------------------------------------------------------------------ Vaihingen

def write_vaihingen(root, area, scene, normalized=False):
    image, height, labels = scene
    tif(f'{root}/RGB/top_mosaic_09cm_area{area}.tif', image, photometric='rgb')
    suffix = '_normalized' if normalized else ''
    jpg(f'{root}/NDSM/dsm_09cm_matching_area{area}{suffix}.jpg',
        np.clip(np.rint(np.nan_to_num(height)), 0, 255).astype(np.uint8))
    gdal_tif(f'{root}/SEM/top_mosaic_09cm_area{area}.tif', colour_labels(labels))


def make_vaihingen(root, scene=flat_scene, skip=(), normalized=()):
    """Every published area; scene(area) gives its content. Areas in
    `normalized` get the ISPRS nDSM name dsm_09cm_matching_area<N>_normalized.jpg."""
    for area in sum(VAIHINGEN_AREAS.values(), ()):
        if area not in skip:
            write_vaihingen(root, area, scene(area), normalized=area in normalized)


def make_vaihingen_crp256(root, counts, scene):
    """Cropped Vaihingen: top_mosaic_09cm_area<N>_<k>.tif with the nDSM still
    named dsm_09cm_matching_area<N>_<k>.jpg. counts: {split: patches}."""
    i = 0
    for split, count in counts.items():
        for k in range(count):
            area = VAIHINGEN_AREAS[split][k % len(VAIHINGEN_AREAS[split])]
            name = f'area{area}_{k}'
            image, height, labels = scene(i)
            tif(f'{root}/{split}/rgb/top_mosaic_09cm_{name}.tif', image, photometric='rgb')
            jpg(f'{root}/{split}/ndsm/dsm_09cm_matching_{name}.jpg',
                np.clip(np.rint(np.nan_to_num(height)), 0, 255).astype(np.uint8))
            gdal_tif(f'{root}/{split}/sem/top_mosaic_09cm_{name}.tif', colour_labels(labels))
            i += 1


# ------------------------------------------------------------------ DFC2018

def geotiff_tags(tile, nodata=None):
    """GeoTIFF tags of a DFC2018 tile: 0.5 m pixels, NAD83 / UTM 15N, the tile's
    name giving its upper-left corner; GDAL_NODATA when `nodata` is given."""
    easting, northing = (float(v) for v in tile.split('_')[-2:])
    keys = (1, 1, 0, 3,             # GeoKeyDirectory header: version 1.1.0, 3 keys
            1024, 0, 1, 1,          # GTModelType: projected
            1025, 0, 1, 1,          # GTRasterType: pixel is area
            3072, 0, 1, 26915)      # ProjectedCSType: EPSG 26915
    tags = [(33550, 'd', 3, (DFC2018_GSD, DFC2018_GSD, 0.0), True),
            (33922, 'd', 6, (0.0, 0.0, 0.0, easting, northing, 0.0), True),
            (34735, 'H', len(keys), keys, True)]
    if nodata is not None:
        tags.append((42113, 's', 0, repr(float(nodata)), True))
    return tags


def write_dfc2018(root, tile, scene, ground=10.0, nodata_pixels=()):
    """DSM = ground + height and DEM = ground as float32 GeoTIFFs; NaN heights
    and `nodata_pixels` [(row, col)] hold the nodata value in the DSM."""
    image, height, labels = scene
    dem = np.full(height.shape, ground, np.float32)
    dsm = (dem + np.nan_to_num(height)).astype(np.float32)
    dsm[np.isnan(height)] = DFC2018_NODATA
    for y, x in nodata_pixels:
        dsm[y, x] = DFC2018_NODATA
    tags = geotiff_tags(tile)
    tif(f'{root}/RGB/{tile}.tif', image, photometric='rgb', extratags=tags)
    tif(f'{root}/DSM/{tile}.tif', dsm, extratags=geotiff_tags(tile, DFC2018_NODATA))
    tif(f'{root}/DEM/{tile}.tif', dem, extratags=geotiff_tags(tile, DFC2018_NODATA))
    easting, northing = (float(v) for v in tile.split('_')[-2:])
    gdal_tif(f'{root}/SEM/{tile}.tif', coded(labels, DFC2018_CODES, DFC2018_UNCLASSIFIED),
             crs='EPSG:26915', transform=grid(easting, northing, DFC2018_GSD))


def make_dfc2018(root, scene, splits=DFC2018_TILES):
    for i, tile in enumerate(sum((tuple(splits[s]) for s in splits), ())):
        write_dfc2018(root, tile, scene(i), nodata_pixels=[(0, 0)])


# ------------------------------------------------------------------ DFC2019

def write_dfc2019(root, split, n, scene, truths='AC', codes=DFC2019_CODES, base='JAX_004_006'):
    """One tile: RGB and the truths named in `truths` ('A' AGL, 'C' CLS)."""
    image, height, labels = scene
    folder = f'{root}/{DFC2019_SPLITS[split]}'
    tif(f'{folder}/RGB/{base}_RGB_{n}.tif', image, photometric='rgb')
    if 'A' in truths:
        tif(f'{folder}/Truth/{base}_AGL_{n}.tif', height.astype(np.float32))
    if 'C' in truths:
        tif(f'{folder}/Truth/{base}_CLS_{n}.tif', np.array(codes, np.uint8)[labels])


def make_dfc2019(root, split, truths, scene=lambda n: flat_scene(n, label=0),
                 codes=DFC2019_CODES):
    """truths: {n: 'AC' | 'A' | 'C'} which truths tile n has; scene(n) its content
    (by default image n, height n, class index 0 = code 2)."""
    for n, which in truths.items():
        write_dfc2019(root, split, n, scene(n), which, codes)


# ------------------------------------------------------------------ split folders (DFC2023)

def write_split_folders(root, split, name, scene, folders=('rgb', 'dsm', 'sem'),
                        codes=BINARY_CODES, sar=None):
    """One sample of the DFC2023-style layout; `sar` (HxW) goes to sar/."""
    image, height, labels = scene
    tif(f'{root}/{split}/{folders[0]}/{name}.tif', image, photometric='rgb')
    tif(f'{root}/{split}/{folders[1]}/{name}.tif', height.astype(np.float32))
    tif(f'{root}/{split}/{folders[2]}/{name}.tif', np.array(codes, np.uint8)[labels])
    if sar is not None:
        tif(f'{root}/{split}/sar/{name}.tif', sar)


def make_split_folders(root, split, names, folders=('rgb', 'dsm', 'sem'),
                       scene=lambda i: flat_scene(10 * i, height=i, label=i % 2)):
    """Samples `names` of one split; scene(i) gives the i-th one's content (by
    default image 10 i, height i, class i % 2)."""
    for i, name in enumerate(names):
        write_split_folders(root, split, name, scene(i), folders)
