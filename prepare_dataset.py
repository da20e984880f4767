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
import json
import os
import shlex
import shutil
import sys
import time

import config
from utils import settings
from utils.errors import DatasetError


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
    published = config.published_name(args.name)
    if published:
        p.error(f"{args.name}: names starting with {published!r} are the published "
                f"dataset's, with its own settings; choose another name")
    return args


def main(args):
    import rasterio
    from utils.geo.warp import GDAL_CACHE_MB
    from utils.gis import regions, tiles

    cfg = settings.current()
    recipe = tiles.Recipe(args.name, args.tile, args.block, tuple(args.fractions),
                          tuple(args.band_list), args.min_valid, args.negative,
                          args.unlabelled, args.gsd, cfg.seed)
    root = os.path.join(cfg.shortcut_path, args.name)
    if os.path.exists(root) and os.listdir(root):
        if not args.overwrite:
            raise DatasetError(f"{root} exists. Fix: choose another NAME, or --overwrite.")
        shutil.rmtree(root)
    started = time.perf_counter()
    paths = {role: regions.find_rasters(getattr(args, role), f'--{role}')
             for role in ('images', 'dsm', 'dtm', 'ndsm', 'labels') if getattr(args, role)}
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        layers = tiles.open_layers(paths, recipe)
        try:
            stats = tiles.cut_tiles(layers, root, recipe)
            stats.update(tiles.split_and_move(root, stats, recipe, bool(args.labels)))
            record = tiles.describe(recipe, paths, layers, stats)
        finally:
            for role, layer in layers.items():
                if layer and role != 'grid':
                    layer.close()
    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump(record, f, indent=2)
    summary(root, record, time.perf_counter() - started, args.set)


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
