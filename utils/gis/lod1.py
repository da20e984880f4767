"""Buildings written for GIS tools: a GeoPackage layer (write_layer) and
CityJSON 2.0 LoD1 block models (write_cityjson)."""
import json
import math
import os

import numpy as np


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
