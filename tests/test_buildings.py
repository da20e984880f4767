"""buildings.py on height maps GDAL wrote and footprints OGR wrote: heights
per building against hand computations, traced footprints against the labels
of a synthetic scene, the outputs read back by OGR (pyogrio) and cjio, bad
input; and the errors per building test_dsm.py reports, against a second
computation.

The weighted quantile (utils/gis/heights.py docstring): values x_0 <= ... <=
x_{n-1}, weights w_i (the cell's share inside the footprint), C_i = w_0 +
... + w_i, W = C_{n-1}; x_i stands at p_i = (C_i - w_i / 2) / W; quantile q
interpolates x linearly in p, x_0 below p_0 and x_{n-1} above p_{n-1}.
"""
import json
import math

import numpy as np
import pytest

from conftest import run_python

CRS = 'EPSG:32632'
X0, Y0 = 500000.0, 5400004.0            # the 4 x 4 map's top-left corner, 1 m cells
HEIGHTS = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, -9999]],
                   np.float32)


def write_map(path, values, x0=X0, y0=Y0, cell=1.0, nodata=-9999.0, crs=CRS, colours=None):
    import rasterio
    from rasterio.transform import Affine
    with rasterio.open(path, 'w', driver='GTiff', width=values.shape[1],
                       height=values.shape[0], count=1, dtype=values.dtype, nodata=nodata,
                       crs=crs, transform=Affine(cell, 0, x0, 0, -cell, y0)) as ds:
        ds.write(values, 1)
        if colours:
            ds.write_colormap(1, colours)


def box(left, top, right, bottom):
    """A box in map coordinates from offsets in cells from the map's corner
    (x to the right, y downwards)."""
    import shapely
    return shapely.box(X0 + left, Y0 - bottom, X0 + right, Y0 - top)


def write_footprints(path, geoms, names, crs=CRS, driver='GPKG'):
    import pyogrio
    import shapely
    pyogrio.raw.write(str(path), shapely.to_wkb(np.array(geoms, dtype=object)),
                      [np.array(names, dtype=object)], ['name'], driver=driver,
                      geometry_type='Unknown', crs=crs)


def read_layer(path):
    import pyogrio
    import shapely
    meta, _, wkb, data = pyogrio.raw.read(str(path))
    return meta, shapely.from_wkb(wkb), dict(zip(meta['fields'], data))


def run_buildings(*args):
    return run_python(['buildings.py', *map(str, args)], timeout=300)


def quantile_by_definition(values, weights, q):
    """The module docstring's definition, step by step."""
    pairs = sorted(zip(values, weights))
    total = sum(w for _, w in pairs)
    points, below = [], 0.0
    for x, w in pairs:
        points.append(((below + w / 2) / total, x))
        below += w
    if q <= points[0][0]:
        return points[0][1]
    for (p0, x0), (p1, x1) in zip(points, points[1:]):
        if p0 <= q <= p1:
            return x0 + (q - p0) * (x1 - x0) / (p1 - p0)
    return points[-1][1]


# Footprints on the 4 x 4 map (offsets in cells from its top-left corner), and
# the cells each covers with the share inside (counted by hand):
HALF = box(0.5, 0.5, 2.0, 3.0)        # half cells on its left and top edges
HALF_CELLS = ([1, 2, 5, 6, 9, 10], [0.25, 0.5, 0.5, 1, 0.5, 1])
EDGE = box(2.5, 2.0, 4.0, 4.0)        # half cells, and the nodata cell (3, 3)
EDGE_CELLS = ([11, 12, 15], [0.5, 1, 0.5])      # the nodata cell's share 1 not counted


def test_quantile_definition_by_hand():
    # HALF: values 1 2 5 6 9 10, W = 3.75, p x 3.75 = .125 .5 1 1.75 2.5 3.25;
    # q 0.5 (1.875 / 3.75) between 6 (1.75) and 9 (2.5): 6 + 3 x .125 / .75
    assert quantile_by_definition(*HALF_CELLS, 0.5) == pytest.approx(6.5)
    # q 0.7 (2.625) between 9 (2.5) and 10 (3.25): 9 + .125 / .75
    assert quantile_by_definition(*HALF_CELLS, 0.7) == pytest.approx(9 + 1 / 6)
    # equal weights: Hazen's percentile, numpy's method='hazen'
    v = [3.0, 1.0, 7.0, 4.0, 10.0]
    for q in (0.05, 0.5, 0.7, 0.95):
        assert quantile_by_definition(v, [1] * 5, q) == pytest.approx(
            np.percentile(v, q * 100, method='hazen'))
    from utils.gis import heights
    assert heights.weighted_quantiles(*HALF_CELLS, [0.5, 0.7]) == pytest.approx(
        [6.5, 9 + 1 / 6])


def test_heights_by_hand_and_outputs_read_back(tmp_path):
    import shapely
    heights = tmp_path / 'maps' / 'a_height.tif'
    heights.parent.mkdir()
    write_map(heights, HEIGHTS)
    only_nodata = box(3.2, 3.2, 3.8, 3.8)
    outside = box(100, 100, 110, 110)
    bowtie = shapely.Polygon([(X0 + 0, Y0 - 0), (X0 + 2, Y0 - 2), (X0 + 2, Y0 - 0),
                              (X0 + 0, Y0 - 2)])    # self-intersecting
    feet = tmp_path / 'feet.gpkg'
    write_footprints(feet, [HALF, EDGE, only_nodata, outside, bowtie],
                     ['half', 'edge', 'nodata', 'outside', 'bowtie'])
    out = tmp_path / 'out' / 'b.gpkg'
    proc = run_buildings(heights.parent, '--out', out, '--footprints', feet, '--keep-outside')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'footprint FID 5 invalid' in proc.stderr and 'repaired' in proc.stderr
    assert '1 footprint(s)' in proc.stderr and 'on no height map' in proc.stderr
    assert 'Traceback' not in proc.stderr
    meta, geoms, f = read_layer(out)
    assert meta['crs'] == CRS and list(f['name']) == ['half', 'edge', 'nodata', 'outside',
                                                      'bowtie']
    assert meta['geometry_type'] == 'MultiPolygon'
    for i, (values, weights) in enumerate([HALF_CELLS, EDGE_CELLS]):
        x, w = np.array(values, float), np.array(weights)
        mean = np.sum(w * x) / np.sum(w)
        assert f['h_dak_50p'][i] == pytest.approx(quantile_by_definition(x, w, 0.5))
        assert f['h_dak_70p'][i] == pytest.approx(quantile_by_definition(x, w, 0.7))
        assert f['h_dak_lod1'][i] == f['h_dak_70p'][i]
        assert f['h_dak_mean'][i] == pytest.approx(mean)
        assert f['h_dak_std'][i] == pytest.approx(math.sqrt(np.sum(w * (x - mean) ** 2)
                                                            / np.sum(w)))
        assert (f['h_dak_min'][i], f['h_dak_max'][i]) == (x.min(), x.max())
        assert f['n_pixels'][i] == len(x)
        assert f['valid_fraction'][i] == pytest.approx(np.sum(w) / shapely.area(geoms[i]))
    assert f['opp_grond'][:2] == pytest.approx([1.5 * 2.5, 1.5 * 2.0])
    # by hand: values 11 12 15, W = 2, p x 2 = .25 1 1.75; q 0.7 (1.4): 12 + 3 x .4 / .75
    assert f['h_dak_50p'][1] == pytest.approx(12.0) and f['h_dak_70p'][1] == \
        pytest.approx(13.6)
    assert f['valid_fraction'][1] == pytest.approx(2 / 3)
    # no valid heights, or on no map: kept, empty, counted
    for i in (2, 3):
        assert np.isnan(f['h_dak_70p'][i]) and f['n_pixels'][i] == 0
    assert np.isnan(f['h_maaiveld']).all() and np.isnan(f['h_dak_abs']).all()   # no DTM
    assert 'done: 5 building(s), 2 without valid heights' in proc.stdout
    # the bowtie repaired into its two triangles: 4 cells of 1 m, half of each
    assert f['opp_grond'][4] == pytest.approx(2.0) and f['n_pixels'][4] == 4
    import pyogrio
    recorded = pyogrio.read_info(str(out))['layer_metadata']
    assert recorded['ROOF'] == 'h_dak_lod1 = h_dak_70p' and 'metres' in recorded['UNITS']

    city = json.loads((tmp_path / 'out' / 'b.city.json').read_text())
    check_cityjson(tmp_path / 'out' / 'b.city.json', geoms, f, ground=np.zeros(5))
    assert city['metadata']['referenceSystem'].endswith('/32632')
    assert city['CityObjects']['building_3']['geometry'] == []
    assert city['CityObjects']['building_1']['attributes']['name'] == 'half'


def val3dity_errors(points, shell, tolerance=1e-3):
    """The val3dity error codes one shell commits, by the rules that tool
    applies (its documented error classes): 101 too few points in a ring,
    102 consecutive points the same, 104 a ring intersecting itself, 203 a
    surface not planar (points farther than `tolerance` from its plane),
    201/205/206/207 rings of a surface that cross, disconnect its inside,
    lie outside its outer ring or nest, 208 inner rings oriented as the
    outer, 301 fewer than 4 surfaces, 302 a shell not closed (an edge not
    used once in each direction), 307 surfaces oriented inwards."""
    import shapely
    errors = set()
    if len(shell) < 4:
        errors.add(301)
    edges, volume = {}, 0.0
    for surface in shell:
        rings = [points[r] for r in surface]
        for ring, indices in zip(rings, surface):
            if len(set(indices)) < 3:
                errors.add(101)
            if any((np.abs(ring - np.roll(ring, -1, axis=0)).max(axis=1) == 0)):
                errors.add(102)
            for a, b in zip(indices, indices[1:] + indices[:1]):
                edges[(a, b)] = edges.get((a, b), 0) + 1
            for k in range(1, len(ring) - 1):
                volume += np.dot(ring[0], np.cross(ring[k], ring[k + 1])) / 6
        every = np.concatenate(rings)
        centre = every.mean(axis=0)
        _, _, axes = np.linalg.svd(every - centre)
        if np.abs((every - centre) @ axes[2]).max() > tolerance:
            errors.add(203)
        flat = [(r - centre) @ axes[:2].T for r in rings]     # in the surface's plane
        outer = shapely.LinearRing(flat[0])
        if not outer.is_simple:
            errors.add(104)
        if any(not shapely.LinearRing(f).is_simple for f in flat[1:]):
            errors.add(104)
        if not shapely.Polygon(flat[0], flat[1:]).is_valid:
            errors.add(206)
        if any(shapely.LinearRing(f).is_ccw == outer.is_ccw for f in flat[1:]):
            errors.add(208)
    if any(n != 1 for n in edges.values()) or any((b, a) not in edges for a, b in edges):
        errors.add(302)
    if volume <= 0:
        errors.add(307)
    return errors


def test_the_val3dity_rules_catch_what_they_name():
    """A unit cube passes; each defect is named by its code."""
    points = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                       [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], float)
    cube = [[[0, 3, 2, 1]], [[4, 5, 6, 7]], [[0, 1, 5, 4]], [[1, 2, 6, 5]],
            [[2, 3, 7, 6]], [[3, 0, 4, 7]]]
    assert val3dity_errors(points, cube) == set()
    assert val3dity_errors(points, [[r[::-1] for r in s] for s in cube]) == {307}
    assert 302 in val3dity_errors(points, cube[:-1] + [[[3, 0, 4, 7][::-1]]])
    assert val3dity_errors(points, cube[:3]) >= {301, 302}
    repeated = [[[0, 3, 3, 2, 1]]] + cube[1:]
    assert 102 in val3dity_errors(points, repeated)
    bent = points.copy()
    bent[6, 2] = 1.01       # one roof corner 1 cm up
    assert 203 in val3dity_errors(bent, cube)
    # a roof with a hole oriented as its outer ring, and one outside it
    more = np.vstack([points, [[.2, .2, 1], [.4, .2, 1], [.4, .4, 1], [.2, .4, 1],
                               [2, 2, 1], [3, 2, 1], [3, 3, 1]]])
    assert 208 in val3dity_errors(more, [cube[0], [[4, 5, 6, 7], [8, 9, 10, 11]]] + cube[2:])
    assert 206 in val3dity_errors(more, [cube[0], [[4, 5, 6, 7], [14, 13, 12]]] + cube[2:])


def check_cityjson(path, geoms, fields, ground):
    """The file cjio reads, and each Building's LoD1 solid as a solid must be:
    every edge of its shell used once in each direction (closed, consistently
    oriented), and its volume by the divergence theorem positive (faces
    outwards) and equal to footprint area x roof height."""
    from cjio import cityjson
    with open(path) as f:
        cm = cityjson.reader(f)
    assert cm.get_version() == '2.0'
    assert cm.number_city_objects_level1() == len(geoms)
    scale = np.array(cm.j['transform']['scale'])
    points = np.array(cm.j['vertices']) * scale + cm.j['transform']['translate']
    for i, geom in enumerate(geoms):
        obj = cm.j['CityObjects'][f'building_{i + 1}']
        if not np.isfinite(fields['h_dak_lod1'][i]):
            assert obj['geometry'] == []
            continue
        g, = obj['geometry']
        assert g['lod'] == '1'
        solids = [g['boundaries']] if g['type'] == 'Solid' else g['boundaries']
        volume = 0.0
        for solid in solids:
            shell, = solid
            edges = {}
            for surface in shell:
                for ring in surface:
                    for a, b in zip(ring, ring[1:] + ring[:1]):
                        edges[(a, b)] = edges.get((a, b), 0) + 1
                    # volume: the fan of each ring from its first point
                    p = points[ring]
                    for k in range(1, len(p) - 1):
                        volume += np.dot(p[0], np.cross(p[k], p[k + 1])) / 6
            assert all(n == 1 for n in edges.values())
            assert all((b, a) in edges for a, b in edges)
            assert val3dity_errors(points, shell) == set(), (i, val3dity_errors(points, shell))
        roof = max(fields['h_dak_lod1'][i], 0.001)
        # vertices are in mm: each coordinate within 0.5 mm
        assert volume == pytest.approx(geom.area * roof, rel=1e-3, abs=1e-3 * geom.length)
        zs = points[np.unique([v for s in solids for surface in s[0] for r in surface
                               for v in r])][:, 2]
        assert zs.min() == pytest.approx(ground[i], abs=5e-4)
        assert zs.max() == pytest.approx(ground[i] + roof, abs=5e-4)


def test_footprints_reprojected_and_ground_from_dtm(tmp_path):
    """The same footprints in WGS 84 (GeoJSON) give the same heights; --dtm
    raises each block to its ground."""
    import shapely
    from rasterio.warp import transform
    heights = tmp_path / 'a_height.tif'
    write_map(heights, HEIGHTS)
    dtm = tmp_path / 'dtm.tif'
    write_map(dtm, np.full((4, 4), 100.0, np.float32) + np.arange(4, dtype=np.float32))
    coords = shapely.get_coordinates([HALF])
    lon, lat = transform(CRS, 'EPSG:4326', coords[:, 0], coords[:, 1])
    feet = tmp_path / 'feet.geojson'
    write_footprints(feet, [shapely.Polygon(np.column_stack([lon, lat]))], ['half'],
                     crs='EPSG:4326', driver='GeoJSON')
    out = tmp_path / 'b.gpkg'
    proc = run_buildings(heights, '--out', out, '--footprints', feet, '--dtm', dtm,
                         '--roof', 'max')
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, geoms, f = read_layer(out)
    # UTM -> WGS 84 -> UTM over metres: the corners come back within 1e-6 m,
    # moving a coverage share by ~1e-6 at most (slivers below MIN_COVERAGE
    # left out)
    assert f['h_dak_70p'][0] == pytest.approx(quantile_by_definition(*HALF_CELLS, 0.7),
                                              abs=1e-4)
    # the DTM's cells 100 + column under HALF: column 0 (shares .25 .5 .5) and
    # 1 (.5 1 1): p x 3.75 = .125 .5 1 | 1.5 2.25 3.25; the median (1.875) is 101
    assert f['h_maaiveld'][0] == pytest.approx(101.0, abs=1e-4)
    assert f['h_dak_lod1'][0] == 10.0 and f['h_dak_abs'][0] == pytest.approx(111.0, abs=1e-4)
    check_cityjson(tmp_path / 'b.city.json', geoms, f, ground=f['h_maaiveld'])
    # z are the DTM's heights: 2D referenceSystem and a warning without their
    # vertical CRS, the compound one with it
    city = json.loads((tmp_path / 'b.city.json').read_text())
    assert city['metadata']['referenceSystem'] == 'https://www.opengis.net/def/crs/EPSG/0/32632'
    assert '--vertical-crs EPSG' in proc.stderr
    import buildings
    buildings.main([str(heights), '--out', str(tmp_path / 'c.gpkg'), '--footprints', str(feet),
                    '--dtm', str(dtm), '--vertical-crs', '5709'])
    city = json.loads((tmp_path / 'c.city.json').read_text())
    assert city['metadata']['referenceSystem'] == (     # no EPSG code for UTM 32N + NAP
        'https://www.opengis.net/def/crs-compound?1=https://www.opengis.net/def/crs/EPSG/0/'
        '32632&2=https://www.opengis.net/def/crs/EPSG/0/5709')


def test_a_registered_compound_crs_is_named_by_its_epsg_code():
    from rasterio.crs import CRS
    from utils.gis.lod1 import reference_system
    # EPSG 7415 is Amersfoort / RD New (28992) + NAP height (5709), as the 3D BAG uses
    assert reference_system(CRS.from_epsg(28992), 5709).endswith('/EPSG/0/7415')
    assert reference_system(CRS.from_epsg(28992)).endswith('/EPSG/0/28992')


@pytest.mark.parametrize('args, message', [
    (['--vertical-crs', '5709'], 'without --dtm'),
    (['--dtm', 'dtm.tif', '--vertical-crs', '32632'], 'not the EPSG code of a vertical CRS'),
    (['--dtm', 'dtm.tif', '--vertical-crs', '999999'], 'not the EPSG code of a vertical CRS')])
def test_a_vertical_crs_must_be_one_and_come_with_a_dtm(args, message):
    import buildings
    from utils.errors import SettingError
    with pytest.raises(SettingError, match=f'--vertical-crs .*{message}'):
        buildings.parse(['a_height.tif', '--out', 'b.gpkg', *args])


def test_traced_footprints_of_a_synthetic_scene(tmp_path):
    """Without --footprints, the building class of a synthetic scene traced:
    one footprint per 4-connected building region of at least --min-area,
    its area within the simplification's reach of the region's, and its
    heights those of the region's cells."""
    import cv2
    import shapely
    import config
    from utils.data import synthetic
    from utils.geo.classes import ClassMap
    rng = np.random.default_rng(3)
    _, height, sem = synthetic.make_scene(rng, 192)
    cell = synthetic.GSD
    write_map(tmp_path / 's_height.tif', height, cell=cell)
    table = ClassMap(config.dataset_settings('synthetic')['label_codes'])
    write_map(tmp_path / 's_sem.tif', sem, cell=cell, nodata=int(table.nodata),
              colours={i: tuple(c) + (255,) for i, c in enumerate(table.colormap)})
    min_area = 20.0
    out = tmp_path / 'traced.gpkg'
    proc = run_buildings(tmp_path / 's_height.tif', '--out', out, '--min-area', min_area,
                         '--set', 'dataset_name=synthetic')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'colour table' not in proc.stderr        # predict.py's table, as written
    _, geoms, f = read_layer(out)
    count, ids = cv2.connectedComponents((sem == synthetic.BUILDING).astype(np.uint8),
                                         connectivity=4)
    regions = [ids == k for k in range(1, count)]
    regions = [r for r in regions if r.sum() * cell ** 2 >= min_area]
    assert len(regions) >= 2 and len(geoms) == len(regions)
    rows, cols = np.mgrid[0:192, 0:192]
    for region in regions:
        # the footprint holding the region's innermost cell centre
        inner = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 3)
        r, c = np.unravel_index(np.argmax(inner), inner.shape)
        centre = shapely.Point(X0 + (c + 0.5) * cell, Y0 - (r + 0.5) * cell)
        k, = [i for i, g in enumerate(geoms) if g.contains(centre)]
        # simplification moves every edge by at most the tolerance (one cell):
        # the area by at most perimeter x cell
        edges = cv2.findContours(region.astype(np.uint8), cv2.RETR_CCOMP,
                                 cv2.CHAIN_APPROX_NONE)[0]
        perimeter = sum(len(e) for e in edges) * cell
        area = region.sum() * cell ** 2
        assert abs(f['opp_grond'][k] - area) <= perimeter * cell
        # The footprint's cells are the region's but for a band of width one
        # cell along its edge: a share of at most perimeter x cell / area of
        # the weight in, as much out, so its weighted CDF is within d of the
        # region's; the quantile's definition places a cell up to w_i / W
        # (<= one cell's share) from the weighted CDF: its 70th percentile
        # lies between the region's at 0.7 -+ (d + cell^2 / area).
        d = 2 * perimeter * cell / area + cell ** 2 / area
        lo = np.percentile(height[region], max(0.0, 0.7 - d) * 100, method='hazen')
        hi = np.percentile(height[region], min(1.0, 0.7 + d) * 100, method='hazen')
        assert lo - 1e-4 <= f['h_dak_70p'][k] <= hi + 1e-4
    assert set(f['traced_from']) == {'s_sem.tif'}


@pytest.mark.slow       # five runs of buildings.py
def test_bad_input_one_line_each(tmp_path):
    heights = tmp_path / 'a_height.tif'
    write_map(heights, HEIGHTS)
    # footprints without a CRS: a Shapefile without its .prj
    nocrs = tmp_path / 'nocrs.shp'
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        write_footprints(nocrs, [HALF], ['half'], crs=None, driver='ESRI Shapefile')
    assert not (tmp_path / 'nocrs.prj').exists()
    proc = run_buildings(heights, '--out', tmp_path / 'x.gpkg', '--footprints', nocrs)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert str(nocrs) in line and 'no CRS' in line and 'ogr2ogr -a_srs' in line
    # footprints in a CRS far from the map: none on it, a one-line error
    # naming the file and its CRS, nothing written
    far = tmp_path / 'far.gpkg'
    write_footprints(far, [box(0, 0, 2, 2)], ['far'], crs='EPSG:32610')
    proc = run_buildings(heights, '--out', tmp_path / 'far_out.gpkg', '--footprints', far)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    line, = proc.stderr.strip().splitlines()
    # both extents, each in its CRS: the file's box(0, 0, 2, 2), the map's 4 x 4 m
    assert f'{far}: none of its 1 footprint(s) (500000, 5.4e+06, 500002, 5.4e+06 in ' \
           f'EPSG:32610) lie on the 1 height map(s) (500000, 5.4e+06, 500004, 5.4e+06 in ' \
           f'EPSG:32632)' in line
    assert not (tmp_path / 'far_out.gpkg').exists()
    # a class map without the building class: traced nothing, said so; its
    # colour table is not the synthetic dataset's: said so too
    write_map(tmp_path / 'a_sem.tif', np.zeros((4, 4), np.uint8), nodata=255,
              colours={0: (0, 0, 0, 255), 1: (1, 2, 3, 255)})
    proc = run_buildings(heights, '--out', tmp_path / 'none.gpkg',
                         '--set', 'dataset_name=synthetic')
    assert proc.returncode == 0 and 'no building class' in proc.stderr
    assert 'a_sem.tif' in proc.stderr and '--footprints' in proc.stderr
    assert "colour table is not dataset_name 'synthetic'" in proc.stderr
    # a dataset without a building class and no footprints
    proc = run_buildings(heights, '--out', tmp_path / 'none.gpkg',
                         '--set', 'dataset_name=Unknown')
    assert proc.returncode == 1 and '--footprints FILE' in proc.stderr
    assert 'Traceback' not in proc.stderr
    # ... unless --building-class names it: class 0 is everywhere, one footprint
    proc = run_buildings(heights, '--out', tmp_path / 'all.gpkg', '--building-class', '0',
                         '--min-area', 0, '--set', 'dataset_name=Unknown')
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, geoms, f = read_layer(tmp_path / 'all.gpkg')
    assert len(geoms) == 1 and f['opp_grond'][0] == pytest.approx(16.0)
    assert f['n_pixels'][0] == 15       # the nodata cell left out
    # a value no class map holds: a one-line error naming what they hold
    proc = run_buildings(heights, '--out', tmp_path / 'seven.gpkg', '--building-class', '7',
                         '--set', 'dataset_name=Unknown')
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert '--building-class 7: no class map' in line and 'they hold [0]' in line


FIELD_TYPES = {     # an OGR type each, with a null in the second feature
    'text': (np.array(['Dam 1', None], dtype=object), None),
    'storeys': (np.array([3, 0], np.int32), np.array([False, True])),
    'register_id': (np.array([2 ** 40 + 1, 7], np.int64), None),
    'area_reg': (np.array([125.5, np.nan]), None),
    'built': (np.array(['1932-05-04', 'NaT'], 'datetime64[D]'), None),
    'surveyed': (np.array(['2024-05-31T12:30:00', 'NaT'], 'datetime64[ms]'), None),
    'in_use': (np.array([False, True]), np.array([False, True])),
}


def test_a_cadastre_by_extent_every_field_type_and_valid_solids(tmp_path):
    """A register of three footprints, one far outside the map: only those
    meeting it are read (OGR's spatial filter) and written, the other
    counted; every OGR field type comes back with its type and nulls in the
    GeoPackage and as JSON values (ISO 8601 dates) in CityJSON; a footprint
    with a hole and corners 0.1 mm apart gives a closed solid without
    repeated vertices."""
    import json
    import pyogrio
    import shapely
    heights = tmp_path / 'a_height.tif'
    write_map(heights, HEIGHTS)
    holed = shapely.Polygon([(X0, Y0), (X0 + 4, Y0), (X0 + 4, Y0 - 4), (X0 + 4.0001, Y0 - 4),
                             (X0, Y0 - 4)],
                            [[(X0 + 1, Y0 - 1), (X0 + 1, Y0 - 2), (X0 + 2, Y0 - 2),
                              (X0 + 2, Y0 - 1)]])
    geoms = [holed, HALF, box(X0 + 5000, Y0 + 5000, X0 + 5010, Y0 + 5010)]
    data = [np.concatenate([v, v[:1]]) for v, _ in FIELD_TYPES.values()]
    masks = [None if m is None else np.concatenate([m, m[:1]]) for _, m in FIELD_TYPES.values()]
    feet = tmp_path / 'register.gpkg'
    pyogrio.raw.write(str(feet), shapely.to_wkb(np.array(geoms, dtype=object)), data,
                      list(FIELD_TYPES), field_mask=masks, driver='GPKG',
                      geometry_type='Polygon', crs=CRS)
    out = tmp_path / 'b.gpkg'
    proc = run_buildings(heights, '--out', out, '--footprints', feet)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '1 footprint(s) of ' in proc.stdout and 'not written' in proc.stdout
    assert 'done: 2 building(s)' in proc.stdout
    info = pyogrio.read_info(str(out))
    declared = dict(zip(info['fields'], info['dtypes']))
    assert {k: declared[k] for k in FIELD_TYPES} == {k: str(v.dtype) for k, (v, _) in
                                                     FIELD_TYPES.items()}
    _, back, f = read_layer(out)
    assert len(back) == 2
    for name, (values, mask) in FIELD_TYPES.items():
        got = f[name]
        if mask is not None:       # pyogrio reads nullable integers as floats, NaN null
            assert got[0] == values[0] and np.isnan(got[1]), name
        elif values.dtype.kind == 'M':
            np.testing.assert_array_equal(got, values)
        elif values.dtype.kind == 'f':
            assert got[0] == values[0] and np.isnan(got[1])
        else:
            assert list(got) == list(values), name
    city = json.loads((tmp_path / 'b.city.json').read_text())
    first = city['CityObjects']['building_1']['attributes']
    second = city['CityObjects']['building_2']['attributes']
    assert (first['text'], first['storeys'], first['register_id'], first['area_reg'],
            first['built'], first['surveyed'], first['in_use']) == \
        ('Dam 1', 3, 2 ** 40 + 1, 125.5, '1932-05-04', '2024-05-31T12:30:00.000', False)
    for name in ('text', 'storeys', 'area_reg', 'built', 'surveyed', 'in_use'):
        assert name not in second, name          # nulls left out
    assert second['register_id'] == 7
    # the holed footprint's solid: no ring repeats a vertex, every face has an
    # area, and the hole is an inner ring of roof and floor with its 4 walls
    solid = city['CityObjects']['building_1']['geometry'][0]['boundaries']
    shell, = solid
    for surface in shell:
        for ring in surface:
            assert len(set(ring)) == len(ring) >= 3, ring
    floor, roof = shell[0], shell[1]
    assert [len(r) for r in floor] == [len(r) for r in roof] == [4, 4]
    assert len(shell) == 2 + 4 + 4
    check_cityjson(tmp_path / 'b.city.json', back, f, ground=np.zeros(2))

    # The same as GeoParquet, read as geopandas and DuckDB read it (Arrow):
    # each field its Arrow type and nulls, the geometry WKB with the 'geo'
    # metadata of GeoParquet 1.1.
    import buildings
    import pyarrow.parquet as pq
    buildings.main([str(heights), '--out', str(tmp_path / 'c.parquet'), '--footprints', str(feet)])
    table = pq.read_table(tmp_path / 'c.parquet')
    types = {name: str(table.schema.field(name).type) for name in FIELD_TYPES}
    assert types == {'text': 'string', 'storeys': 'int32', 'register_id': 'int64',
                     'area_reg': 'double', 'built': 'date32[day]',
                     'surveyed': 'timestamp[ms]', 'in_use': 'bool'}
    rows = table.to_pylist()
    assert [rows[0][k] for k in ('text', 'storeys', 'register_id', 'area_reg', 'in_use')] == \
        ['Dam 1', 3, 2 ** 40 + 1, 125.5, False]
    assert (str(rows[0]['built']), str(rows[0]['surveyed'])) == \
        ('1932-05-04', '2024-05-31 12:30:00')
    assert [k for k in FIELD_TYPES if rows[1][k] is None] == \
        ['text', 'storeys', 'built', 'surveyed', 'in_use']      # nulls; NaN stays a real
    for name in ('h_dak_lod1', 'opp_grond'):
        np.testing.assert_array_equal(table[name].to_numpy(), f[name])
    geo = json.loads(table.schema.metadata[b'geo'])
    column = geo['columns'][geo['primary_column']]
    assert geo['version'] == '1.1.0' and column['encoding'] == 'WKB'
    assert column['crs']['id'] == {'authority': 'EPSG', 'code': 32632}
    parquet_geoms = shapely.from_wkb(table['geometry'].to_numpy(zero_copy_only=False))
    assert all(a.equals(b) for a, b in zip(parquet_geoms, back))
    np.testing.assert_allclose(column['bbox'], shapely.total_bounds(back))
    assert table.schema.metadata[b'ROOF'] == b'h_dak_lod1 = h_dak_70p'


# ------------------------------------------------------- errors per building

def test_building_errors_by_hand():
    from utils.evaluate import buildings
    labels = np.zeros((6, 8), np.int32)
    labels[0:2, 0:3] = 1                 # building A: 6 cells
    labels[3:6, 4:8] = 1                 # building B: 12 cells
    labels[4, 0] = 1                     # building C: 1 cell, reference height NaN
    truth = np.zeros((6, 8))
    truth[0:2, 0:3] = [[4, 4, 4], [4, 4, 5]]
    truth[3:6, 4:8] = 22.0
    truth[4, 0] = np.nan
    pred = truth + 1.0
    pred[0:2, 0:3] = [[3, 3, 3], [3, 3, 3]]
    pred[3, 4] = 30.0
    errors = buildings.BuildingErrors([1])
    errors.add(pred, truth, labels)
    r = errors.results()
    # Hazen: quantile q at sorted position q n - 1/2
    # A: reference sorted 4 4 4 4 4 5: median (2.5) 4, p70 (3.7) 4; predicted 3, 3
    # B: reference 22, 22; predicted 23 (11 cells) and 30: median (5.5) 23, p70 (7.9) 23
    assert r['buildings'] == 2
    assert r['median'] == pytest.approx({'mae': 1.0, 'rmse': 1.0, 'bias': 0.0})
    assert r['p70'] == pytest.approx({'mae': 1.0, 'rmse': 1.0, 'bias': 0.0})
    a, b = r['by_height']['0-5'], r['by_height']['>20']
    assert a['buildings'] == 1 and a['p70_bias'] == -1.0
    assert b['buildings'] == 1 and b['p70_bias'] == 1.0
    assert r['by_height']['5-10']['buildings'] == 0 and r['by_height']['5-10']['p70_mae'] is None
    # pixels (bins are [lo, hi)): 0-5 m the 29 ground cells (+1) and A's five
    # cells of 4 (-1); 5-10 m A's cell of 5 (-2); above 20 m B's 11 cells +1, one +8
    ground = 48 - 6 - 12 - 1
    assert a['pixels'] == ground + 5 and b['pixels'] == 12
    assert r['by_height']['5-10']['pixels'] == 1
    assert r['by_height']['5-10']['pixel_bias'] == -2.0
    assert b['pixel_mae'] == pytest.approx((11 + 8) / 12)
    assert b['pixel_rmse'] == pytest.approx(math.sqrt((11 + 64) / 12))
    assert a['pixel_bias'] == pytest.approx((ground - 5) / (ground + 5))


@pytest.mark.slow       # two runs on a scene
def test_buildings_py_heights_give_test_dsm_errors(tmp_path):
    """A synthetic scene whose heights are known, a prediction of it with
    known errors (tall buildings 10% low, noise), and the buildings of its
    labels as footprints (polygonised by GDAL, written by OGR): the heights
    buildings.py measures on the prediction and on the truth give exactly
    the errors per building test_dsm.py reports (BuildingErrors), since a
    footprint of whole cells weights them equally."""
    import rasterio.features
    import shapely
    from rasterio.transform import Affine
    from utils.data import synthetic
    from utils.evaluate import buildings
    rng = np.random.default_rng(5)
    _, truth, sem = synthetic.make_scene(rng, 192)
    pred = (truth * np.where(truth > 10, 0.9, 1.0)
            + rng.normal(0, 0.3, truth.shape)).astype(np.float32)
    cell = synthetic.GSD
    write_map(tmp_path / 'pred_height.tif', pred, cell=cell)
    write_map(tmp_path / 'truth_height.tif', truth, cell=cell)
    count, ids = buildings.instances(sem, [synthetic.BUILDING])
    t = Affine(cell, 0, X0, 0, -cell, Y0)
    polygons = {int(v): shapely.geometry.shape(g) for g, v in rasterio.features.shapes(
        ids.astype(np.int32), mask=ids > 0, connectivity=4, transform=t)}
    assert sorted(polygons) == list(range(1, count + 1))
    feet = tmp_path / 'feet.gpkg'
    write_footprints(feet, [polygons[k] for k in range(1, count + 1)],
                     [f'b{k}' for k in range(1, count + 1)])
    measured = {}
    for name in ('pred', 'truth'):
        proc = run_buildings(tmp_path / f'{name}_height.tif', '--out', tmp_path / f'{name}.gpkg',
                             '--footprints', feet)
        assert proc.returncode == 0, proc.stderr[-2000:]
        measured[name] = read_layer(tmp_path / f'{name}.gpkg')[2]
    errors = buildings.BuildingErrors([synthetic.BUILDING])
    errors.add(pred, truth, sem)
    reported = errors.results()
    assert reported['buildings'] == count >= 2
    for key, column in (('median', 'h_dak_50p'), ('p70', 'h_dak_70p')):
        error = measured['pred'][column] - measured['truth'][column]
        assert reported[key]['mae'] == pytest.approx(np.mean(np.abs(error)), rel=1e-9)
        assert reported[key]['bias'] == pytest.approx(np.mean(error), rel=1e-9, abs=1e-12)
    # A third reference: NumPy's Hazen quantiles (its method='hazen', the
    # definition both implementations state) over each building's cells.
    def hazen(values, k, q):
        return np.array([np.quantile(values[ids == i], q, method='hazen')
                         for i in range(1, k + 1)])
    # The heights are float32: the two agree to a rounding of the result to
    # float32, one unit in the last place at the largest height.
    ref70, pred70 = hazen(truth, count, 0.7), hazen(pred, count, 0.7)
    ulp = float(np.spacing(np.float32(max(np.abs(truth).max(), np.abs(pred).max()))))
    np.testing.assert_allclose(measured['truth']['h_dak_70p'], ref70, rtol=0, atol=ulp)
    np.testing.assert_allclose(measured['pred']['h_dak_70p'], pred70, rtol=0, atol=ulp)
    # and that bound catches an error of 0.1% of a height
    assert np.abs(measured['truth']['h_dak_70p'] - ref70 * 1.001).min() > ulp
    # the tall buildings' 10% shows in their bins: at least 1 m low at 10 m and
    # above, against noise of 0.3 m / sqrt(cells) on a percentile; this
    # scene has buildings in both bins (counted here from the reference)
    for name, lo, hi in (('10-20', 10, 20), ('>20', 20, np.inf)):
        inside = (ref70 >= lo) & (ref70 < hi)
        row = reported['by_height'][name]
        assert row['buildings'] == inside.sum() >= 1, name
        assert row['p70_bias'] == pytest.approx(np.mean(pred70[inside] - ref70[inside]),
                                                abs=2 * ulp)
        assert row['p70_bias'] < -0.9


def test_traced_buildings_across_a_tile_seam_are_one_building_each(tmp_path):
    """The synthetic scene cut into a west and an east tile: each building
    region of the whole scene is one traced footprint (those crossing the
    seam joined, their pieces under --min-area on either side kept), with
    the region's area and the heights of its cells on both tiles."""
    import cv2
    import shapely
    import config
    from utils.data import synthetic
    from utils.geo.classes import ClassMap
    _, height, sem = synthetic.make_scene(np.random.default_rng(3), 192)
    count, ids = cv2.connectedComponents((sem == synthetic.BUILDING).astype(np.uint8),
                                         connectivity=4)
    # the seam through the middle of the largest building
    largest = np.argmax(np.bincount(ids.ravel())[1:]) + 1
    cell, seam = synthetic.GSD, int(np.nonzero(ids == largest)[1].mean())
    table = ClassMap(config.dataset_settings('synthetic')['label_codes'])
    colours = {i: tuple(c) + (255,) for i, c in enumerate(table.colormap)}
    for name, cols, x0 in (('west', slice(0, seam), X0),
                           ('east', slice(seam, 192), X0 + seam * cell)):
        write_map(tmp_path / f'{name}_height.tif', np.ascontiguousarray(height[:, cols]),
                  x0=x0, cell=cell)
        write_map(tmp_path / f'{name}_sem.tif', np.ascontiguousarray(sem[:, cols]), x0=x0,
                  cell=cell, nodata=int(table.nodata), colours=colours)
    min_area = 20.0
    out = tmp_path / 'traced.gpkg'
    proc = run_buildings(tmp_path, '--out', out, '--min-area', min_area,
                         '--set', 'dataset_name=synthetic')
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, geoms, f = read_layer(out)
    regions = [ids == k for k in range(1, count) if (ids == k).sum() * cell ** 2 >= min_area]
    crossing = [r for r in regions if r[:, seam - 1].any() and r[:, seam].any()]
    assert crossing and len(geoms) == len(regions)
    for region in crossing:
        rows, cols = np.nonzero(region)
        centre = shapely.Point(X0 + (cols.mean() + 0.5) * cell, Y0 - (rows.mean() + 0.5) * cell)
        k, = [i for i, g in enumerate(geoms) if g.distance(centre) == min(
            g2.distance(centre) for g2 in geoms)]
        assert f['traced_from'][k] in ('east_sem.tif,west_sem.tif', 'west_sem.tif,east_sem.tif')
        assert f['height_map'][k] == 'east_height.tif,west_height.tif'
        # simplification moves every edge by at most a cell: the area by at
        # most the perimeter x cell (as in the test above)
        edges = cv2.findContours(region.astype(np.uint8), cv2.RETR_CCOMP,
                                 cv2.CHAIN_APPROX_NONE)[0]
        perimeter = sum(len(e) for e in edges) * cell
        assert abs(f['opp_grond'][k] - region.sum() * cell ** 2) <= perimeter * cell
        assert f['h_dak_max'][k] == pytest.approx(height[region].max(), abs=1e-6)


def test_a_footprint_across_a_seam_has_the_heights_of_both_maps(tmp_path):
    """A folder of two side-by-side maps (and a class map, not a height
    map): a footprint across the seam is measured on the cells of both, each
    weighted by its area inside, so the whole footprint counts."""
    write_map(tmp_path / 'west_height.tif', np.full((4, 4), 3.0, np.float32))
    write_map(tmp_path / 'east_height.tif', np.full((4, 4), 9.0, np.float32), x0=X0 + 4)
    write_map(tmp_path / 'west_sem.tif', np.ones((4, 4), np.uint8), nodata=255)
    feet = tmp_path / 'feet.fgb'
    write_footprints(feet, [box(1, 0, 4.5, 2), box(3, 0, 7, 2)], ['mostly west', 'mostly east'],
                     driver='FlatGeobuf')
    out = tmp_path / 'b.gpkg'
    proc = run_buildings(tmp_path, '--out', out, '--footprints', feet)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'on 2 height map(s)' in proc.stdout
    _, _, f = read_layer(out)
    # (FlatGeobuf's spatial index may reorder the features: by name)
    row = {name: k for k, name in enumerate(f['name'])}
    # by hand: mostly west holds 6 west cells (3 m) and 2 half east cells
    # (9 m), 7 m^2 of 7; mostly east 2 west cells and 6 east cells, 8 of 8
    for name, (values, areas) in {'mostly west': ([3] * 6 + [9] * 2, [1] * 6 + [0.5] * 2),
                                  'mostly east': ([3] * 2 + [9] * 6, [1] * 8)}.items():
        k = row[name]
        x, w = np.array(values, float), np.array(areas, float)
        assert f['height_map'][k] == 'east_height.tif,west_height.tif'
        assert f['valid_fraction'][k] == pytest.approx(1.0)
        assert f['n_pixels'][k] == len(x)
        assert (f['h_dak_min'][k], f['h_dak_max'][k]) == (3.0, 9.0)
        assert f['h_dak_mean'][k] == pytest.approx(np.sum(w * x) / np.sum(w))
        assert f['h_dak_70p'][k] == pytest.approx(quantile_by_definition(x, w, 0.7))
    assert f['h_dak_70p'][row['mostly west']] == 3.0 and f['h_dak_70p'][row['mostly east']] == 9.0


def test_overlapping_tiles_count_each_ground_cell_once(tmp_path):
    """Tiles with a 2-cell margin: the footprint over the overlap takes
    those cells from the first map (by name) only, not twice."""
    write_map(tmp_path / 'a_height.tif', np.full((4, 4), 3.0, np.float32))
    write_map(tmp_path / 'b_height.tif', np.full((4, 4), 9.0, np.float32), x0=X0 + 2)
    feet = tmp_path / 'feet.gpkg'
    write_footprints(feet, [box(1, 0, 5, 2)], ['over the margin'])
    out = tmp_path / 'b.gpkg'
    proc = run_buildings(tmp_path, '--out', out, '--footprints', feet)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, _, f = read_layer(out)
    # columns 1-3 from a (6 cells of 3 m), column 4 from b (2 cells of 9 m)
    assert f['n_pixels'][0] == 8 and f['valid_fraction'][0] == pytest.approx(1.0)
    assert f['h_dak_mean'][0] == pytest.approx((6 * 3 + 2 * 9) / 8)
    assert f['opp_grond'][0] == pytest.approx(8.0)


def test_building_class_of_each_published_dataset():
    """The building class as each dataset's documentation names it: ISPRS
    Vaihingen's blue, DFC2018's residential (8) and non-residential (9)
    buildings, ASPRS code 6 in DFC2019, the 1 of binary building masks."""
    from utils import settings
    from utils.data.labels import building_classes
    expected = {'Vaihingen': [(0, 0, 255)], 'Vaihingen_crp256': [(0, 0, 255)],
                'DFC2018': [8, 9], 'DFC2019_crp512': [6], 'DFC2023': [1],
                'Vaihingen_bin': [1], 'synthetic': [1], 'SomeOtherCity': []}
    for name, labels in expected.items():
        cfg = settings.current().replace(dataset_name=name)
        codes = cfg.label_codes
        assert [codes[i] for i in building_classes(cfg)] == labels, name
