"""Heights of buildings from predicted height maps: LoD1 buildings out.

    python buildings.py HEIGHTS [HEIGHTS ...] --out FILE.gpkg|FILE.parquet
        [--footprints FILE | --building-class VALUES] [--min-area M2]
        [--roof 70p] [--dtm FILE [--vertical-crs EPSG]] [--keep-outside] [--max-sigma M]
        [--set NAME=VALUE ...]

HEIGHTS: height maps predict.py wrote (<name>_height.tif) or folders of
them. Footprints: --footprints, any vector file OGR reads (GeoPackage,
GeoJSON, Shapefile, FlatGeobuf), only those meeting the height maps read
(the others counted; --keep-outside writes them), reprojected to the
height maps' CRS; or, without it, traced from the class maps beside the
height maps
(<name>_sem.tif, the dataset_name's building class or --building-class
values): polygonised with holes, regions under --min-area m^2 dropped,
simplified to the pixel size.
Per building, coverage-weighted (a cell counts by its share inside the
footprint): minimum, median, 70th percentile, maximum, mean and spread of
height, cells used, share with valid heights, area; the LoD1 roof is the
--roof statistic (default 70p, the Dutch 3D building register's). With
--dtm the ground height (median of the DTM) sets where each block stands.
Where predict.py wrote <name>_uncertainty.tif beside a height map, each
building's height uncertainty (h_dak_sigma: the RMS of its cells' sigma)
and h_dak_uncertain, true above --max-sigma.
Writes FILE.gpkg (layer 'buildings') or FILE.parquet (GeoParquet), and FILE.city.json
(CityJSON LoD1).

Example: python buildings.py output/predict/ --out buildings.gpkg --footprints bag.gpkg
"""
import os
import sys

from utils import settings
from utils.errors import DatasetError, SettingError
from utils.gis.heights import ATTRIBUTES, ROOF_RULES


def parse(argv=None):
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('heights', nargs='+', metavar='HEIGHTS',
                   help="height maps (*_height.tif) or folders of them")
    p.add_argument('--out', required=True,
                   help='the GeoPackage (FILE.gpkg) or GeoParquet (FILE.parquet) to write')
    p.add_argument('--footprints', help='vector file of footprints (default: traced '
                                        'from the class maps)')
    p.add_argument('--building-class', metavar='VALUES',
                   help="class-map values of buildings, comma-separated (default: the "
                        "dataset_name's building class)")
    p.add_argument('--min-area', type=float, default=10.0,
                   help='traced footprints smaller than this are dropped (m^2, default 10)')
    p.add_argument('--roof', choices=sorted(ROOF_RULES), default='70p',
                   help='statistic of the LoD1 roof height (default 70p)')
    p.add_argument('--dtm', help='terrain heights (a raster in the same CRS) for the ground')
    p.add_argument('--vertical-crs', type=int, metavar='EPSG',
                   help="vertical CRS of the --dtm heights (e.g. 5709, NAP), making the "
                        "CityJSON's referenceSystem 3D")
    p.add_argument('--keep-outside', action='store_true',
                   help='read every footprint of --footprints and write those on no '
                        'height map too, with empty heights (default: counted only)')
    p.add_argument('--max-sigma', type=float, default=2.0,
                   help='h_dak_uncertain is true above this height uncertainty (m, default 2)')
    args = settings.parse_args(p, argv)
    if args.max_sigma < 0:
        raise SettingError(f"--max-sigma {args.max_sigma:g}: use a height uncertainty >= 0 (m)")
    if args.min_area < 0:
        raise SettingError(f"--min-area {args.min_area:g}: use an area >= 0 (m^2)")
    if not args.out.lower().endswith(('.gpkg', '.parquet')):
        raise SettingError(f"--out {args.out}: name a GeoPackage or a GeoParquet file, e.g. "
                           f"--out buildings.gpkg or --out buildings.parquet")
    if args.vertical_crs is not None:
        check_vertical(args)
    if args.building_class:
        try:
            args.building_class = [int(v) for v in args.building_class.split(',') if v.strip()]
        except ValueError:
            raise SettingError(f"--building-class {args.building_class}: give class-map "
                               f"values as whole numbers, e.g. --building-class 8,9") from None
    return args


def check_vertical(args):
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    if not args.dtm:
        raise SettingError(f"--vertical-crs {args.vertical_crs}: without --dtm the CityJSON's "
                           f"heights are above the ground, which no vertical CRS describes; "
                           f"give --dtm, or leave --vertical-crs out")
    try:
        vertical = CRS.from_epsg(args.vertical_crs).to_wkt().startswith(('VERT_CS', 'VERTCRS'))
    except CRSError:
        vertical = False
    if not vertical:
        raise SettingError(f"--vertical-crs {args.vertical_crs}: not the EPSG code of a "
                           f"vertical CRS; give that of the --dtm heights (e.g. 5709, NAP)")


def main(argv=None):
    import numpy as np
    from utils.data.labels import building_classes
    from utils.gis import footprints, heights, lod1
    from utils.progress import Bar
    args = parse(argv)
    cfg = settings.current()
    paths = heights.height_maps(args.heights)
    crs = heights.common_crs(paths, args.dtm)
    problems, left_out = [], 0
    if args.footprints:
        geoms, fields, listed, left_out, file_crs = footprints.read_footprints(
            args.footprints, crs, None if args.keep_outside else heights.extent(paths))
        problems += [f"{args.footprints}: footprint FID {i} {why}" for i, why in listed]
        source = args.footprints
    else:
        values = args.building_class or footprints.class_values(cfg, building_classes(cfg))
        if not values:
            raise SettingError(f"dataset_name {cfg.dataset_name!r} has no building "
                               f"class to trace: give --footprints FILE, --building-class "
                               f"VALUES, or the dataset the weights were trained on "
                               f"(--set dataset_name=...)")
        geoms, fields, traced = footprints.trace_beside(paths, values, args.min_area,
                                                        cfg, checked=not args.building_class)
        problems += traced
        source = f"traced from the building class {values} of the class maps"
        if args.building_class and not len(geoms):
            raise SettingError(f"--building-class {','.join(map(str, values))}: no class "
                               f"map beside the height maps holds it (they hold "
                               f"{footprints.values_held(paths)}); give the class-map "
                               f"values of buildings")
    print(f"{len(geoms)} footprint(s) ({source}) on {len(paths)} height map(s)")
    bar = Bar(max(len(geoms), 1), 'heights', 'buildings')
    attrs, outside = heights.building_heights(paths, geoms, dtm=args.dtm, roof=args.roof,
                                              max_sigma=args.max_sigma, progress=bar.update)
    if not any(heights.sigma_map(path) for path in paths):
        problems.append("no <name>_uncertainty.tif beside the height maps: h_dak_sigma empty "
                        "(predict with --outputs height,uncertainty to have it)")
    if args.footprints and len(outside) + left_out and len(outside) == len(geoms):
        def where(bounds, of):
            return f"{', '.join(f'{v:.6g}' for v in bounds)} in {of}"
        theirs = where(footprints.file_extent(args.footprints), file_crs)
        raise DatasetError(f"{args.footprints}: none of its {len(outside) + left_out} "
                           f"footprint(s) ({theirs}) lie on the {len(paths)} height map(s) "
                           f"({where(heights.extent(paths), crs)}); check the CRS the file "
                           f"declares and give the height maps that cover them")
    if len(outside) and not args.keep_outside:
        keep = np.setdiff1d(np.arange(len(geoms)), outside)
        geoms, left_out = geoms[keep], left_out + len(outside)
        fields = {k: v[keep] for k, v in fields.items()}
        attrs = {k: v[keep] for k, v in attrs.items()}
    elif len(outside):
        problems.append(f"{len(outside)} footprint(s) of {source} lie on no height map "
                        f"(e.g. footprint {outside[0] + 1}): kept with empty heights")
    if left_out:
        print(f"{left_out} footprint(s) of {source} outside the height maps: not written "
              f"(--keep-outside writes them, with empty heights)")
    empty = int(np.sum(~np.isfinite(attrs['h_dak_lod1'])))
    metadata = {'UNITS': 'metres (heights), square metres (opp_grond)',
                'HEIGHTS': ('above the ground (nDSM); h_maaiveld: ground of the DTM '
                            + os.path.basename(args.dtm)) if args.dtm else
                           'above the ground (nDSM); no DTM: h_maaiveld empty',
                'ROOF': f'h_dak_lod1 = {ROOF_RULES[args.roof]}',
                'WEIGHTING': 'a cell counts by its share inside the footprint (exactextract)',
                'FOOTPRINTS': source,
                'HEIGHT_MAPS': ' '.join(os.path.basename(p) for p in paths),
                'EMPTY': f'{empty} building(s) without valid heights',
                'UNCERTAIN': f'h_dak_uncertain: h_dak_sigma > {args.max_sigma:g} m'}
    metadata.update({f'ATTRIBUTE_{n}': f'{u}: {m}' for n, u, m in ATTRIBUTES})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    stem, kind = os.path.splitext(args.out)
    write = lod1.write_parquet if kind.lower() == '.parquet' else lod1.write_layer
    write(args.out, geoms, fields, attrs, crs, metadata)
    city = stem + '.city.json'
    if args.dtm and args.vertical_crs is None:
        problems.append(f"--dtm {args.dtm}: the CityJSON's heights are the DTM's, whose "
                        f"vertical CRS is not given: its referenceSystem is {crs} alone; "
                        f"give --vertical-crs EPSG (e.g. 5709, NAP) for a 3D one")
    lod1.write_cityjson(city, geoms, attrs, crs, fields,
                        title=f"LoD1 buildings, roofs at {args.roof} ({source})",
                        vertical=args.vertical_crs)
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    valid = np.isfinite(attrs['h_dak_lod1'])
    if valid.any():
        print(f"roof heights ({args.roof}): median {np.median(attrs['h_dak_lod1'][valid]):.2f} m, "
              f"max {np.max(attrs['h_dak_lod1'][valid]):.2f} m")
    known = ~np.ma.getmaskarray(attrs['h_dak_uncertain'])
    if known.any():
        print(f"height uncertainty: {int(attrs['h_dak_uncertain'].filled(False).sum())} of "
              f"{int(known.sum())} building(s) above --max-sigma {args.max_sigma:g} m")
    print(f"done: {len(geoms)} building(s), {empty} without valid heights (kept, empty "
          f"values) -> {args.out} (layer buildings), {city}")


if __name__ == '__main__':
    sys.exit(settings.run_main(main, tensorflow=False))
