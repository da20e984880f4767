"""Speed and peak memory of buildings.py on a large height map with many
footprints: buildings per second, and whether memory follows the blocks of
footprints or the map.

    python bench/buildings.py [--size 20000] [--footprints 50000] [--keep DIR]
    python bench/buildings.py --survey 4 [--national 2000000] [--size ...] ...

Writes a SIZE x SIZE px height map (float32, 0.5 m cells, UTM, a tiled
deflate GeoTIFF written band by band) and FOOTPRINTS rotated rectangles of
8-30 m on a jittered grid over it (a GeoPackage), then runs buildings.py on
them in its own process; and two more runs: a map of half the side with a
quarter of the footprints (the same density), and the full map with that
quarter spread over it. Each reports its time and its peak resident memory
(the child's ru_maxrss). Memory bounded by the blocks of footprints gives
the same peak for the same footprint count on maps of 1x and 4x the cells;
reading the map whole would need SIZE^2 x 8 bytes.

With --survey TILES: the map cut into TILES x TILES tiles and a national
file of --national footprints of which --footprints lie on the map (the
others on a grid of the same density to the east, written first): the
tiles with the national file against the tiles with the footprints alone
(time and peak memory: reading by extent should make them alike), and
the tiles' building heights against those of the map as one file (seam
buildings measured on every tile they cover should make them equal).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELL = 0.5
X0, Y0 = 500000.0, 5500000.0


def write_height_map(path, size):
    """Smooth heights 0-25 m, written 512 rows at a time."""
    import rasterio
    from rasterio.transform import Affine
    profile = dict(driver='GTiff', width=size, height=size, count=1, dtype='float32',
                   nodata=-9999.0, crs='EPSG:32632', transform=Affine(CELL, 0, X0, 0, -CELL, Y0),
                   tiled=True, blockxsize=512, blockysize=512, compress='deflate',
                   predictor=3, bigtiff='IF_SAFER')
    cols = np.sin(np.arange(size) / 37.0).astype(np.float32)
    with rasterio.open(path, 'w', **profile) as ds:
        for r0 in range(0, size, 512):
            rows = np.arange(r0, min(size, r0 + 512))
            block = 12.5 + 6 * np.cos(rows / 53.0)[:, None].astype(np.float32) + 6 * cols
            ds.write(block.astype(np.float32), 1,
                     window=rasterio.windows.Window(0, r0, size, len(rows)))


def write_footprints(path, size, count, seed=0, outside=0):
    """`count` footprints on the map of `size` px, and `outside` more (a
    national file's) on a grid of the same density east of it, written
    first, so that the map's footprints are not the file's first rows."""
    import pyogrio
    import shapely
    polygons = _rectangles(size, count, seed, X0)
    if outside:
        side = int(np.ceil(np.sqrt(outside / count))) * size
        polygons = np.concatenate([_rectangles(side, outside, seed + 1, X0 + 2 * side * CELL),
                                   polygons])
    pyogrio.raw.write(path, shapely.to_wkb(polygons),
                      [np.arange(len(polygons))], ['ident'], driver='GPKG', crs='EPSG:32632',
                      geometry_type='Polygon')


def _rectangles(size, count, seed, left):
    """Rotated rectangles of 8-30 m on a jittered grid over a map of `size` px."""
    import shapely
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(count)))
    pitch = size * CELL / side
    k = np.arange(count)
    cx = left + (k % side + 0.5 + rng.uniform(-0.2, 0.2, count)) * pitch
    cy = Y0 - (k // side + 0.5 + rng.uniform(-0.2, 0.2, count)) * pitch
    length = rng.uniform(8, min(30, 0.6 * pitch), count)
    width = rng.uniform(8, min(20, 0.6 * pitch), count)
    angle = rng.uniform(0, np.pi, count)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]]) / 2
    dx = corners[None, :, 0] * length[:, None]
    dy = corners[None, :, 1] * width[:, None]
    x = cx[:, None] + dx * np.cos(angle)[:, None] - dy * np.sin(angle)[:, None]
    y = cy[:, None] + dx * np.sin(angle)[:, None] + dy * np.cos(angle)[:, None]
    return shapely.polygons(np.stack([x, y], -1))


def write_tiles(heights, folder, tiles):
    """The map cut into tiles x tiles GeoTIFFs, as a survey delivers it."""
    import rasterio
    from rasterio.windows import Window
    os.makedirs(folder, exist_ok=True)
    with rasterio.open(heights) as src:
        side = src.width // tiles
        for row in range(tiles):
            for col in range(tiles):
                window = Window(col * side, row * side, side, side)
                profile = dict(src.profile, width=side, height=side,
                               transform=src.window_transform(window))
                with rasterio.open(os.path.join(folder, f'tile_{row}_{col}_height.tif'), 'w',
                                   **profile) as dst:
                    for r0 in range(0, side, 512):
                        rows = Window(col * side, row * side + r0, side, min(512, side - r0))
                        dst.write(src.read(1, window=rows), 1,
                                  window=Window(0, r0, side, rows.height))


def run(heights, footprints, out):
    """(seconds, peak RSS MB) of buildings.py in its own process."""
    code = ("import resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "t = time.perf_counter() - t\n"
            "if p.returncode: sys.exit(p.stderr[-2000:])\n"
            "print(t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n")
    proc = subprocess.run([sys.executable, '-c', code, sys.executable,
                           os.path.join(ROOT, 'buildings.py'), heights, '--out', out,
                           '--footprints', footprints], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"buildings.py failed: {proc.stderr}")
    seconds, peak = map(float, proc.stdout.split())
    return seconds, peak


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--size', type=int, default=20000, help='map side in px')
    p.add_argument('--footprints', type=int, default=50000)
    p.add_argument('--keep', help='folder for the inputs (default: a temporary one)')
    p.add_argument('--survey', type=int, metavar='TILES',
                   help='instead: the map as TILES x TILES tiles with a national file of '
                        '--national footprints around the --footprints on the map')
    p.add_argument('--national', type=int, default=2000000)
    args = p.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix='bench_buildings_')
    os.makedirs(work, exist_ok=True)
    if args.survey:
        return survey(args, work)
    rows = []
    variants = ((args.size // 2, args.footprints // 4), (args.size, args.footprints // 4),
                (args.size, args.footprints))
    for size, count in variants:
        heights = os.path.join(work, f'map{size}_height.tif')
        feet = os.path.join(work, f'feet{size}_{count}.gpkg')
        t = time.perf_counter()
        if not os.path.exists(heights):
            write_height_map(heights, size)
        if not os.path.exists(feet):
            write_footprints(feet, size, count)
        made = time.perf_counter() - t
        seconds, peak = run(heights, feet, os.path.join(work, f'out{size}.gpkg'))
        rows.append((size, count, seconds, peak))
        print(f"{size} x {size} px ({size * size * 8 / 2 ** 20:.0f} MB as float64), {count} "
              f"footprints (inputs made in {made:.0f} s): {seconds:.1f} s, "
              f"{count / seconds:.0f} buildings/s, peak RSS {peak:.0f} MB", flush=True)
    (s0, n0, _, m0), (s1, _, _, m1), (_, n2, _, m2) = rows
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"ratio: peak RSS {m1 / m0:.2f}x for {(s1 / s0) ** 2:.0f}x the cells "
          f"({n0} footprints); {m2 / m1:.2f}x for {n2 / n0:.0f}x the footprints")


def survey(args, work):
    """Tiles and a national footprint file against the footprints alone, and
    the tiles' building heights against those of the map as one file."""
    import pyogrio
    heights = os.path.join(work, f'map{args.size}_height.tif')
    tiles = os.path.join(work, f'tiles{args.survey}')
    alone = os.path.join(work, f'feet{args.size}_{args.footprints}.gpkg')
    national = os.path.join(work, f'national{args.national}.gpkg')
    t = time.perf_counter()
    if not os.path.exists(heights):
        write_height_map(heights, args.size)
    if not os.path.isdir(tiles):
        write_tiles(heights, tiles, args.survey)
    if not os.path.exists(alone):
        write_footprints(alone, args.size, args.footprints)
    if not os.path.exists(national):
        write_footprints(national, args.size, args.footprints,
                         outside=args.national - args.footprints)
    print(f"inputs made in {time.perf_counter() - t:.0f} s", flush=True)
    runs = {}
    for name, maps, feet in (('tiles, national file', tiles, national),
                             ('tiles, footprints alone', tiles, alone),
                             ('one map, footprints alone', heights, alone)):
        out = os.path.join(work, name.replace(', ', '_').replace(' ', '') + '.gpkg')
        runs[name] = run(maps, feet, out) + (out,)
        print(f"{name}: {runs[name][0]:.1f} s, peak RSS {runs[name][1]:.0f} MB", flush=True)
    (t0, m0, national_out), (t1, m1, _), (_, _, whole_out) = runs.values()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"national file / footprints alone: {t0 / t1:.2f}x time, {m0 / m1:.2f}x peak RSS")
    meta, _, _, tiled = pyogrio.raw.read(national_out)
    _, _, _, whole = pyogrio.raw.read(whole_out)
    names = list(meta['fields'])
    by_id = {name: dict(zip(tiled[names.index('ident')], tiled[names.index(name)]))
             for name in ('h_dak_70p', 'h_dak_max', 'n_pixels')}
    worst = 0.0
    for name in by_id:
        values = whole[names.index(name)]
        ids = whole[names.index('ident')] + (args.national - args.footprints)
        other = np.array([by_id[name][i] for i in ids])
        worst = max(worst, float(np.nanmax(np.abs(other - values))))
    print(f"tiles against one map: largest difference of h_dak_70p, h_dak_max, n_pixels "
          f"over {len(whole[0])} buildings: {worst:g}")


if __name__ == '__main__':
    main()
