"""A training dataset of your own region from orthophotos and LiDAR heights.

    python prepare_dataset.py NAME --images ORTHO [ORTHO ...]
        (--dsm DSM [DSM ...] --dtm DTM [DTM ...] | --ndsm NDSM [NDSM ...])
        [--labels LABELS [LABELS ...]] [--gsd METRES] [--tile PIXELS]
        [--block TILES] [--split 0.8,0.1,0.1] [--bands 1,2,3] [--min-valid 0.5]
        [--negative METRES] [--unlabelled VALUE] [--overwrite] [--set NAME=VALUE ...]

Each argument is a file or a folder of files, in any CRS, resolution and
tiling GDAL reads. Everything is resampled onto one grid (the first
orthophoto's CRS and pixel size, or --gsd metres), the nDSM is DSM - DTM,
and the grid is cut into --tile x --tile pixel tiles, split into train /
valid / test by spatial blocks whose tiles never touch another split's.
The result is <shortcut_path>/NAME/ in the split_folders layout
(train/ valid/ test/, each rgb/ dsm/ and, with --labels, sem/) with
dataset.json beside it, so `--set dataset_name=NAME` trains, tests and
predicts with its settings (label codes, unlabelled value, crop; no
semantics head without labels) and no edit of config.py. It ends with that
training command.

Inputs are any rasters GDAL opens: files, VRT mosaics, http(s):// and s3:// addresses.
"""
import datetime
import json
import os
import shlex
import shutil
import sys
import time

import numpy as np

import config
from utils import settings
from utils.errors import DatasetError
from utils.raster import HEIGHT_NODATA   # read back as nodata by utils/datasets.py

STAGING = '.tiles'      # tiles wait here until the split is known


def parse(argv=None):
    p = settings.parser(__doc__.splitlines()[0])
    p.add_argument('name', help='dataset name: the folder under shortcut_path')
    p.add_argument('--images', nargs='+', required=True, metavar='ORTHO',
                   help='orthophoto files or folders')
    p.add_argument('--dsm', nargs='+', metavar='DSM', help='surface model files or folders')
    p.add_argument('--dtm', nargs='+', metavar='DTM', help='terrain model files or folders')
    p.add_argument('--ndsm', nargs='+', metavar='NDSM',
                   help='normalised DSM (heights above ground) instead of --dsm and --dtm')
    p.add_argument('--labels', nargs='+', metavar='LABELS',
                   help='class rasters (integer codes) or folders')
    p.add_argument('--gsd', type=float, help='pixel size in the units of the orthophoto '
                   "CRS (default: the first orthophoto's)")
    p.add_argument('--tile', type=int, default=512, help='tile side in pixels (default 512)')
    p.add_argument('--block', type=int, default=4,
                   help='side of the split blocks in tiles (default 4)')
    p.add_argument('--split', default='0.8,0.1,0.1',
                   help='shares of the blocks for train,valid,test (default 0.8,0.1,0.1)')
    p.add_argument('--bands', default='1,2,3',
                   help='orthophoto bands, in the order the network takes them (default 1,2,3)')
    p.add_argument('--min-valid', type=float, default=0.5,
                   help='drop tiles with a smaller share of valid pixels (default 0.5)')
    p.add_argument('--negative', type=float, default=1.0,
                   help='nDSM values from -NEGATIVE to 0 become 0, lower ones nodata '
                        '(default 1.0, height units)')
    p.add_argument('--unlabelled', type=int,
                   help="label value of unlabelled pixels (default: the label file's "
                        "nodata value, else 255)")
    p.add_argument('--overwrite', action='store_true', help='replace an existing dataset')
    args = settings.parse_args(p, argv)
    if bool(args.ndsm) == bool(args.dsm or args.dtm) or (args.dsm and not args.dtm) or \
            (args.dtm and not args.dsm):
        p.error('give --dsm and --dtm, or --ndsm')
    try:
        args.fractions = [float(x) for x in args.split.split(',')]
    except ValueError:
        args.fractions = []
    if len(args.fractions) != 3 or min(args.fractions) < 0 or sum(args.fractions) <= 0:
        p.error(f'--split {args.split}: give three shares train,valid,test, e.g. 0.8,0.1,0.1')
    try:
        args.band_list = [int(b) for b in args.bands.split(',')]
    except ValueError:
        args.band_list = []
    if len(args.band_list) != 3 or min(args.band_list) < 1:
        p.error(f'--bands {args.bands}: give three 1-based band numbers, e.g. 1,2,3')
    if args.tile < 32 or args.block < 1 or args.gsd is not None and args.gsd <= 0 or \
            not 0 <= args.min_valid <= 1 or args.negative < 0:
        p.error('--tile >= 32, --block >= 1, --gsd > 0, --min-valid in [0, 1] and '
                '--negative >= 0, please')
    published = [k for k in config.DATASETS if args.name.startswith(k)]
    if published:
        p.error(f"{args.name}: names starting with {published[0]!r} are the published "
                f"dataset's, with its own settings; choose another name")
    return args


def main(args):
    from utils import regions
    import rasterio

    root = os.path.join(config.shortcut_path, args.name)
    if os.path.exists(root) and os.listdir(root):
        if not args.overwrite:
            raise DatasetError(f"{root} exists. Fix: choose another NAME, or --overwrite.")
        shutil.rmtree(root)
    started = time.perf_counter()
    paths = {role: regions.find_rasters(getattr(args, role), f'--{role}')
             for role in ('images', 'dsm', 'dtm', 'ndsm', 'labels') if getattr(args, role)}
    with rasterio.Env(GDAL_CACHEMAX=regions.GDAL_CACHE_MB):
        layers = open_layers(paths, args)
        try:
            stats = cut_tiles(layers, root, args)
            stats.update(split_and_move(root, stats, args))
            record = describe(args, paths, layers, stats)
        finally:
            for role, layer in layers.items():
                if layer and role != 'grid':
                    layer.close()
    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump(record, f, indent=2)
    summary(root, record, time.perf_counter() - started, args.set)


def open_layers(paths, args):
    """The grid, and a Layer (mosaic on it) per role given."""
    from utils import regions
    groups = [role for role in ('images', 'ndsm', 'dsm', 'dtm') if role in paths]
    files = [p for group in paths.values() for p in group]
    bar = _bar(len(files), 'open', 'files')
    opened = {}
    try:
        for role in groups:
            opened[role] = [regions.open_raster(p, f'--{role}') for p in paths[role]]
        grid = regions.make_grid(*opened.values(), gsd=args.gsd)
    finally:
        for group in opened.values():
            for src in group:
                src.close()
    layers = {'grid': grid}
    done = 0
    for role, bands in (('images', args.band_list), ('dsm', None), ('dtm', None),
                        ('ndsm', None), ('labels', None)):
        layers[role] = None
        if role in paths:
            layers[role] = regions.Layer(paths[role], 'image' if role == 'images' else role,
                                         grid, bands)
            done += len(paths[role])
            bar.update(done)
    if layers['labels'] and layers['labels'].dtype.kind not in 'ui':
        raise DatasetError(f"{paths['labels'][0]}: label values are "
                           f"{layers['labels'].dtype}; class rasters hold whole numbers. "
                           f"Fix: convert it to integer codes.")
    return layers


def _bar(total, what, unit):
    from utils.progress import Bar
    return Bar(total, what, unit)


def cut_tiles(layers, root, args):
    """Write every tile with enough valid pixels under root/.tiles; return the counts."""
    from utils import regions
    grid = layers['grid']
    windows = regions.tile_windows(grid, args.tile)
    if not windows:
        raise DatasetError(f"the common area of the orthophotos and heights is "
                           f"{grid.width} x {grid.height} px, smaller than one --tile "
                           f"{args.tile}. Fix: a smaller --tile.")
    labels = layers['labels']
    fill = args.unlabelled
    if labels and fill is None:
        fill = int(labels.nodata) if labels.nodata is not None and \
            float(labels.nodata).is_integer() else 255
    # Per kept tile: (lowest, highest height, {class: pixels}) of its valid
    # pixels; the summary adds up the tiles the split keeps.
    stats = dict(kept={}, nodata_dropped=0, fill=fill)
    for sub in ('image', 'height', 'labels'):
        os.makedirs(os.path.join(root, STAGING, regions.FOLDERS[sub]), exist_ok=True)
    bar = _bar(len(windows), 'tiles', 'tiles')
    nbits = _nbits(layers)
    for done, ((row, col), window) in enumerate(sorted(windows.items()), 1):
        image, image_valid = layers['images'].read(window)
        if layers['ndsm']:
            height, height_valid = layers['ndsm'].read(window, np.nan)
            height, height_valid = regions.clip_negative(height[0], height_valid,
                                                         args.negative)
        else:
            dsm, dsm_valid = layers['dsm'].read(window, np.nan)
            dtm, dtm_valid = layers['dtm'].read(window, np.nan)
            height, height_valid = regions.ndsm(dsm[0], dtm[0], dsm_valid, dtm_valid,
                                                args.negative)
        valid = image_valid & height_valid
        if valid.mean() < args.min_valid:
            stats['nodata_dropped'] += 1
            bar.update(done)
            continue
        name = f'r{row:04d}_c{col:04d}'
        place = dict(crs=grid.crs, transform=grid.window_transform(window))
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
    from utils import regions
    src = layers['images'].sources[0].src
    full = regions.band_scale(src, 1)
    dtype = np.dtype(src.dtypes[0])
    if full and dtype.kind in 'ui' and full < np.iinfo(dtype).max:
        return int(full).bit_length()
    return None


def _write(root, kind, name, bands, **kwargs):
    """One tile [bands, h, w] as a COG (utils/raster.py: CogWriter's keywords)."""
    from utils import raster, regions
    path = os.path.join(root, STAGING, regions.FOLDERS[kind], name + '.tif')
    raster.write_cog(path, np.moveaxis(bands, 0, -1), **kwargs)


def split_and_move(root, stats, args):
    """Move the staged tiles into their split folders; drop the buffer tiles."""
    from utils import regions
    split, dropped = regions.split_tiles(list(stats['kept']), args.block, args.fractions,
                                         config.seed)
    staging = os.path.join(root, STAGING)
    for s in regions.SPLITS:
        for kind in ('image', 'height', 'labels'):
            if kind != 'labels' or args.labels:
                os.makedirs(os.path.join(root, s, regions.FOLDERS[kind]), exist_ok=True)
    bar = _bar(len(stats['kept']), 'split', 'tiles')
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


def describe(args, paths, layers, stats):
    """dataset.json: where the tiles came from and the settings that train on them."""
    from utils import regions
    grid = layers['grid']
    src = layers['images'].sources[0].src
    counts = {s: sum(1 for v in stats['split'].values() if v == s) for s in regions.SPLITS}
    tile_km2 = (args.tile * grid.gsd) ** 2 / 1e6
    height_file = (paths.get('ndsm') or paths['dsm'])[0]
    with regions.open_raster(height_file, 'the heights') as h:
        unit = regions.height_unit(h)
    final = [stats['kept'][t] for t in stats['split']]
    classes = {}
    for _, _, tile_classes in final:
        for k, n in tile_classes.items():
            classes[k] = classes.get(k, 0) + n
    classes = dict(sorted(classes.items()))
    fill = stats['fill']
    codes = [k for k in classes if k != fill]
    unlabelled = fill if args.labels and classes.get(fill) else None
    run_settings = dict(layout='split_folders',
                        cropSize=min(256, args.tile // 32 * 32))
    if args.labels:
        if not codes:
            raise DatasetError(f"{paths['labels'][0]}: every kept pixel is unlabelled "
                               f"({fill}). Fix: give label files of this area, or none.")
        run_settings.update(label_codes=codes, unlabelled_code=unlabelled)
    else:   # no sem/ folders: nothing to train or score the semantics head on
        run_settings.update(sem_flag=False)
    return {
        'name': args.name,
        'created': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': ' '.join(sys.argv),
        'sources': {role: [os.path.abspath(p) for p in files] for role, files in paths.items()},
        'crs': regions.crs_text(grid.crs),
        'pixel_size': grid.gsd,
        'crs_unit': grid.crs.linear_units if grid.crs.is_projected else 'degree',
        'grid': dict(left=grid.left, top=grid.top, width=grid.width, height=grid.height),
        'bands': args.band_list,
        'radiometric_scale': regions.band_scale(src, args.band_list[0]),
        'image_dtype': str(layers['images'].dtype),
        'height_unit': unit,
        'ndsm_rule': (f'DSM - DTM where both are valid; values from -{args.negative:g} to 0 '
                      f'become 0, lower ones nodata') if not args.ndsm else
                     (f'given nDSM; values from -{args.negative:g} to 0 become 0, lower '
                      f'ones nodata'),
        'resampling': {role: sorted({s.resampling.name for s in layer.sources})
                       for role, layer in layers.items() if role != 'grid' and layer},
        'label_codes': codes if args.labels else None,
        'unlabelled_value': unlabelled,
        'tile': args.tile,
        'block': args.block,
        'split_shares': args.fractions,
        'seed': config.seed,
        'tiles': dict(counts, dropped_nodata=stats['nodata_dropped'],
                      dropped_buffer=stats['buffer_dropped']),
        'area_km2': {s: round(n * tile_km2, 6) for s, n in counts.items()},
        'height_range': [min(t[0] for t in final), max(t[1] for t in final)],
        'class_histogram': {str(k): v for k, v in classes.items()},
        'settings': run_settings,
    }


def summary(root, record, seconds, sets):
    tiles, area = record['tiles'], record['area_km2']
    print(f"\n{root}: {record['crs']}, {record['pixel_size']:g} {record['crs_unit']} "
          f"pixels, tiles of {record['tile']} px, in {seconds:.0f} s")
    for s in ('train', 'valid', 'test'):
        print(f"  {s:<6}{tiles[s]:>6} tiles  {area[s]:.4f} km2")
    print(f"  dropped: {tiles['dropped_nodata']} mostly nodata, {tiles['dropped_buffer']} "
          f"touching another split")
    low, high = record['height_range']
    print(f"  heights {low:.2f} .. {high:.2f} {record['height_unit']}")
    histogram = record['class_histogram']
    if histogram:
        total = sum(histogram.values())
        print('  classes ' + ', '.join(f"{k}: {v / total:.1%}" for k, v in histogram.items()) +
              (f" (unlabelled {record['unlabelled_value']})"
               if record['unlabelled_value'] is not None else ''))
    print(f"Train with: {train_command(record['name'], sets)}")


def train_command(name, sets):
    """The command that trains on the dataset, typed where this one was: its
    settings are in its dataset.json, so only its name and, when --set moved
    it, shortcut_path need saying."""
    words = ['python', 'train_mtl.py', '--set', f'dataset_name={name}']
    moved = [s for s in sets if s.split('=', 1)[0].strip() == 'shortcut_path']
    for pair in moved[-1:]:
        words += ['--set', pair]
    return shlex.join(words)


if __name__ == '__main__':
    sys.exit(settings.run_main(main, parse(), tensorflow=False))
