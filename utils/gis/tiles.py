"""A prepared region's tiles: the inputs opened as mosaics on the region's
grid, every tile with enough valid pixels written as COGs (image, nDSM and
labels), moved into its split, and the whole described in dataset.json
(prepare_dataset.py's steps, as a Recipe says).
"""
import dataclasses
import datetime
import os
import shutil
import sys

import numpy as np

from utils.data.layouts import SPLITS
from utils.errors import DatasetError
from utils.geo.files import open_raster
from utils.geo.image import full_scale
from utils.geo.warp import Layer
from utils.geo.write import HEIGHT_NODATA, write_cog
from utils.gis import regions
from utils.progress import Bar

STAGING = '.tiles'      # tiles wait here until the split is known


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a region becomes a dataset (prepare_dataset.py's options): its
    `name`; `tile` px tiles in split blocks of `block` tiles drawn with
    `fractions` (train, valid, test) and `seed`; the orthophoto `bands`
    (1-based); tiles with a smaller share of valid pixels than `min_valid`
    dropped; nDSM values from -`negative` to 0 made 0; `unlabelled`: the label
    value of unlabelled pixels (None: the label file's nodata, else 255);
    `gsd`: the pixel size (None: the first orthophoto's)."""
    name: str
    tile: int = 512
    block: int = 4
    fractions: tuple = (0.8, 0.1, 0.1)
    bands: tuple = (1, 2, 3)
    min_valid: float = 0.5
    negative: float = 1.0
    unlabelled: int = None
    gsd: float = None
    seed: int = 42


def open_layers(paths, recipe):
    """The grid, and a Layer (mosaic on it) per role given."""
    groups = [role for role in ('images', 'ndsm', 'dsm', 'dtm') if role in paths]
    files = [p for group in paths.values() for p in group]
    bar = Bar(len(files), 'open', 'files')
    opened = {}
    try:
        for role in groups:
            opened[role] = [open_raster(p, f'--{role}') for p in paths[role]]
        grid = regions.make_grid(*opened.values(), gsd=recipe.gsd)
    finally:
        for group in opened.values():
            for src in group:
                src.close()
    layers = {'grid': grid}
    done = 0
    for role, bands in (('images', list(recipe.bands)), ('dsm', None), ('dtm', None),
                        ('ndsm', None), ('labels', None)):
        layers[role] = None
        if role in paths:
            layers[role] = Layer(paths[role], 'image' if role == 'images' else role, grid,
                                 bands)
            done += len(paths[role])
            bar.update(done)
    if layers['labels'] and layers['labels'].dtype.kind not in 'ui':
        raise DatasetError(f"{paths['labels'][0]}: label values are "
                           f"{layers['labels'].dtype}; class rasters hold whole numbers. "
                           f"Fix: convert it to integer codes.")
    return layers


def cut_tiles(layers, root, recipe):
    """Write every tile with enough valid pixels under root/.tiles; return the counts."""
    grid = layers['grid']
    windows = grid.tiles(recipe.tile)
    if not windows:
        raise DatasetError(f"the common area of the orthophotos and heights is "
                           f"{grid.width} x {grid.height} px, smaller than one --tile "
                           f"{recipe.tile}. Fix: a smaller --tile.")
    labels = layers['labels']
    fill = recipe.unlabelled
    if labels and fill is None:
        fill = int(labels.nodata) if labels.nodata is not None and \
            float(labels.nodata).is_integer() else 255
    # Per kept tile: (lowest, highest height, {class: pixels}) of its valid
    # pixels; the summary adds up the tiles the split keeps.
    stats = dict(kept={}, nodata_dropped=0, fill=fill)
    for sub in ('image', 'height', 'labels'):
        os.makedirs(os.path.join(root, STAGING, regions.FOLDERS[sub]), exist_ok=True)
    bar = Bar(len(windows), 'tiles', 'tiles')
    nbits = _nbits(layers)
    for done, ((row, col), window) in enumerate(sorted(windows.items()), 1):
        image, image_valid = layers['images'].read(window)
        if layers['ndsm']:
            height, height_valid = layers['ndsm'].read(window, np.nan)
            height, height_valid = regions.clip_negative(height[0], height_valid,
                                                         recipe.negative)
        else:
            dsm, dsm_valid = layers['dsm'].read(window, np.nan)
            dtm, dtm_valid = layers['dtm'].read(window, np.nan)
            height, height_valid = regions.ndsm(dsm[0], dtm[0], dsm_valid, dtm_valid,
                                                recipe.negative)
        valid = image_valid & height_valid
        if valid.mean() < recipe.min_valid:
            stats['nodata_dropped'] += 1
            bar.update(done)
            continue
        name = f'r{row:04d}_c{col:04d}'
        place = dict(grid=grid.part(window))
        _write(root, 'image', name, image, valid=None if image_valid.all() else image_valid,
               nbits=nbits, **place)
        height = np.where(height_valid, height, HEIGHT_NODATA).astype(np.float32)
        _write(root, 'height', name, height[None], nodata=HEIGHT_NODATA, **place)
        if labels:
            classes, classes_valid = labels.read(window, fill)
            classes = classes[0]
            classes[~classes_valid] = fill
            _write(root, 'labels', name, classes[None], resampling='nearest', **place)
            values, counts = np.unique(classes[valid], return_counts=True)
        else:
            values = counts = np.zeros(0, int)
        stats['kept'][(row, col)] = (float(height[valid].min()), float(height[valid].max()),
                                     dict(zip(values.tolist(), counts.tolist())))
        bar.update(done)
    return stats


def _nbits(layers):
    """The orthophoto's declared bit depth (e.g. 12 in uint16; None: its type's),
    kept in the tiles so image_scale = 'auto' scales them as the source."""
    src = layers['images'].sources[0].src
    full = full_scale(src, 1)
    dtype = np.dtype(src.dtypes[0])
    if full and dtype.kind in 'ui' and full < np.iinfo(dtype).max:
        return int(full).bit_length()
    return None


def _write(root, kind, name, bands, **kwargs):
    """One tile [bands, h, w] as a COG (geo/write.py: CogWriter's keywords)."""
    path = os.path.join(root, STAGING, regions.FOLDERS[kind], name + '.tif')
    write_cog(path, np.moveaxis(bands, 0, -1), **kwargs)


def split_and_move(root, stats, recipe, labels):
    """Move the staged tiles into their split folders (`labels`: the
    label tiles too); drop the buffer tiles."""
    split, dropped = regions.split_tiles(list(stats['kept']), recipe.block,
                                         list(recipe.fractions), recipe.seed)
    staging = os.path.join(root, STAGING)
    for s in SPLITS:
        for kind in ('image', 'height', 'labels'):
            if kind != 'labels' or labels:
                os.makedirs(os.path.join(root, s, regions.FOLDERS[kind]), exist_ok=True)
    bar = Bar(len(stats['kept']), 'split', 'tiles')
    for done, (row, col) in enumerate(stats['kept'], 1):
        name = f'r{row:04d}_c{col:04d}.tif'
        for kind in ('image', 'height', 'labels'):
            source = os.path.join(staging, regions.FOLDERS[kind], name)
            if not os.path.exists(source):
                continue
            if (row, col) in split:
                os.replace(source, os.path.join(root, split[(row, col)],
                                                regions.FOLDERS[kind], name))
            else:
                os.remove(source)
        bar.update(done)
    shutil.rmtree(staging)
    return dict(split=split, buffer_dropped=len(dropped))


def describe(recipe, paths, layers, stats):
    """dataset.json: where the tiles came from and the settings that train on them."""
    grid = layers['grid']
    labelled = 'labels' in paths
    src = layers['images'].sources[0].src
    counts = {s: sum(1 for v in stats['split'].values() if v == s) for s in SPLITS}
    tile_km2 = (recipe.tile * grid.res[0]) ** 2 / 1e6
    height_file = (paths.get('ndsm') or paths['dsm'])[0]
    with open_raster(height_file, 'the heights') as h:
        unit = regions.height_unit(h)
    final = [stats['kept'][t] for t in stats['split']]
    classes = {}
    for _, _, tile_classes in final:
        for k, n in tile_classes.items():
            classes[k] = classes.get(k, 0) + n
    classes = dict(sorted(classes.items()))
    fill = stats['fill']
    codes = [k for k in classes if k != fill]
    unlabelled = fill if labelled and classes.get(fill) else None
    run_settings = dict(layout='split_folders',
                        cropSize=min(256, recipe.tile // 32 * 32))
    if labelled:
        if not codes:
            raise DatasetError(f"{paths['labels'][0]}: every kept pixel is unlabelled "
                               f"({fill}). Fix: give label files of this area, or none.")
        run_settings.update(label_codes=codes, unlabelled_code=unlabelled)
    else:   # no sem/ folders: nothing to train or score the semantics head on
        run_settings.update(sem_flag=False)
    return {
        'name': recipe.name,
        'created': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': ' '.join(sys.argv),
        'sources': {role: [os.path.abspath(p) for p in files] for role, files in paths.items()},
        'crs': regions.crs_text(grid.crs),
        'pixel_size': grid.res[0],
        'crs_unit': grid.crs.linear_units if grid.crs.is_projected else 'degree',
        'grid': dict(left=grid.left, top=grid.top, width=grid.width, height=grid.height),
        'bands': list(recipe.bands),
        'radiometric_scale': full_scale(src, recipe.bands[0]),
        'image_dtype': str(layers['images'].dtype),
        'height_unit': unit,
        'ndsm_rule': (f'DSM - DTM where both are valid; values from -{recipe.negative:g} '
                      f'to 0 become 0, lower ones nodata') if 'ndsm' not in paths else
                     (f'given nDSM; values from -{recipe.negative:g} to 0 become 0, lower '
                      f'ones nodata'),
        'resampling': {role: sorted({s.resampling.name for s in layer.sources})
                       for role, layer in layers.items() if role != 'grid' and layer},
        'label_codes': codes if labelled else None,
        'unlabelled_value': unlabelled,
        'tile': recipe.tile,
        'block': recipe.block,
        'split_shares': list(recipe.fractions),
        'seed': recipe.seed,
        'tiles': dict(counts, dropped_nodata=stats['nodata_dropped'],
                      dropped_buffer=stats['buffer_dropped']),
        'area_km2': {s: round(n * tile_km2, 6) for s, n in counts.items()},
        'height_range': [min(t[0] for t in final), max(t[1] for t in final)],
        'class_histogram': {str(k): v for k, v in classes.items()},
        'settings': run_settings,
    }
