"""Heights of buildings: footprints in, per-building heights and LoD1 out.

Footprints come from a vector file (any format OGR reads, through pyogrio)
or are traced from predict.py's class map (the building class polygonised,
holes kept, specks dropped, simplified to the pixel size). Each footprint's
heights are coverage-weighted: a cell counts by the share of it inside the
polygon (exactextract's coverage fractions). The weighted quantile
(weighted_quantiles): values sorted x_0 <= ... <= x_{n-1} with weights w_i,
C_i = w_0 + ... + w_i, W = C_{n-1}; each value stands at the middle of its
share of the weight, p_i = (C_i - w_i / 2) / W; quantile q is x interpolated
linearly in p (x_0 below p_0, x_{n-1} above p_{n-1}). With equal weights it
is the Hazen percentile (numpy's method='hazen'); a cell of small weight
moves it little, however many there are. Minimum and maximum are over the
cells the footprint touches, mean and spread (standard deviation) weighted.

Outputs: a GeoPackage layer (write_layer) and CityJSON LoD1 (write_cityjson).
"""
import json
import math
import os

import numpy as np

from utils import raster
from utils.errors import DatasetError

# Attribute names in the style of the Dutch 3D building register (3DBAG):
# (name, unit, meaning). Heights are metres above the ground (the height
# map's nDSM) unless h_maaiveld says where the ground is.
ATTRIBUTES = (
    ('h_dak_min', 'm', 'lowest height of the cells the footprint touches'),
    ('h_dak_50p', 'm', 'median height (coverage-weighted)'),
    ('h_dak_70p', 'm', '70th percentile height (coverage-weighted)'),
    ('h_dak_max', 'm', 'highest height of the cells the footprint touches'),
    ('h_dak_mean', 'm', 'mean height (coverage-weighted)'),
    ('h_dak_std', 'm', 'spread of the heights (coverage-weighted standard deviation)'),
    ('h_dak_lod1', 'm', 'roof height of the LoD1 block above the ground (--roof)'),
    ('h_maaiveld', 'm', 'ground height (coverage-weighted median of --dtm; empty without)'),
    ('h_dak_abs', 'm', 'absolute roof height: h_maaiveld + h_dak_lod1 (empty without --dtm)'),
    ('n_pixels', 'count', 'cells with a valid height the footprint touches'),
    ('valid_fraction', 'share', 'share of the footprint covered by valid heights'),
    ('opp_grond', 'm2', 'footprint area'),
    ('height_map', '', 'the height map the heights come from'),
)
NAMES = tuple(a[0] for a in ATTRIBUTES)
# --roof: which statistic is the LoD1 roof height; 70p is 3DBAG's choice.
ROOF_RULES = {'min': 'h_dak_min', '50p': 'h_dak_50p', '70p': 'h_dak_70p',
              'max': 'h_dak_max', 'mean': 'h_dak_mean'}
# Cells covered less than this are slivers of coordinate rounding (a
# reprojected edge on a cell boundary): left out of n_pixels, minimum and maximum.
MIN_COVERAGE = 1e-6
_CUT = f'min_coverage_frac={MIN_COVERAGE}'
STATISTICS = ('h_dak_min', 'h_dak_50p', 'h_dak_70p', 'h_dak_max', 'h_dak_mean', 'h_dak_std',
              'n_pixels', 'weight')


def weighted_quantiles(values, weights, qs):
    """Quantiles `qs` of `values` weighted by `weights` (> 0), by the module
    docstring's definition."""
    order = np.argsort(values, kind='stable')
    x, w = np.asarray(values, np.float64)[order], np.asarray(weights, np.float64)[order]
    c = np.cumsum(w)
    return np.interp(qs, (c - w / 2) / c[-1], x)


def statistics(values, weights):
    """{STATISTICS: value} of one footprint's valid cells and their coverage
    ('weight': the summed coverage); NaN heights where it has none."""
    if not len(values):
        return dict.fromkeys(STATISTICS, np.nan) | {'n_pixels': 0, 'weight': 0.0}
    w = np.asarray(weights, np.float64)
    x = np.asarray(values, np.float64)
    mean = float(np.sum(w * x) / np.sum(w))
    median, p70 = weighted_quantiles(x, w, (0.5, 0.7))
    return {'h_dak_min': x.min(), 'h_dak_50p': median, 'h_dak_70p': p70,
            'h_dak_max': x.max(), 'h_dak_mean': mean,
            'h_dak_std': math.sqrt(np.sum(w * (x - mean) ** 2) / np.sum(w)),
            'n_pixels': len(x), 'weight': float(np.sum(w))}


# The building class of the published datasets, as label codes (config.py).
BUILDING_LABELS = {'Vaihingen': [(0, 0, 255)], 'DFC2018': [8, 9], 'DFC2019': [6],
                   'DFC2023': [1], 'synthetic': [1]}


def building_classes(dataset_name, label_codes):
    """The class indices (into label_codes) of buildings, [] without them: the
    BUILDING_LABELS of the dataset (longest matching name), class 1 of a
    binary dataset named *_bin."""
    codes = [tuple(c) if isinstance(c, (list, tuple)) else c for c in label_codes]
    matches = [k for k in BUILDING_LABELS if dataset_name.startswith(k)]
    if dataset_name.endswith('_bin') and len(codes) == 2:
        wanted = [codes[1]]
    elif matches:
        wanted = BUILDING_LABELS[max(matches, key=len)]
    else:
        return []
    return [codes.index(w) for w in wanted if w in codes]


# ----------------------------------------------------------------- footprints

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


def read_footprints(path, crs):
    """Footprints of a vector file in `crs`: (geometries, {field: values},
    problems: [(index, reason)]). Invalid polygons are repaired (make_valid,
    polygonal part kept) and listed; other geometry types keep empty values."""
    import pyogrio
    import shapely
    try:
        meta, _, wkb, field_data = pyogrio.raw.read(path)
    except Exception as err:    # pyogrio's errors: unreadable or not a vector file
        raise DatasetError(f"{path}: not a vector file OGR reads ({err}); give a "
                           f"GeoPackage, GeoJSON, Shapefile or FlatGeobuf")
    if not meta.get('crs'):
        raise DatasetError(f"{path}: its footprints have no CRS; declare it, e.g. "
                           f"ogr2ogr -a_srs EPSG:XXXX fixed.gpkg {path}")
    geoms = shapely.from_wkb(wkb)
    geoms = shapely.force_2d(geoms)
    geoms, failed = reproject(geoms, _crs_of(meta['crs']), crs)
    problems = [(int(i), f"cannot be placed in {crs} from {meta['crs']}") for i in failed]
    problems += [(int(i), "has no geometry: kept, without heights")
                 for i in np.flatnonzero(shapely.is_missing(geoms)) if i not in failed]
    polygonal = shapely.get_type_id(geoms) == 3
    polygonal |= shapely.get_type_id(geoms) == 6
    for i in np.flatnonzero(~polygonal & ~shapely.is_missing(geoms)):
        problems.append((int(i), f"is a {geoms[i].geom_type}, not a polygon: kept, "
                                 f"without heights"))
        geoms[i] = None
    invalid = np.flatnonzero(polygonal & ~shapely.is_valid(geoms))
    for i in invalid:
        reason = shapely.is_valid_reason(geoms[i])
        fixed = shapely.make_valid(geoms[i])
        parts = [g for g in getattr(fixed, 'geoms', [fixed])
                 if g.geom_type in ('Polygon', 'MultiPolygon')]
        geoms[i] = shapely.union_all(parts) if parts else None
        problems.append((int(i), f"invalid ({reason}): "
                                 + ('repaired' if parts else 'nothing polygonal left, '
                                    'kept without heights')))
    fields = dict(zip(meta['fields'], field_data))
    return geoms, fields, problems


def trace_footprints(class_path, classes, min_area):
    """Footprints of the building class values `classes` in a class map:
    4-connected regions polygonised with holes, those under `min_area` (in
    the map's units squared) dropped, simplified to the pixel size.
    Returns (geometries, grid, the class map's colour table or None)."""
    import shapely
    from rasterio import features
    values, nodata, colours, grid = raster.read_class_map(class_path)
    mask = np.isin(values, classes)
    if nodata is not None:
        mask &= values != nodata
    del values
    shapes = [shapely.geometry.shape(g) for g, _ in
              features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4,
                              transform=grid['transform'])]
    geoms = np.array(shapes, dtype=object)
    if len(geoms):
        geoms = geoms[shapely.area(geoms) >= min_area]
        geoms = shapely.simplify(geoms, min(grid['res']), preserve_topology=True)
    return geoms, grid, colours


# ------------------------------------------------------------------- heights

def _feature(i, geom):
    import shapely
    return {'type': 'Feature', 'properties': {'i': int(i)},
            'geometry': shapely.geometry.mapping(geom)}


def zonal_heights(path, geoms, indices, grid, block_px=2048, progress=None):
    """{STATISTICS: float64 array over `indices`} of geoms[indices] on the
    height map `path` (statistics()). Footprints go in blocks by where their
    centre falls on a grid of block_px cells, and each block reads only the
    cells under its footprints: memory follows the block, not the map."""
    import shapely
    from exactextract import exact_extract
    from exactextract.feature import JSONFeatureSource
    from exactextract.raster import NumPyRasterSource
    out = {k: np.full(len(indices), np.nan) for k in STATISTICS}
    out['n_pixels'][:], out['weight'][:] = 0, 0.0
    if not len(indices):
        return out
    left, _, _, top = grid['bounds']
    size = (block_px * grid['res'][0], block_px * grid['res'][1])
    centres = shapely.get_coordinates(shapely.centroid(geoms[indices]))
    block = (np.floor((top - centres[:, 1]) / size[1]) * 1e6
             + np.floor((centres[:, 0] - left) / size[0]))
    order = np.argsort(block, kind='stable')
    starts = np.flatnonzero(np.r_[True, np.diff(block[order]) != 0, True])
    done = 0
    for a, b in zip(starts[:-1], starts[1:]):
        members = order[a:b]
        bounds = shapely.total_bounds(geoms[indices[members]])
        values, extent = raster.read_map_area(path, tuple(bounds))
        if values is not None:
            feats = JSONFeatureSource([_feature(m, geoms[indices[m]]) for m in members])
            for row in exact_extract(NumPyRasterSource(values, *extent), feats,
                                     [f'values({_CUT})', f'coverage({_CUT})'],
                                     include_cols=['i'], output='geojson',
                                     strategy='raster-sequential'):   # 1.3x faster
                p = row['properties']
                for name, value in statistics(p['values'], p['coverage']).items():
                    out[name][p['i']] = value
        done += len(members)
        if progress:
            progress(done)
    return out


def building_heights(height_paths, geoms, *, dtm=None, roof='70p', progress=None):
    """{name: array over geoms} of NAMES for footprints `geoms` (in the CRS of
    the height maps), each measured on the height map it overlaps most.
    Returns (attributes, outside: indices of footprints on no map)."""
    import shapely
    n = len(geoms)
    attrs = {k: np.full(n, np.nan) for k in NAMES if k != 'height_map'}
    attrs['height_map'] = np.array([''] * n, dtype=object)
    present = np.flatnonzero(~shapely.is_missing(geoms) & ~shapely.is_empty(geoms))
    attrs['opp_grond'][present] = shapely.area(geoms[present])
    best, overlap = np.full(n, -1), np.zeros(n)
    grids = [raster.map_grid(p) for p in height_paths]
    tree = shapely.STRtree(geoms[present])
    for k, grid in enumerate(grids):
        extent = shapely.box(*grid['bounds'])
        near = present[tree.query(extent, predicate='intersects')]
        share = shapely.area(shapely.intersection(geoms[near], extent))
        better = share > overlap[near]
        best[near[better]], overlap[near[better]] = k, share[better]
    done = [0]

    def step(count):
        if progress:
            progress(done[0] + count)

    for k, (path, grid) in enumerate(zip(height_paths, grids)):
        members = np.flatnonzero(best == k)
        stats = zonal_heights(path, geoms, members, grid, progress=step)
        done[0] += len(members)
        cell = grid['res'][0] * grid['res'][1]
        for name in stats:
            if name in attrs:
                attrs[name][members] = stats[name]
        attrs['valid_fraction'][members] = stats['weight'] * cell / attrs['opp_grond'][members]
        attrs['height_map'][members] = os.path.basename(path)
        if dtm is not None:
            ground = zonal_heights(dtm, geoms, members, raster.map_grid(dtm))
            attrs['h_maaiveld'][members] = ground['h_dak_50p']
    attrs['h_dak_lod1'] = attrs[ROOF_RULES[roof]].copy()
    attrs['h_dak_abs'] = attrs['h_maaiveld'] + attrs['h_dak_lod1']
    outside = np.flatnonzero(best < 0)
    attrs['n_pixels'] = np.nan_to_num(attrs['n_pixels']).astype(np.int64)
    return attrs, outside


# ------------------------------------------------------------------- outputs

def write_layer(path, geoms, fields, attrs, crs, metadata):
    """A GeoPackage layer 'buildings': the footprints, their own fields and
    `attrs` (ours replace a field of the same name), `metadata` in GDAL's
    layer metadata. Written to a temporary file, renamed when complete."""
    import pyogrio
    import shapely
    columns = {k: v for k, v in fields.items() if k not in attrs}
    columns.update(attrs)
    # every footprint as a MultiPolygon: one geometry type for the layer
    wkb = shapely.to_wkb(np.array([None if g is None else
                                   (g if g.geom_type == 'MultiPolygon'
                                    else shapely.MultiPolygon([g])) for g in geoms],
                                  dtype=object))
    tmp = path + '.tmp.gpkg'
    if os.path.exists(tmp):
        os.remove(tmp)
    pyogrio.raw.write(tmp, wkb, list(columns.values()), list(columns), layer='buildings',
                      driver='GPKG', geometry_type='MultiPolygon', crs=crs.to_wkt(),
                      layer_metadata=metadata)
    os.replace(tmp, path)


def _solid(polygon, ground, roof, vertex):
    """One LoD1 solid (CityJSON boundaries: one outer shell) of a polygon
    extruded from `ground` to `roof`; every face oriented outwards (counter-
    clockwise seen from outside). `vertex(x, y, z)` gives a vertex index."""
    from shapely.geometry.polygon import orient
    polygon = orient(polygon, 1.0)      # exterior counter-clockwise, holes clockwise
    rings = [list(polygon.exterior.coords)[:-1]] + \
        [list(r.coords)[:-1] for r in polygon.interiors]
    bottom = [[vertex(x, y, ground) for x, y in ring] for ring in rings]
    top = [[vertex(x, y, roof) for x, y in ring] for ring in rings]
    shell = [[ring[::-1] for ring in bottom], top]
    for lo, hi in zip(bottom, top):
        for i in range(len(lo)):
            j = (i + 1) % len(lo)
            shell.append([[lo[i], lo[j], hi[j], hi[i]]])
    return [shell]


def write_cityjson(path, geoms, attrs, crs, fields=None, title='LoD1 buildings'):
    """CityJSON 2.0 LoD1: each footprint a Building whose geometry is its
    polygon(s) extruded from the ground (h_maaiveld, else 0) to the ground
    plus h_dak_lod1 (a Solid, a MultiSolid for several parts); footprints
    without a height are Buildings without geometry. Attributes: `attrs`
    (and `fields`, the footprints' own), empty values left out. Vertices in
    millimetres (the file's transform)."""
    vertices, index = [], {}

    def vertex(x, y, z):
        key = (round(x * 1000), round(y * 1000), round(z * 1000))
        if key not in index:
            index[key] = len(vertices)
            vertices.append(key)
        return index[key]

    objects = {}
    columns = dict(fields or {}, **attrs)
    for i, geom in enumerate(geoms):
        own = {}
        for k, values in columns.items():
            v = values[i]
            if isinstance(v, (np.floating, float)):
                v = None if not math.isfinite(v) else float(v)
            elif isinstance(v, np.integer):
                v = int(v)
            elif isinstance(v, bytes):
                v = v.decode(errors='replace')
            if v is not None and v != '':
                own[k] = v
        building = {'type': 'Building', 'attributes': own, 'geometry': []}
        roof = attrs['h_dak_lod1'][i]
        if geom is not None and math.isfinite(roof) and not geom.is_empty:
            ground = attrs['h_maaiveld'][i]
            ground = float(ground) if math.isfinite(ground) else 0.0
            top = ground + max(float(roof), 0.001)     # a solid needs a height
            parts = list(getattr(geom, 'geoms', [geom]))
            solids = [_solid(p, ground, top, vertex) for p in parts]
            building['geometry'] = [
                {'type': 'Solid', 'lod': '1', 'boundaries': solids[0]} if len(solids) == 1
                else {'type': 'MultiSolid', 'lod': '1', 'boundaries': solids}]
        objects[f'building_{i + 1}'] = building
    lowest = np.min(vertices, axis=0) if vertices else np.zeros(3, int)
    doc = {'type': 'CityJSON', 'version': '2.0',
           'transform': {'scale': [0.001, 0.001, 0.001],
                         'translate': [float(v) / 1000 for v in lowest]},
           'metadata': {'title': title},
           'CityObjects': objects,
           'vertices': (np.asarray(vertices, np.int64) - lowest).tolist() if vertices else []}
    epsg = crs.to_epsg() if crs is not None else None
    if epsg:
        doc['metadata']['referenceSystem'] = f'https://www.opengis.net/def/crs/EPSG/0/{epsg}'
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(json.dumps(doc, separators=(',', ':')))   # json.dump encodes in Python, 5x slower
    os.replace(tmp, path)


# ----------------------------------------------- errors per building (test_dsm.py)
# Bins of reference height (m): a building by its reference 70th percentile,
# a pixel by its reference height.
HEIGHT_BINS = ((0, 5), (5, 10), (10, 20), (20, math.inf))
BIN_NAMES = tuple(f'{lo:g}-{hi:g}' if math.isfinite(hi) else f'>{lo:g}'
                  for lo, hi in HEIGHT_BINS)


def instances(labels, classes):
    """(count, HxW int32 ids 1..count, 0 elsewhere): the 4-connected regions
    of the class indices `classes` in a label map, one building each (the
    connectivity trace_footprints polygonises with)."""
    import cv2
    count, ids = cv2.connectedComponents(np.isin(labels, classes).astype(np.uint8),
                                         connectivity=4)
    return count - 1, ids


def _group_percentiles(ids, values, qs):
    """{q: per-id quantile} of `values` grouped by `ids` (ids 1..), each the
    weighted_quantiles of equal weights (Hazen's), and the group ids."""
    order = np.lexsort((values, ids))
    ids, values = ids[order], values[order]
    groups, starts, counts = np.unique(ids, return_index=True, return_counts=True)
    out = {}
    for q in qs:
        pos = np.clip(q * counts - 0.5, 0, counts - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, counts - 1)
        frac = pos - lo
        out[q] = values[starts + lo] * (1 - frac) + values[starts + hi] * frac
    return out, groups


def building_pairs(pred, truth, labels, classes):
    """[buildings, 4]: predicted and reference median, predicted and reference
    70th percentile of each building of the reference labels, over its
    pixels with a valid reference height (buildings without any left out)."""
    count, ids = instances(labels, classes)
    if not count:
        return np.zeros((0, 4))
    pred = np.asarray(pred, np.float64).reshape(ids.shape)
    truth = np.asarray(truth, np.float64)
    valid = (ids > 0) & np.isfinite(truth) & np.isfinite(pred)
    p, groups = _group_percentiles(ids[valid], pred[valid], (0.5, 0.7))
    r, _ = _group_percentiles(ids[valid], truth[valid], (0.5, 0.7))
    return np.column_stack([p[0.5], r[0.5], p[0.7], r[0.7]])


def _errors(error):
    if not error.size:
        return {'mae': None, 'rmse': None, 'bias': None}
    return {'mae': float(np.mean(np.abs(error))), 'rmse': float(np.sqrt(np.mean(error ** 2))),
            'bias': float(np.mean(error))}


class BuildingErrors:
    """Errors per building over a split: add() each image, results() at the end.
    Pixel errors by bin are summed as they come (no image kept)."""

    def __init__(self, classes):
        self.classes = classes
        self.pairs = []
        self.pixels = np.zeros((len(HEIGHT_BINS), 4))    # count, |e|, e^2, e

    def add(self, pred, truth, labels):
        pred = np.asarray(pred, np.float64).reshape(np.shape(truth))
        truth = np.asarray(truth, np.float64)
        self.pairs.append(building_pairs(pred, truth, labels, self.classes))
        valid = np.isfinite(truth) & np.isfinite(pred)
        t, e = truth[valid], pred[valid] - truth[valid]
        for k, (lo, hi) in enumerate(HEIGHT_BINS):
            inside = (t >= lo) & (t < hi) if k else (t < hi)   # the first bin takes t < 0
            ek = e[inside]
            self.pixels[k] += (ek.size, np.abs(ek).sum(), (ek ** 2).sum(), ek.sum())

    def results(self):
        """{buildings, median: {mae, rmse, bias}, p70: {...}, by_height: {bin:
        {buildings, median_*, p70_*, pixels, pixel_*}}}; errors are
        predicted - reference, in metres."""
        pairs = np.concatenate(self.pairs) if self.pairs else np.zeros((0, 4))
        out = {'buildings': int(len(pairs)),
               'median': _errors(pairs[:, 0] - pairs[:, 1]),
               'p70': _errors(pairs[:, 2] - pairs[:, 3]), 'by_height': {}}
        ref = pairs[:, 3]
        for k, ((lo, hi), name) in enumerate(zip(HEIGHT_BINS, BIN_NAMES)):
            inside = pairs[(ref >= lo) & (ref < hi) if k else (ref < hi)]
            row = {'buildings': int(len(inside))}
            row.update({f'median_{m}': v for m, v in _errors(inside[:, 0] - inside[:, 1]).items()})
            row.update({f'p70_{m}': v for m, v in _errors(inside[:, 2] - inside[:, 3]).items()})
            n, absolute, square, total = self.pixels[k]
            row.update(pixels=int(n), pixel_mae=absolute / n if n else None,
                       pixel_rmse=math.sqrt(square / n) if n else None,
                       pixel_bias=total / n if n else None)
            out['by_height'][name] = row
        return out
