"""Buildings written for GIS tools: a GeoPackage layer (write_layer) and
CityJSON 2.0 LoD1 block models (write_cityjson)."""
import json
import math
import os

import numpy as np


EPSG_URL = 'https://www.opengis.net/def/crs/EPSG/0/'

def write_layer(path, geoms, fields, attrs, crs, metadata):
    """A GeoPackage layer 'buildings': the footprints, their own fields and
    `attrs` (ours replace a field of the same name), `metadata` in GDAL's
    layer metadata. Written to a temporary file, renamed when complete."""
    import pyogrio
    import shapely
    columns = _columns(fields, attrs)
    # a field's nulls (footprints.py's masked arrays) as OGR nulls, its type kept
    masks = [np.ma.getmask(v) if np.ma.is_masked(v) else None for v in columns.values()]
    data = [np.ma.getdata(v) for v in columns.values()]
    wkb = shapely.to_wkb(_multipolygons(geoms))
    tmp = path + '.tmp.gpkg'
    if os.path.exists(tmp):
        os.remove(tmp)
    pyogrio.raw.write(tmp, wkb, data, list(columns), field_mask=masks, layer='buildings',
                      driver='GPKG', geometry_type='MultiPolygon', crs=crs.to_wkt(),
                      layer_metadata=metadata)
    os.replace(tmp, path)


def _columns(fields, attrs):
    """The footprints' own fields, then ours (which replace one of the same name)."""
    columns = {k: v for k, v in fields.items() if k not in attrs}
    columns.update(attrs)
    return columns


def _multipolygons(geoms):
    """Every footprint as a MultiPolygon (None kept): one geometry type for the layer."""
    import shapely
    return np.array([None if g is None else g if g.geom_type == 'MultiPolygon'
                     else shapely.MultiPolygon([g]) for g in geoms], dtype=object)


def write_parquet(path, geoms, fields, attrs, crs, metadata):
    """The layer of write_layer as GeoParquet 1.1 (as national building
    datasets are distributed): a WKB 'geometry' column of MultiPolygons
    with the file's 'geo' metadata (CRS as PROJJSON, bbox, geometry types),
    every field with its type and nulls, `metadata` as the file's key-value
    metadata. Written to a temporary file, renamed when complete."""
    import json
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    multi = _multipolygons(geoms)
    arrays = {k: pa.array(np.ma.getdata(v), mask=np.ma.getmaskarray(v) if np.ma.is_masked(v)
                          else None) for k, v in _columns(fields, attrs).items()}
    arrays['geometry'] = pa.array(shapely.to_wkb(multi), pa.binary())
    bounds = shapely.total_bounds(multi[multi != None])      # noqa: E711 (elementwise)
    geo = {'version': '1.1.0', 'primary_column': 'geometry',
           'columns': {'geometry': {'encoding': 'WKB', 'geometry_types': ['MultiPolygon'],
                                    'crs': crs.to_dict(projjson=True),
                                    'bbox': [float(b) for b in bounds]}}}
    table = pa.table(arrays).replace_schema_metadata(
        {'geo': json.dumps(geo), **{k: str(v) for k, v in metadata.items()}})
    tmp = path + '.tmp'
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _distinct(coords):
    """A ring's corners at the file's millimetres, without the closing one or
    a corner repeated after rounding (which would make a zero-area wall)."""
    ring = []
    for x, y in coords:
        corner = (round(x * 1000) / 1000, round(y * 1000) / 1000)
        if not ring or corner != ring[-1]:
            ring.append(corner)
    while len(ring) > 1 and ring[-1] == ring[0]:
        ring.pop()
    return ring


def _solid(polygon, ground, roof, vertex):
    """One LoD1 solid (CityJSON boundaries: one outer shell) of a polygon
    extruded from `ground` to `roof`; every face oriented outwards (counter-
    clockwise seen from outside). `vertex(x, y, z)` gives a vertex index."""
    from shapely.geometry.polygon import orient
    polygon = orient(polygon, 1.0)      # exterior counter-clockwise, holes clockwise
    rings = [_distinct(polygon.exterior.coords)] + [_distinct(r.coords)
                                                    for r in polygon.interiors]
    if len(rings[0]) < 3:
        return None
    rings = [rings[0]] + [r for r in rings[1:] if len(r) >= 3]
    bottom = [[vertex(x, y, ground) for x, y in ring] for ring in rings]
    top = [[vertex(x, y, roof) for x, y in ring] for ring in rings]
    shell = [[ring[::-1] for ring in bottom], top]
    for lo, hi in zip(bottom, top):
        for i in range(len(lo)):
            j = (i + 1) % len(lo)
            shell.append([[lo[i], lo[j], hi[j], hi[i]]])
    return [shell]


def _json_value(v):
    """A field's value as JSON holds it, None for a null or empty one:
    dates and date-times in ISO 8601 (2024-05-31, 2024-05-31T12:00:00.000),
    booleans, integers of any width, text."""
    if v is np.ma.masked or v is None:
        return None
    if isinstance(v, np.datetime64):
        return None if np.isnat(v) else str(v)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, bytes):
        v = v.decode(errors='replace')
    return v if v != '' else None


def reference_system(crs, vertical=None):
    """The CityJSON referenceSystem of `crs` (projected, with an EPSG code)
    and the `vertical` EPSG code of the heights: the EPSG code of their
    compound where EPSG registers one (28992 + 5709: 7415), else OGC's
    crs-compound address of the two; without `vertical` the 2D code."""
    from rasterio.crs import CRS
    horizontal = crs.to_epsg()
    if not vertical:
        return f'{EPSG_URL}{horizontal}'
    compound = CRS.from_wkt(f'COMPD_CS["{horizontal} + {vertical}",{crs.to_wkt()},'
                            f'{CRS.from_epsg(vertical).to_wkt()}]').to_epsg()
    if compound:
        return f'{EPSG_URL}{compound}'
    return (f'https://www.opengis.net/def/crs-compound?1={EPSG_URL}{horizontal}'
            f'&2={EPSG_URL}{vertical}')


def write_cityjson(path, geoms, attrs, crs, fields=None, title='LoD1 buildings', vertical=None):
    """CityJSON 2.0 LoD1: each footprint a Building whose geometry is its
    polygon(s) extruded from the ground (h_maaiveld, else 0) to the ground
    plus h_dak_lod1 (a Solid, a MultiSolid for several parts); footprints
    without a height are Buildings without geometry. Attributes: `attrs`
    (and `fields`, the footprints' own), empty values left out. Vertices in
    millimetres (the file's transform). referenceSystem: reference_system."""
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
            v = _json_value(values[i])
            if v is not None:       # False and 0 are values
                own[k] = v
        building = {'type': 'Building', 'attributes': own, 'geometry': []}
        roof = attrs['h_dak_lod1'][i]
        if geom is not None and math.isfinite(roof) and not geom.is_empty:
            ground = attrs['h_maaiveld'][i]
            ground = float(ground) if math.isfinite(ground) else 0.0
            top = ground + max(float(roof), 0.001)     # a solid needs a height
            parts = list(getattr(geom, 'geoms', [geom]))
            solids = [s for s in (_solid(p, ground, top, vertex) for p in parts) if s]
            if solids:      # none: a footprint narrower than a millimetre
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
        doc['metadata']['referenceSystem'] = reference_system(crs, vertical)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(json.dumps(doc, separators=(',', ':')))   # json.dump encodes in Python, 5x slower
    os.replace(tmp, path)
