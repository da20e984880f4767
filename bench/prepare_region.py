"""Speed and peak memory of prepare_dataset.py on a large region, at two
sizes, to show that memory follows the tile, not the area.

    python bench/prepare_region.py [--sides 1000,2000] [--tile 512] [--block 4] [--keep DIR]

For each side (metres) it writes a square region as GeoTIFFs, as mapping
agencies publish them: an orthophoto at 0.25 m (uint8 RGB, tiled, deflate),
a DSM at 0.5 m and a DTM at 1 m (float32), class codes at 0.5 m, with
buildings on a sloping terrain; then runs prepare_dataset.py on them in its
own process and reports its time and peak resident memory (of
that process, VmHWM). 2000 m is 4 km^2, 64 Mpx at 0.25 m.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.windows import Window  # noqa: E402

import machine  # noqa: E402

X0, Y0 = 500000.0, 5402000.0
# Runs a script and reports its peak resident memory (VmHWM) on stderr. A
# process's own figure: the ru_maxrss wait4 reports for a child also counts
# what the parent held when it forked.
MEASURED = """
import atexit, runpy, sys
def peak():
    with open('/proc/self/status') as f:
        print('peak ' + next(l for l in f if l.startswith('VmHWM')).split()[1], file=sys.stderr)
atexit.register(peak)
sys.argv = sys.argv[1:]
sys.path.insert(0, sys.argv.pop(0))
runpy.run_path(sys.argv[0], run_name='__main__')
"""
ROWS = 512      # rows written per block


def heights_at(xs, ys):
    """(terrain, building height, class) at UTM points: a plane, and
    buildings of 12 x 9 m every 30 m, 3-21 m high."""
    terrain = 100 + 0.02 * (xs - X0) - 0.01 * (ys - Y0)
    i, j = np.floor((Y0 - ys) / 30), np.floor((xs - X0) / 30)
    u, v = (xs - X0) - 30 * j, (Y0 - ys) - 30 * i
    inside = (u > 5) & (u < 17) & (v > 8) & (v < 17)
    building = np.where(inside, 3 + (i * 7 + j * 3) % 7 * 3, 0)
    return terrain, building, np.where(inside, 2, 1).astype(np.uint8)


def write(path, side, gsd, kind):
    n = int(round(side / gsd))
    bands = 3 if kind == 'ortho' else 1
    dtype = 'uint8' if kind in ('ortho', 'labels') else 'float32'
    profile = dict(driver='GTiff', width=n, height=n, count=bands, dtype=dtype,
                   crs='EPSG:32632', transform=from_origin(X0, Y0, gsd, gsd),
                   tiled=True, blockxsize=256, blockysize=256, compress='deflate',
                   BIGTIFF='IF_SAFER')
    with rasterio.open(path, 'w', **profile) as out:
        for r0 in range(0, n, ROWS):
            rows = min(ROWS, n - r0)
            c, r = np.meshgrid(np.arange(n) + 0.5, np.arange(r0, r0 + rows) + 0.5)
            xs, ys = X0 + c * gsd, Y0 - r * gsd
            terrain, building, classes = heights_at(xs, ys)
            if kind == 'ortho':
                texture = ((c.astype(int) * 7 + r.astype(int) * 13) % 23).astype(np.uint8)
                roof = building > 0
                block = np.stack([np.where(roof, 200, 70 + texture),
                                  np.where(roof, 60, 110 + texture),
                                  np.where(roof, 50, 60 + texture)]).astype(np.uint8)
            elif kind == 'dsm':
                block = (terrain + building)[None].astype(np.float32)
            elif kind == 'dtm':
                block = terrain[None].astype(np.float32)
            else:
                block = classes[None]
            out.write(block, window=Window(0, r0, n, rows))
    return path


def run(side, tile, block, folder):
    sources = os.path.join(folder, 'sources')
    os.makedirs(sources, exist_ok=True)
    start = time.perf_counter()
    paths = {kind: write(os.path.join(sources, f'{kind}.tif'), side, gsd, kind)
             for kind, gsd in (('ortho', 0.25), ('dsm', 0.5), ('dtm', 1.0), ('labels', 0.5))}
    written = time.perf_counter() - start
    command = [sys.executable, '-c', MEASURED, ROOT, os.path.join(ROOT, 'prepare_dataset.py'),
               'region',
               '--images', paths['ortho'], '--dsm', paths['dsm'], '--dtm', paths['dtm'],
               '--labels', paths['labels'], '--tile', str(tile), '--block', str(block),
               '--set', f"shortcut_path={os.path.join(folder, 'datasets')}"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = result.stdout
    if result.returncode:
        sys.exit(f"prepare_dataset.py failed:\n{output[-2000:]}\n{result.stderr[-2000:]}")
    peak_mb = int(result.stderr.split('peak ')[-1].split()[0]) / 1024
    km2 = (side / 1000) ** 2
    megapixels = (side / 0.25) ** 2 / 1e6
    summary = [line for line in output.splitlines() if line.startswith(('  ', 'datasets', '/'))]
    print(f"side {side:.0f} m: {km2:g} km2, {megapixels:.0f} Mpx at 0.25 m (inputs written in "
          f"{written:.0f} s)")
    print(f"  prepare_dataset.py {seconds:.1f} s: {km2 / seconds * 60:.2f} km2/min, "
          f"{megapixels / seconds:.2f} Mpx/s, peak RSS {peak_mb:.0f} MB")
    print('\n'.join(summary[-8:]))
    return peak_mb


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sides', default='1000,2000', help='square sides in metres')
    p.add_argument('--tile', type=int, default=512)
    p.add_argument('--block', type=int, default=4, help='split blocks, in tiles')
    p.add_argument('--keep', help='write here and keep (default: a temporary folder)')
    args = p.parse_args()
    print(machine.describe())
    print(' '.join(sys.argv))
    peaks = []
    for side in (float(s) for s in args.sides.split(',')):
        folder = os.path.join(args.keep, f'side{side:.0f}') if args.keep else \
            tempfile.mkdtemp(prefix='prepare_region_')
        try:
            peaks.append(run(side, args.tile, args.block, folder))
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    if len(peaks) > 1:
        print(f"peak RSS ratio largest / smallest area: {peaks[-1] / peaks[0]:.2f}")


if __name__ == '__main__':
    main()
