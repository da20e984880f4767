"""Heights of buildings: each footprint's heights coverage-weighted, a cell
counting by the share of it inside the polygon (exactextract's coverage
fractions). The weighted quantile (weighted_quantiles): values sorted
x_0 <= ... <= x_{n-1} with weights w_i, C_i = w_0 + ... + w_i, W = C_{n-1};
each value stands at the middle of its share of the weight,
p_i = (C_i - w_i / 2) / W; quantile q is x interpolated linearly in p (x_0
below p_0, x_{n-1} above p_{n-1}). With equal weights it is the Hazen
percentile (numpy's method='hazen'); a cell of small weight moves it little,
however many there are. Minimum and maximum are over the cells the footprint
touches, mean and spread (standard deviation) weighted.

A building's height uncertainty, h_dak_sigma, comes from the
<name>_uncertainty.tif beside each height map (predict.py --outputs
...,uncertainty): the coverage-weighted root mean square of its cells'
sigma. Not divided by the root of the cell count: neighbouring cells' errors
come from the same windows and are far from independent. The spread of the
heights inside the footprint (h_dak_std) stays beside it, not added to it:
on a pitched roof it is the roof's shape, not an error.
"""
import math
import os

import numpy as np

from utils.errors import DatasetError
from utils.geo.files import find_images
from utils.geo.read import read_area, read_grid
from utils.model.heads import HEIGHT
from utils.predict.outputs import UNCERTAINTY, beside, output_path


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
    ('h_dak_sigma', 'm', 'height uncertainty: coverage-weighted RMS of the cells\' sigma '
                          '(<name>_uncertainty.tif; empty where a map has none)'),
    ('h_dak_uncertain', 'flag', 'h_dak_sigma above --max-sigma (empty without h_dak_sigma)'),
    ('height_map', '', 'the height maps the heights come from, comma-separated'),
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


def height_maps(inputs):
    """The height maps named by `inputs`: files and addresses as given,
    folders' <name>_height.tif (predict.py's)."""
    files = []
    suffix = output_path('', '', HEIGHT.name)     # '_height.tif'
    for item in inputs:
        found = find_images([item], kind='height map')
        if os.path.isdir(item):
            found = [p for p in found if p.endswith(suffix)]
            if not found:
                raise DatasetError(f"{item}: no *{suffix} in this folder. Fix: name "
                                   f"the folder predict.py wrote, or the height maps "
                                   f"themselves.")
        files += found
    return files


def common_crs(paths, dtm=None):
    """The one projected CRS of the height maps `paths` (and of the `dtm`
    given with them); an error naming the map that has none, is in degrees
    or in another CRS."""
    grids = [map_grid(p) for p in paths]
    for path, grid in zip(paths, grids):
        if grid.crs is None:
            raise DatasetError(f"{path}: the height map has no CRS; predict from a "
                               f"georeferenced image, or set one (gdal_edit.py -a_srs "
                               f"EPSG:XXXX {path})")
        if grid.crs.is_geographic:
            raise DatasetError(f"{path} is in degrees ({grid.crs}): areas and heights per "
                               f"metre need a projected CRS; warp it (gdalwarp -t_srs "
                               f"EPSG:<UTM zone> {path} out.tif)")
        if grid.crs != grids[0].crs:
            raise DatasetError(f"{path} is in {grid.crs}, {paths[0]} in "
                               f"{grids[0].crs}: give height maps of one CRS per run")
    crs = grids[0].crs
    if dtm and (dtm_crs := map_grid(dtm).crs) != crs:
        raise DatasetError(f"--dtm {dtm} is in {dtm_crs}, the height maps in {crs}: "
                           f"warp it to theirs (gdalwarp -t_srs {crs} {dtm} dtm.tif)")
    return crs


def extent(paths):
    """(left, bottom, right, top) around the height maps `paths`."""
    bounds = np.array([map_grid(p).bounds for p in paths])
    return (*bounds[:, :2].min(axis=0), *bounds[:, 2:].max(axis=0))


def map_grid(path):
    """The Grid of a height map or DTM, which must be north-up: its cells
    are then rectangles in the map's CRS."""
    grid = read_grid(path)
    grid.check_north_up(path)
    return grid


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


def _feature(i, geom):
    import shapely
    return {'type': 'Feature', 'properties': {'i': int(i)},
            'geometry': shapely.geometry.mapping(geom)}


def zonal_cells(path, geoms, indices, grid, block_px=2048, progress=None):
    """[(values, areas)] of geoms[indices] on the height map `path`: each
    footprint's valid cells and the ground area of each inside it (coverage
    fraction x cell area, so maps of other resolutions weigh alike).
    Footprints go in blocks by where their centre falls on a grid of
    block_px cells, and each block reads only the cells under its
    footprints: memory follows the block, not the map."""
    import shapely
    from exactextract import exact_extract
    from exactextract.feature import JSONFeatureSource
    from exactextract.raster import NumPyRasterSource
    out = [(np.zeros(0), np.zeros(0))] * len(indices)
    if not len(indices):
        return out
    cell = grid.res[0] * grid.res[1]
    left, _, _, top = grid.bounds
    size = (block_px * grid.res[0], block_px * grid.res[1])
    centres = shapely.get_coordinates(shapely.centroid(geoms[indices]))
    block = (np.floor((top - centres[:, 1]) / size[1]) * 1e6
             + np.floor((centres[:, 0] - left) / size[0]))
    order = np.argsort(block, kind='stable')
    starts = np.flatnonzero(np.r_[True, np.diff(block[order]) != 0, True])
    done = 0
    for a, b in zip(starts[:-1], starts[1:]):
        members = order[a:b]
        bounds = shapely.total_bounds(geoms[indices[members]])
        values, extent = read_area(path, tuple(bounds))
        if values is not None:
            feats = JSONFeatureSource([_feature(m, geoms[indices[m]]) for m in members])
            for row in exact_extract(NumPyRasterSource(values, *extent), feats,
                                     [f'values({_CUT})', f'coverage({_CUT})'],
                                     include_cols=['i'], output='geojson',
                                     strategy='raster-sequential'):   # 1.3x faster
                p = row['properties']
                out[p['i']] = (np.asarray(p['values'], np.float64),
                               np.asarray(p['coverage'], np.float64) * cell)
        done += len(members)
        if progress:
            progress(done)
    return out


def sigma_map(height_map):
    """The uncertainty map beside a height map, None where there is none."""
    path = beside(height_map, UNCERTAINTY)
    return path if path and os.path.exists(path) else None


def building_heights(height_paths, geoms, *, dtm=None, roof='70p', max_sigma=math.inf,
                     progress=None):
    """{name: array over geoms} of NAMES for footprints `geoms` (in the CRS of
    the height maps), from the cells of every map each covers: a footprint
    across a seam has the heights of all its cells. Where maps overlap (tiles
    with a margin), a ground cell counts on the first map holding it only.
    h_dak_sigma (module docstring) where every map a footprint covers has
    its uncertainty map; h_dak_uncertain (masked where no sigma): above
    `max_sigma`. Returns (attributes, outside: indices of footprints on no map)."""
    import shapely
    n = len(geoms)
    attrs = {k: np.full(n, np.nan) for k in NAMES if k != 'height_map'}
    present = np.flatnonzero(~shapely.is_missing(geoms) & ~shapely.is_empty(geoms))
    attrs['opp_grond'][present] = shapely.area(geoms[present])
    tree = shapely.STRtree(geoms[present])
    cells = [[] for _ in range(n)]
    sigmas = [[] for _ in range(n)]     # None for a map without its uncertainty
    maps = [[] for _ in range(n)]
    taken, done = None, 0
    for path in height_paths:
        grid = map_grid(path)
        extent = shapely.box(*grid.bounds)
        own = extent if taken is None else shapely.difference(extent, taken)
        taken = extent if taken is None else shapely.union(taken, extent)
        near = present[tree.query(own, predicate='intersects')]
        inside = shapely.contains(own, geoms[near])
        parts = geoms[near].copy()
        parts[~inside] = shapely.intersection(parts[~inside], own)
        kept = shapely.area(parts) > 0
        near, parts = near[kept], parts[kept]

        def step(count, before=done):     # footprints measured, a seam's on each map
            if progress:
                progress(min(before + count, n))

        sigma = sigma_map(path)
        spread = zonal_cells(sigma, parts, np.arange(len(parts)), grid) if sigma else \
            [None] * len(parts)
        for i, found, own in zip(near, zonal_cells(path, parts, np.arange(len(parts)), grid,
                                                   progress=step), spread):
            cells[i].append(found)
            sigmas[i].append(own)
            maps[i].append(os.path.basename(path))
        done += len(parts)
    for i in range(n):
        values = np.concatenate([v for v, _ in cells[i]]) if cells[i] else np.zeros(0)
        areas = np.concatenate([w for _, w in cells[i]]) if cells[i] else np.zeros(0)
        for name, value in statistics(values, areas).items():
            if name in attrs:
                attrs[name][i] = value
        attrs['valid_fraction'][i] = float(np.sum(areas)) / attrs['opp_grond'][i] \
            if cells[i] else np.nan
        if sigmas[i] and None not in sigmas[i]:
            values = np.concatenate([v for v, _ in sigmas[i]])
            areas = np.concatenate([w for _, w in sigmas[i]])
            if len(values):
                attrs['h_dak_sigma'][i] = math.sqrt(np.sum(areas * values ** 2)
                                                    / np.sum(areas))
    attrs['height_map'] = np.array([','.join(m) for m in maps], dtype=object)
    if dtm is not None:
        ground = zonal_cells(dtm, geoms, present, map_grid(dtm))
        for i, (values, areas) in zip(present, ground):
            attrs['h_maaiveld'][i] = statistics(values, areas)['h_dak_50p']
    attrs['h_dak_lod1'] = attrs[ROOF_RULES[roof]].copy()
    attrs['h_dak_abs'] = attrs['h_maaiveld'] + attrs['h_dak_lod1']
    outside = np.array([i for i in range(n) if not maps[i]], dtype=np.int64)
    attrs['n_pixels'] = np.nan_to_num(attrs['n_pixels']).astype(np.int64)
    known = np.isfinite(attrs['h_dak_sigma'])
    attrs['h_dak_uncertain'] = np.ma.masked_array(
        np.where(known, attrs['h_dak_sigma'], 0) > max_sigma, mask=~known)
    return attrs, outside
