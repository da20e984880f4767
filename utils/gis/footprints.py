"""Footprints of buildings: read from a vector file (any format OGR reads,
through pyogrio) and reprojected to the height maps' CRS, or traced from a
class map (the building class polygonised, holes kept, specks dropped,
simplified to the pixel size)."""
import os

import numpy as np

from utils.errors import DatasetError
from utils.geo.classes import ClassMap, read_class_map
from utils.model.heads import HEIGHT
from utils.predict.outputs import beside, preview_head


def _crs_of(value):
    from rasterio.crs import CRS
    return CRS.from_user_input(value) if value else None


def reproject(geoms, src_crs, dst_crs):
    """Shapely geometries from one CRS to another (GDAL's transformation):
    (geometries, indices of those that cannot be placed in `dst_crs`, None
    there, as for a CRS whose area is far from the other's)."""
    import shapely
    from rasterio.warp import transform
    if src_crs == dst_crs or not len(geoms):
        return geoms, []

    def moved(items):
        coords = shapely.get_coordinates(items)
        xs, ys = transform(src_crs, dst_crs, coords[:, 0], coords[:, 1])
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise ValueError('coordinates outside the target CRS')
        return shapely.set_coordinates(items.copy(), np.column_stack([xs, ys]))

    try:
        return moved(geoms), []
    except Exception:       # PROJ refused some (GDAL's errors have no public class)
        out, failed = geoms.copy(), []
        for i, g in enumerate(geoms):
            try:
                out[i] = moved(np.array([g], dtype=object))[0]
            except Exception:
                out[i] = None
                failed.append(i)
        return out, failed


def file_extent(path):
    """(left, bottom, right, top) of a vector file's features, in its CRS."""
    import pyogrio
    return tuple(pyogrio.read_info(path, force_total_bounds=True)['total_bounds'])


def _typed(values, declared):
    """A field as OGR declares it: pyogrio gives integers and booleans with
    nulls as floats with NaN; they become masked arrays of their own type,
    written back with the same type and nulls (lod1.py)."""
    if values.dtype.kind == 'f' and declared != str(values.dtype):
        missing = np.isnan(values)
        return np.ma.MaskedArray(np.where(missing, 0, values).astype(declared), missing)
    return values


def read_footprints(path, crs, bounds=None):
    """Footprints of a vector file in `crs`: (geometries, {field: values},
    problems: [(FID, reason)], left out: how many OGR's spatial filter left
    out, the file's CRS). Only the features whose envelope meets `bounds`
    (in `crs`; None: all) are read, so a national file costs what lies on the
    maps. Invalid polygons are repaired (make_valid, polygonal part kept)
    and listed; other geometry types keep empty values."""
    import pyogrio
    import shapely
    from rasterio.warp import transform_bounds
    try:
        info = pyogrio.read_info(path, force_feature_count=True)
    except Exception as err:    # pyogrio's errors: unreadable or not a vector file
        raise DatasetError(f"{path}: not a vector file OGR reads ({err}); give a "
                           f"GeoPackage, GeoJSON, Shapefile or FlatGeobuf")
    if not info.get('crs'):
        raise DatasetError(f"{path}: its footprints have no CRS; declare it, e.g. "
                           f"ogr2ogr -a_srs EPSG:XXXX fixed.gpkg {path}")
    file_crs = _crs_of(info['crs'])
    bbox = None
    if bounds is not None:
        try:
            bbox = transform_bounds(crs, file_crs, *bounds, densify_pts=21)
        except Exception:       # PROJ: the maps' area has no place in the file's CRS
            bbox = (np.inf,) * 4
    if bbox is not None and not np.isfinite(bbox).all():
        fids, wkb = np.zeros(0, np.int64), np.zeros(0, object)
        field_data = [np.zeros(0, t) for t in info['dtypes']]
    else:
        _, fids, wkb, field_data = pyogrio.raw.read(path, bbox=bbox, return_fids=True)
    left_out = max(int(info['features']) - len(fids), 0)
    geoms = shapely.force_2d(shapely.from_wkb(wkb))
    geoms, failed = reproject(geoms, file_crs, crs)
    problems = [(int(fids[i]), f"cannot be placed in {crs} from {info['crs']}") for i in failed]
    problems += [(int(fids[i]), "has no geometry: kept, without heights")
                 for i in np.flatnonzero(shapely.is_missing(geoms)) if i not in failed]
    polygonal = shapely.get_type_id(geoms) == 3
    polygonal |= shapely.get_type_id(geoms) == 6
    for i in np.flatnonzero(~polygonal & ~shapely.is_missing(geoms)):
        problems.append((int(fids[i]), f"is a {geoms[i].geom_type}, not a polygon: kept, "
                                       f"without heights"))
        geoms[i] = None
    invalid = np.flatnonzero(polygonal & ~shapely.is_valid(geoms))
    for i in invalid:
        reason = shapely.is_valid_reason(geoms[i])
        fixed = shapely.make_valid(geoms[i])
        parts = [g for g in getattr(fixed, 'geoms', [fixed])
                 if g.geom_type in ('Polygon', 'MultiPolygon')]
        geoms[i] = shapely.union_all(parts) if parts else None
        problems.append((int(fids[i]), f"invalid ({reason}): "
                                       + ('repaired' if parts else 'nothing polygonal left, '
                                          'kept without heights')))
    fields = {name: _typed(values, declared) for name, values, declared in
              zip(info['fields'], field_data, info['dtypes'])}
    return geoms, fields, problems, left_out, file_crs


def trace_footprints(class_path, classes, min_area):
    """Footprints of the building class values `classes` in a class map:
    4-connected regions polygonised with holes, those under `min_area` (in
    the map's units squared) dropped, simplified to the pixel size.
    Returns (geometries, grid, the class map's colour table or None)."""
    import shapely
    from rasterio import features
    values, nodata, colours, grid = read_class_map(class_path)
    mask = np.isin(values, classes)
    if nodata is not None:
        mask &= values != nodata
    del values
    shapes = [shapely.geometry.shape(g) for g, _ in
              features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4,
                              transform=grid.transform)]
    geoms = np.array(shapes, dtype=object)
    if len(geoms):
        geoms = geoms[shapely.area(geoms) >= min_area]
        geoms = shapely.simplify(geoms, min(grid.res), preserve_topology=True)
    return geoms, grid, colours


def class_values(cfg, classes):
    """The values the class maps of the settings `cfg` hold for the class
    indices `classes` (geo/classes.ClassMap)."""
    return ClassMap(cfg.label_codes).values[classes].tolist()


def values_held(height_maps):
    """The values the class maps beside `height_maps` hold, sorted."""
    head = preview_head().name
    held = set()
    for path in height_maps:
        class_path = beside(path, head)
        if class_path and os.path.isfile(class_path):
            values, nodata = read_class_map(class_path)[:2]
            held.update(int(v) for v in np.unique(values) if v != nodata)
    return sorted(held)


def trace_beside(height_maps, values, min_area, cfg, checked=True):
    """Footprints traced from the class map beside each height map (its
    <name>_sem.tif): (geometries, {'traced_from': the class map of each},
    problems in words). `checked`: the values are the dataset's building
    class, so a class map whose colour table is not the dataset's is named."""
    head = preview_head().name
    expected = ClassMap(cfg.label_codes).colormap
    parts, origin, problems = [], [], []
    for path in height_maps:
        class_path = beside(path, head)
        if not class_path or not os.path.isfile(class_path):
            problems.append(f"{path}: no class map beside it ({class_path}); predict "
                            f"with --outputs {HEIGHT.name},{head} or give --footprints")
            continue
        # several maps: a building's pieces on each are measured once joined
        traced, _, colours = trace_footprints(class_path, values,
                                              min_area if len(height_maps) == 1 else 0)
        if checked and colours and any(v < len(expected) and v in colours and
                                       tuple(colours[v]) != tuple(expected[v])
                                       for v in values):
            problems.append(f"{class_path}: its colour table is not dataset_name "
                            f"{cfg.dataset_name!r}'s: traced {values} as that "
                            f"dataset's buildings; set the dataset of the weights "
                            f"(--set dataset_name=...) or --building-class")
        if not len(traced):
            problems.append(f"{class_path}: no building class ({values}) in it: "
                            f"nothing traced; give --footprints FILE if it has buildings")
        parts.append(traced)
        origin += [os.path.basename(class_path)] * len(traced)
    geoms = np.concatenate(parts) if parts else np.array([], dtype=object)
    if len(height_maps) > 1 and len(geoms):
        import shapely
        geoms, origin = merge_across_seams(geoms, np.array(origin, dtype=object))
        large = shapely.area(geoms) >= min_area
        geoms, origin = geoms[large], origin[large]
    return geoms, {'traced_from': np.array(origin, dtype=object)}, problems


def merge_across_seams(geoms, origin):
    """Footprints traced on different maps that share an edge or overlap
    (one building cut by a tile seam, or on two tiles' margin) joined into
    one: (geometries, the class maps of each, comma-separated). Touching at
    a corner only does not join, as 4-connected tracing does not."""
    import shapely
    if len(set(origin)) < 2:
        return geoms, origin
    a, b = shapely.STRtree(geoms).query(geoms, predicate='intersects')
    pairs = (a < b) & (origin[a] != origin[b])
    a, b = a[pairs], b[pairs]
    shared = shapely.intersection(geoms[a], geoms[b])
    joined = (shapely.length(shared) > 0) | (shapely.area(shared) > 0)
    parent = np.arange(len(geoms))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a[joined], b[joined]):
        parent[root(i)] = root(j)
    roots = np.array([root(i) for i in range(len(geoms))])
    out, names = [], []
    for r in dict.fromkeys(roots):      # in the order of first appearance
        members = np.flatnonzero(roots == r)
        out.append(geoms[members[0]] if len(members) == 1 else
                   shapely.union_all(geoms[members]))
        names.append(','.join(dict.fromkeys(origin[members])))
    return np.array(out, dtype=object), np.array(names, dtype=object)
