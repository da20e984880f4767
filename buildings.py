"""Heights of buildings from predicted height maps: LoD1 buildings out.

    python buildings.py HEIGHTS [HEIGHTS ...] --out FILE.gpkg
        [--footprints FILE | --building-class VALUES] [--min-area M2]
        [--roof 70p] [--dtm FILE] [--set NAME=VALUE ...]

HEIGHTS: height maps predict.py wrote (<name>_height.tif) or folders of
them. Footprints: --footprints, any vector file OGR reads (GeoPackage,
GeoJSON, Shapefile, FlatGeobuf), reprojected to the height maps' CRS; or,
without it, traced from the class maps beside the height maps
(<name>_sem.tif, the dataset_name's building class or --building-class
values): polygonised with holes, regions under --min-area m^2 dropped,
simplified to the pixel size.
Per building, coverage-weighted (a cell counts by its share inside the
footprint): minimum, median, 70th percentile, maximum, mean and spread of
height, cells used, share with valid heights, area; the LoD1 roof is the
--roof statistic (default 70p, the Dutch 3D building register's). With
--dtm the ground height (median of the DTM) sets where each block stands.
Writes FILE.gpkg (layer 'buildings') and FILE.city.json (CityJSON LoD1).

Example: python buildings.py output/predict/ --out buildings.gpkg --footprints bag.gpkg
"""
import os
import sys

import config
from utils import settings
from utils.errors import DatasetError, SettingError

HEIGHT_SUFFIX = '_height.tif'
CLASS_SUFFIX = '_sem.tif'


def parse(argv=None):
    from utils import buildings
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('heights', nargs='+', metavar='HEIGHTS',
                   help=f"height maps (*{HEIGHT_SUFFIX}) or folders of them")
    p.add_argument('--out', required=True, help='the GeoPackage to write (FILE.gpkg)')
    p.add_argument('--footprints', help='vector file of footprints (default: traced '
                                        'from the class maps)')
    p.add_argument('--building-class', metavar='VALUES',
                   help="class-map values of buildings, comma-separated (default: the "
                        "dataset_name's building class)")
    p.add_argument('--min-area', type=float, default=10.0,
                   help='traced footprints smaller than this are dropped (m^2, default 10)')
    p.add_argument('--roof', choices=sorted(buildings.ROOF_RULES), default='70p',
                   help='statistic of the LoD1 roof height (default 70p)')
    p.add_argument('--dtm', help='terrain heights (a raster in the same CRS) for the ground')
    args = settings.parse_args(p, argv)
    if args.min_area < 0:
        raise SettingError(f"--min-area {args.min_area:g}: use an area >= 0 (m^2)")
    if not args.out.lower().endswith('.gpkg'):
        raise SettingError(f"--out {args.out}: name a GeoPackage, e.g. --out buildings.gpkg")
    return args


def parse_classes(text):
    try:
        return [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise SettingError(f"--building-class {text}: give class-map values as whole "
                           f"numbers, e.g. --building-class 8,9")


def height_maps(inputs):
    """The height maps named by `inputs`: files and addresses as given,
    folders' *_height.tif."""
    from utils import raster
    files = []
    for item in inputs:
        found = raster.find_images([item], kind='height map')
        if os.path.isdir(item):
            found = [p for p in found if p.endswith(HEIGHT_SUFFIX)]
            if not found:
                raise DatasetError(f"{item}: no *{HEIGHT_SUFFIX} in this folder. Fix: name "
                                   f"the folder predict.py wrote, or the height maps "
                                   f"themselves.")
        files += found
    return files


def _crs_check(paths):
    from utils import raster
    grids = [raster.map_grid(p) for p in paths]
    for path, grid in zip(paths, grids):
        if grid['crs'] is None:
            raise DatasetError(f"{path}: the height map has no CRS; predict from a "
                               f"georeferenced image, or set one (gdal_edit.py -a_srs "
                               f"EPSG:XXXX {path})")
        if grid['crs'].is_geographic:
            raise DatasetError(f"{path} is in degrees ({grid['crs']}): areas and heights per "
                               f"metre need a projected CRS; warp it (gdalwarp -t_srs "
                               f"EPSG:<UTM zone> {path} out.tif)")
        if grid['crs'] != grids[0]['crs']:
            raise DatasetError(f"{path} is in {grid['crs']}, {paths[0]} in "
                               f"{grids[0]['crs']}: give height maps of one CRS per run")
    return grids[0]['crs']


def main(argv=None):
    import numpy as np
    from utils import buildings, raster
    from utils.progress import Bar
    args = parse(argv)
    paths = height_maps(args.heights)
    crs = _crs_check(paths)
    if args.dtm and (dtm_crs := raster.map_grid(args.dtm)['crs']) != crs:
        raise DatasetError(f"--dtm {args.dtm} is in {dtm_crs}, the height maps in {crs}: "
                           f"warp it to theirs (gdalwarp -t_srs {crs} {args.dtm} dtm.tif)")
    problems = []
    if args.footprints:
        geoms, fields, listed = buildings.read_footprints(args.footprints, crs)
        problems += [f"{args.footprints}: footprint {i + 1} {why}" for i, why in listed]
        source = args.footprints
    else:
        values = parse_classes(args.building_class) if args.building_class else \
            raster.class_map(config.label_codes)['values'][buildings.building_classes(
                config.dataset_name, config.label_codes)].tolist()
        if not values:
            raise SettingError(f"dataset_name {config.dataset_name!r} has no building "
                               f"class to trace: give --footprints FILE, --building-class "
                               f"VALUES, or the dataset the weights were trained on "
                               f"(--set dataset_name=...)")
        parts, origin = [], []
        for path in paths:
            class_path = path[:-len(HEIGHT_SUFFIX)] + CLASS_SUFFIX \
                if path.endswith(HEIGHT_SUFFIX) else None
            if not class_path or not os.path.isfile(class_path):
                problems.append(f"{path}: no class map beside it ({class_path}); predict "
                                f"with --outputs height,sem or give --footprints")
                continue
            traced, grid, colours = buildings.trace_footprints(class_path, values,
                                                               args.min_area)
            expected = raster.class_map(config.label_codes)['colormap']
            if not args.building_class and colours and any(
                    v < len(expected) and v in colours and
                    tuple(colours[v]) != tuple(expected[v]) for v in values):
                problems.append(f"{class_path}: its colour table is not dataset_name "
                                f"{config.dataset_name!r}'s: traced {values} as that "
                                f"dataset's buildings; set the dataset of the weights "
                                f"(--set dataset_name=...) or --building-class")
            if not len(traced):
                problems.append(f"{class_path}: no building class ({values}) in it: "
                                f"nothing traced; give --footprints FILE if it has buildings")
            parts.append(traced)
            origin += [os.path.basename(class_path)] * len(traced)
        geoms = np.concatenate(parts) if parts else np.array([], dtype=object)
        fields = {'traced_from': np.array(origin, dtype=object)}
        source = f"traced from the building class {values} of the class maps"
    print(f"{len(geoms)} footprint(s) ({source}) on {len(paths)} height map(s)")
    bar = Bar(max(len(geoms), 1), 'heights', 'buildings')
    attrs, outside = buildings.building_heights(paths, geoms, dtm=args.dtm, roof=args.roof,
                                                progress=bar.update)
    if len(outside):
        problems.append(f"{len(outside)} footprint(s) of {source} lie on no height map "
                        f"(e.g. footprint {outside[0] + 1}): kept with empty heights; "
                        f"check that they are in the CRS their file declares, and give "
                        f"the height maps that cover them")
    empty = int(np.sum(~np.isfinite(attrs['h_dak_lod1'])))
    metadata = {'UNITS': 'metres (heights), square metres (opp_grond)',
                'HEIGHTS': ('above the ground (nDSM); h_maaiveld: ground of the DTM '
                            + os.path.basename(args.dtm)) if args.dtm else
                           'above the ground (nDSM); no DTM: h_maaiveld empty',
                'ROOF': f'h_dak_lod1 = {buildings.ROOF_RULES[args.roof]}',
                'WEIGHTING': 'a cell counts by its share inside the footprint (exactextract)',
                'FOOTPRINTS': source,
                'HEIGHT_MAPS': ' '.join(os.path.basename(p) for p in paths),
                'EMPTY': f'{empty} building(s) without valid heights'}
    metadata.update({f'ATTRIBUTE_{n}': f'{u}: {m}' for n, u, m in buildings.ATTRIBUTES})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    buildings.write_layer(args.out, geoms, fields, attrs, crs, metadata)
    city = args.out[:-len('.gpkg')] + '.city.json'
    buildings.write_cityjson(city, geoms, attrs, crs, fields,
                             title=f"LoD1 buildings, roofs at {args.roof} ({source})")
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    valid = np.isfinite(attrs['h_dak_lod1'])
    if valid.any():
        print(f"roof heights ({args.roof}): median {np.median(attrs['h_dak_lod1'][valid]):.2f} m, "
              f"max {np.max(attrs['h_dak_lod1'][valid]):.2f} m")
    print(f"done: {len(geoms)} building(s), {empty} without valid heights (kept, empty "
          f"values) -> {args.out} (layer buildings), {city}")


if __name__ == '__main__':
    sys.exit(settings.run_main(main, tensorflow=False))
