"""Peak memory and speed of predict.py's streamed path on input layouts of
the same pixel count, against predicting the whole image in memory (read
whole, predict_tile, write whole), in one run.

    python bench/predict_large.py [--size 8000] [--rows N] [--keep DIR] [--skip-whole]
        [--layouts tiled,single-strip,narrow] [--uncertainty] [--read-only]
        [--set NAME=VALUE ...]

Layouts: 'tiled' (a tiled deflate COG, --rows x --size px), 'single-strip'
(the same pixels as one uncompressed strip, as many tools write by
default) and 'narrow' (a tiled file NARROW px wide, narrower
than the crop, with as many pixels: a flight strip). The images (smooth
random RGB, uint8, georeferenced) and the networks (the synthetic dataset's
sizes: MTL with a quarter-width decoder and, with correction, the DAE;
untrained, since speed and memory do not depend on the weights) are made
first. Each variant then runs in its own process, which reports its time and
its peak resident memory (VmHWM); one more process only builds the networks
and runs one batch of windows, so "above the networks" is what the image
costs. Settings (cropSize, predict_stride, predict_window, test_batch_size,
correction, ...) come from config.py and --set; the whole-image variant
uses the same stride and window. Last lines: each layout's peak above the
networks over the tiled one's, and `ratio: <whole-image peak RSS / streamed
peak RSS>`.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import config  # noqa: E402
import machine  # noqa: E402
from utils import settings  # noqa: E402

CRS = 'EPSG:32632'
TRANSFORM = (0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)     # Affine's first six


def peak_rss_mb():
    with open('/proc/self/status') as f:
        line = next(line for line in f if line.startswith('VmHWM'))
    return int(line.split()[1]) / 1024


NARROW = 80    # px: the narrow layout's width, below the synthetic crop of 96
LAYOUTS = ('tiled', 'single-strip', 'narrow')


def write_image(path, height, width, layout='tiled'):
    """A smooth random RGB GeoTIFF, written band by band (never whole in
    memory): a tiled COG (our writer), or one uncompressed strip (GDAL)."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window
    from utils.geo.grid import Grid
    from utils.geo.write import CogWriter
    rng = np.random.RandomState(0)
    coarse = rng.rand(height // 64 + 2, width // 64 + 2, 3)
    geo = dict(crs=rasterio.crs.CRS.from_string(CRS), transform=Affine(*TRANSFORM))
    if layout == 'single-strip':
        target = rasterio.open(path, 'w', driver='GTiff', height=height, width=width, count=3,
                               dtype='uint8', photometric='rgb', blockysize=height, **geo)
    else:
        target = CogWriter(path, (height, width, 3), np.uint8, resampling='nearest',
                           grid=Grid(height, width, **geo))
    cols = np.linspace(0, coarse.shape[1] - 1.001, width)
    for r0 in range(0, height, 256):
        rows = np.linspace(0, coarse.shape[0] - 1.001, height)[r0:r0 + 256]
        y0, fy = rows.astype(int), (rows % 1)[:, None, None]
        x0, fx = cols.astype(int), (cols % 1)[None, :, None]
        top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
        bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
        band = ((top * (1 - fy) + bottom * fy) * 250).astype(np.uint8)
        if layout == 'single-strip':
            target.write(np.moveaxis(band, -1, 0), window=Window(0, r0, width, len(band)))
        else:
            target.write(band)
    target.close()


def networks(folder, make=False):
    """The untrained networks, saved to (make) or loaded from `folder`."""
    import keras
    from utils import distribute
    from utils.model import networks, weights
    keras.utils.set_random_seed(0)
    with distribute.get_strategy(config).scope():
        mtl = networks.build_mtl(config, pretrained=False)
        dae = networks.build_dae(config) if config.correction else None
    for model, kind in ((mtl, 'mtl'), (dae, 'dae')):
        if model is not None:
            path = os.path.join(folder, f'{kind}.weights.h5')
            if make:
                weights.save(model, path, kind, config)
            else:
                found = weights.WeightsFile(path, kind)
                found.check(config)
                found.load_into(model)
    return mtl, dae


UNCERTAIN = 'tiled+uncertainty'     # the tiled image, the uncertainty written too


def variant(name, folder, image_path):
    """One measurement in this process: prints {seconds, peak_mb}."""
    if name in ('imports', 'read'):     # --read-only: the input side alone
        from utils.geo.image import Image
        start = time.perf_counter()
        if name == 'read':
            with Image(image_path, [0, 1, 2], 3) as image:
                for r0 in range(0, image.height, 256):
                    image.rows(r0, min(r0 + 256, image.height))
        print(json.dumps({'seconds': time.perf_counter() - start, 'peak_mb': peak_rss_mb()}))
        return
    from utils import distribute
    from utils.data.samples import read_image
    from utils.geo.classes import ClassMap
    from utils.geo.read import read_grid
    from utils.geo.write import write_cog
    from utils.predict import blend, engines, outputs
    mtl, dae = networks(folder)
    predict_fn = engines.tensorflow_fn(mtl, dae, cfg=config,
                                       strategy=distribute.get_strategy(config))
    crop = config.cropSize
    warm = np.zeros((crop, crop, 3), np.float32)
    blend.predict_tile(predict_fn, warm, crop, config.predict_stride)  # trace
    start = time.perf_counter()
    if name in LAYOUTS or name == UNCERTAIN:
        heads = ('height', 'sem') + ((outputs.UNCERTAINTY,) if name == UNCERTAIN else ())
        paths = outputs.output_paths(os.path.join(folder, name), 'large', heads)
        os.makedirs(os.path.dirname(paths['height']), exist_ok=True)
        calibration = None
        if name == UNCERTAIN:   # its values do not change the cost: a fit to noise
            from utils.predict.calibration import Calibration, windows_of
            noise = np.random.default_rng(0).random((2, 1000))
            calibration = Calibration.fit(noise[0], noise[1], windows_of(config, dae))
        outputs.predict_image(predict_fn, image_path, paths, [0, 1, 2],
                              cfg=settings.current(), calibration=calibration)
    elif name == 'whole':
        out = blend.predict_tile(predict_fn, read_image(config, image_path), crop,
                                 config.predict_stride, window=config.predict_window)
        grid = read_grid(image_path)
        write_cog(os.path.join(folder, 'whole_height.tif'), out['height'], grid=grid)
        ClassMap(config.label_codes).write(os.path.join(folder, 'whole_sem.tif'),
                                           np.argmax(out['sem'], -1), grid=grid)
    print(json.dumps({'seconds': time.perf_counter() - start, 'peak_mb': peak_rss_mb()}))


def measure(name, folder, image_path, argv):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--variant', name,
                           '--folder', folder, '--image', image_path] + argv,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--size', type=int, default=8000, help='image side, px')
    p.add_argument('--rows', type=int, help='image height, px (default: --size); the '
                                           "streamed path's memory depends on the width")
    p.add_argument('--keep', help='folder for the image, networks and outputs '
                                  '(default: a temporary folder, removed)')
    p.add_argument('--skip-whole', action='store_true',
                   help='no whole-image variant (it needs about 48 bytes per pixel)')
    p.add_argument('--layouts', default='tiled,single-strip,narrow',
                   help='input layouts predicted streamed (see above)')
    p.add_argument('--uncertainty', action='store_true',
                   help="also the tiled image with --outputs ...,uncertainty (the windows' "
                        "spread blended and written), and its time and peak over the tiled")
    p.add_argument('--read-only', action='store_true',
                   help='no networks: each layout only read in bands of 256 rows, as '
                        'predict.py reads it (peak above a process that imports the same)')
    p.add_argument('--variant', help=argparse.SUPPRESS)
    p.add_argument('--folder', help=argparse.SUPPRESS)
    p.add_argument('--image', help=argparse.SUPPRESS)
    args = settings.parse_args(p)
    sets = [a for pair in args.set for a in ('--set', pair)]
    if args.variant:
        return variant(args.variant, args.folder, args.image)

    temp = None if args.keep else tempfile.TemporaryDirectory()
    folder = args.keep or temp.name
    os.makedirs(folder, exist_ok=True)
    rows = args.rows or args.size
    layouts = args.layouts.split(',')
    shapes = {'tiled': (rows, args.size), 'single-strip': (rows, args.size),
              'narrow': (-(-rows * args.size // NARROW), NARROW)}
    images = {}
    from utils.geo.grid import starts
    from utils.geo.image import Image
    needs_tiled = not args.skip_whole or args.uncertainty
    for layout in layouts + ([] if not needs_tiled or 'tiled' in layouts else ['tiled']):
        h, w = shapes[layout]
        images[layout] = os.path.join(folder, f'{layout}.tif')
        start = time.perf_counter()
        write_image(images[layout], h, w, layout)
        made = time.perf_counter() - start
        start = time.perf_counter()
        with Image(images[layout], [0, 1, 2], 3) as image:
            for r0 in range(0, h, 256):
                image.rows(r0, min(r0 + 256, h))
        print(f"{layout} image: {h} x {w} px RGB uint8, "
              f"{os.path.getsize(images[layout]) / 1e6:.0f} MB, made in {made:.1f} s, read "
              f"in bands of 256 rows (decode, scale, nodata mask) in "
              f"{time.perf_counter() - start:.1f} s")
    if args.read_only:
        print(f"machine: {machine.describe()}")
        base = measure('imports', folder, images[layouts[0]], sets)
        for name in layouts:
            r = measure('read', folder, images[name], sets)
            print(f"{name:>12}: read in {r['seconds']:.1f} s, peak {r['peak_mb']:.0f} MB "
                  f"({r['peak_mb'] - base['peak_mb']:.0f} MB above the imports)")
        if temp:
            temp.cleanup()
        return
    networks(folder, make=True)

    from utils import distribute
    print(f"machine: {machine.describe()}")
    print(f"crop {config.cropSize}, stride {config.predict_stride}, window "
          f"{config.predict_window}, {config.test_batch_size} windows per call, MTL "
          f"decoder_scale {config.mtl_decoder_scale}"
          + (f" + DAE width_scale {config.dae_width_scale}" if config.correction else '')
          + f", replicas: {distribute.get_strategy(config).num_replicas_in_sync}")
    model = measure('model', folder, images[layouts[0]], sets)
    print(f"networks alone: peak {model['peak_mb']:.0f} MB")
    results = {}
    extra = ([UNCERTAIN] if args.uncertainty else []) + ([] if args.skip_whole else ['whole'])
    for name in layouts + extra:
        h, w = shapes.get(name, shapes['tiled'])
        windows = len(starts(max(w, config.cropSize), config.cropSize,
                             config.predict_stride)) * \
            len(starts(max(h, config.cropSize), config.cropSize, config.predict_stride))
        r = results[name] = measure(name, folder, images.get(name, images.get('tiled')), sets)
        megapixels = h * w / 1e6
        print(f"{name:>12}: {h} x {w} px, {windows} windows, {r['seconds']:.0f} s, "
              f"{megapixels / r['seconds']:.3f} megapixels/s, peak {r['peak_mb']:.0f} MB "
              f"({r['peak_mb'] - model['peak_mb']:.0f} MB above the networks)")
    if temp:
        temp.cleanup()
    if 'tiled' in results:
        above = {k: v['peak_mb'] - model['peak_mb'] for k, v in results.items()}
        for name in layouts:
            if name != 'tiled':
                print(f"{name} / tiled, peak above the networks: "
                      f"{above[name] / max(above['tiled'], 1):.2f}")
    if UNCERTAIN in results and 'tiled' in results:
        with_, without = results[UNCERTAIN], results['tiled']
        print(f"uncertainty / without: time {with_['seconds'] / without['seconds']:.2f}, "
              f"peak {with_['peak_mb'] / without['peak_mb']:.2f}, peak above the networks "
              f"{above[UNCERTAIN] / max(above['tiled'], 1):.2f}")
    if 'whole' in results:
        print(f"ratio: {results['whole']['peak_mb'] / results['tiled']['peak_mb']:.2f}")
    else:
        print("ratio: n/a (--skip-whole)")


if __name__ == '__main__':
    # The input side's measurements (--read-only) are of processes without TensorFlow.
    variant_name = sys.argv[sys.argv.index('--variant') + 1] if '--variant' in sys.argv else None
    sys.exit(settings.run_main(main, tensorflow=variant_name not in ('imports', 'read')))
