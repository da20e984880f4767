"""Writing a height map as a Cloud Optimized GeoTIFF: the hand-written
writer this project had (utils/cog.py, taken from git at --before) against
utils/geo/write.py's CogWriter (GDAL's COG driver), in one run.

    python bench/cog_write.py [--size 4000] [--rows 256] [--before 8c0d5be] [--repeat 2]

The map: float32, --size x --size px, smooth heights 0-30 m with buildings'
steps and a nodata hole (-9999), made band by band of --rows rows and written
as predict.py writes (rows in order as prediction produces them); the same
bands for every variant. Each variant runs in its own process, --repeat
times, alternating: its time in the writer (write() and close(); making the
bands is timed alone) as wall clock and as CPU time of all its threads (less
sensitive to a shared machine's load),
its peak resident memory (VmHWM) above a process that only makes the bands,
and the file's size. Variants: 'before' (the old writer), 'gdal' (CogWriter as
configured), 'gdal-level-6' (deflate level 6 instead of 5), 'gdal-zstd-stream'
(CogWriter with a ZSTD level 1 streamed file),
'gdal-1-thread' (NUM_THREADS=1 for the streamed file and the copy). Every
file is read back by GDAL and compared with the bands; the COG driver's
files are judged by rio-cogeo's cog_validate.
"""
import argparse
import importlib.util
import json
import resource
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # machine.describe loads TensorFlow
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

NODATA = -9999.0
VARIANTS = ('before', 'gdal', 'gdal-level-6', 'gdal-zstd-stream', 'gdal-1-thread')


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb():
    with open('/proc/self/status') as f:
        line = next(line for line in f if line.startswith('VmHWM'))
    return int(line.split()[1]) / 1024


def bands(size, rows):
    """The height map's bands of rows, top to bottom (never whole in memory)."""
    rng = np.random.RandomState(0)
    coarse = rng.rand(size // 64 + 2, size // 64 + 2) * 20
    cols = np.linspace(0, coarse.shape[1] - 1.001, size)
    x0, fx = cols.astype(int), cols % 1
    for r0 in range(0, size, rows):
        ys = np.linspace(0, coarse.shape[0] - 1.001, size)[r0:r0 + rows]
        y0, fy = ys.astype(int), (ys % 1)[:, None]
        top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
        bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
        band = (top * (1 - fy) + bottom * fy).astype(np.float32)
        yy, xx = np.mgrid[r0:r0 + len(band), 0:size]
        band += np.where((yy % 40 < 25) & (xx % 30 < 18), 3 + (yy // 40 + xx // 30) % 4 * 3, 0)
        band[(yy > size // 3) & (yy < size // 2) & (xx > size // 4) & (xx < size // 3)] = NODATA
        yield band


def old_writer(commit):
    """utils/cog.py as it was at `commit`, imported from git."""
    source = subprocess.run(['git', 'show', f'{commit}:utils/cog.py'], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), 'cog_before.py')
    with open(path, 'w') as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location('cog_before', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variant(name, path, size, rows, commit):
    """One write in this process: prints {seconds, peak_mb, bytes}."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from utils.geo import write as geo_write
    from utils.geo.grid import Grid
    crs, transform = CRS.from_epsg(32632), Affine(0.5, 0, 500000.0, 0, -0.5, 4000000.0)
    if name == 'before':
        cog = old_writer(commit)
        geo = [(33550, 'd', 3, (0.5, 0.5, 0.0), True),
               (33922, 'd', 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
               (34735, 'H', 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632),
                True)]
    elif name == 'gdal-level-6':
        geo_write.COG_OPTIONS = dict(geo_write.COG_OPTIONS, LEVEL=6)
    elif name == 'gdal-zstd-stream':
        geo_write.STREAM_OPTIONS = dict(geo_write.STREAM_OPTIONS, compress='ZSTD', zstd_level=1)
    elif name == 'gdal-1-thread':
        geo_write.THREADS = 1
    seconds = cpu = 0.0       # in the writer only: making the bands is not counted
    if name == 'making':
        start, cpu_start = time.perf_counter(), cpu_seconds()
        for _ in bands(size, rows):
            pass
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    else:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        if name == 'before':
            writer = cog.CogWriter(path, (size, size), np.float32, geo, nodata=NODATA)
        else:
            writer = geo_write.CogWriter(path, (size, size), np.float32,
                                      grid=Grid(size, size, crs, transform), nodata=NODATA)
        seconds += time.perf_counter() - start
        cpu += cpu_seconds() - cpu_start
        for band in bands(size, rows):
            start, cpu_start = time.perf_counter(), cpu_seconds()
            writer.write(band)
            seconds += time.perf_counter() - start
            cpu += cpu_seconds() - cpu_start
        start, cpu_start = time.perf_counter(), cpu_seconds()
        writer.close()
        seconds += time.perf_counter() - start
        cpu += cpu_seconds() - cpu_start
    print(json.dumps({'seconds': seconds, 'cpu': cpu, 'peak_mb': peak_rss_mb(),
                      'bytes': os.path.getsize(path) if name != 'making' else 0}))


def check(path, size, rows, cog_driver):
    import rasterio
    from rio_cogeo.cogeo import cog_validate
    with rasterio.open(path) as src:
        whole = src.read(1)
        levels = src.overviews(1)
    assert np.array_equal(whole, np.concatenate(list(bands(size, rows)))), path
    if cog_driver:
        valid, errors, _ = cog_validate(path, quiet=True)
        assert valid, errors
    return levels


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--size', type=int, default=4000)
    p.add_argument('--rows', type=int, default=256, help='rows per write')
    p.add_argument('--before', default='8c0d5be', help='commit holding the old utils/cog.py')
    p.add_argument('--repeat', type=int, default=2)
    p.add_argument('--variants', default=','.join(VARIANTS))
    p.add_argument('--variant', help=argparse.SUPPRESS)
    p.add_argument('--path', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return variant(args.variant, args.path, args.size, args.rows, args.before)
    import machine
    folder = tempfile.mkdtemp(dir=ROOT)     # the repository's disk, as outputs would be
    names = args.variants.split(',')
    results = {name: [] for name in ['making'] + names}
    for _ in range(args.repeat):
        for name in ['making'] + names:
            path = os.path.join(folder, f'{name}.tif')
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--variant', name,
                                   '--path', path, '--size', str(args.size), '--rows',
                                   str(args.rows), '--before', args.before],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if name != 'making':
                levels = check(path, args.size, args.rows, name != 'before')
                os.remove(path)
    print(f"machine: {machine.describe()}")
    print(f"{args.size} x {args.size} px float32 height map, written in bands of {args.rows} "
          f"rows; {args.repeat} runs per variant, alternating; overviews {levels}")
    base = min(r['peak_mb'] for r in results['making'])
    times = ', '.join(f"{r['seconds']:.2f}" for r in results['making'])
    print(f"{'making the bands alone':>24}: {times} s, peak {base:.0f} MB")
    best, cpu = {}, {}
    for name in names:
        runs = results[name]
        best[name] = min(r['seconds'] for r in runs)
        times = ', '.join(f"{r['seconds']:.2f}" for r in runs)
        cpu[name] = min(r['cpu'] for r in runs)
        print(f"{name:>24}: {times} s (CPU, least: {cpu[name]:.2f} s), peak "
              f"{max(r['peak_mb'] for r in runs) - base:.0f} MB above making the bands, "
              f"{runs[0]['bytes'] / 1e6:.1f} MB file")
    if 'before' in names:
        for name in names:
            if name != 'before':
                print(f"{name} / before, fastest time: {best[name] / best['before']:.2f}, "
                      f"least CPU time: {cpu[name] / cpu['before']:.2f}, file size: "
                      f"{results[name][0]['bytes'] / results['before'][0]['bytes']:.3f}")
    os.rmdir(folder)


if __name__ == '__main__':
    main()
