"""Peak memory and speed of predict.py's streamed path against predicting
the whole image in memory (read whole, predict_tile, write whole), on one
large tiled GeoTIFF, in one run.

    python bench/predict_large.py [--size 8000] [--rows N] [--keep DIR] [--skip-whole]
        [--set NAME=VALUE ...]

The image (smooth random RGB, uint8, georeferenced) and the networks
(the synthetic dataset's sizes: MTL with a quarter-width decoder and, with
correction, the DAE; untrained, since speed and memory do not depend on the
weights) are made first. Each variant then runs in its own process, which
reports its time and its peak resident memory (VmHWM); a third process only
builds the networks and runs one batch of windows, so "above model" is what
the image costs. Settings (cropSize, test_stride, test_batch_size,
correction, ...) come from config.py and --set. Last line:
`ratio: <whole-image peak RSS / streamed peak RSS>`.
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

GEO = [(33550, 'd', 3, (0.5, 0.5, 0.0), True),
       (33922, 'd', 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
       (34735, 'H', 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632), True),
       (34737, 's', 0, 'WGS 84 / UTM zone 32N|', True)]


def peak_rss_mb():
    with open('/proc/self/status') as f:
        line = next(line for line in f if line.startswith('VmHWM'))
    return int(line.split()[1]) / 1024


def write_image(path, height, width):
    """A smooth random RGB GeoTIFF, written band by band (never whole in memory)."""
    from utils import cog
    rng = np.random.RandomState(0)
    coarse = rng.rand(height // 64 + 2, width // 64 + 2, 3)
    writer = cog.CogWriter(path, (height, width, 3), np.uint8, GEO, photometric='rgb',
                           overview='nearest')
    cols = np.linspace(0, coarse.shape[1] - 1.001, width)
    for r0 in range(0, height, 256):
        rows = np.linspace(0, coarse.shape[0] - 1.001, height)[r0:r0 + 256]
        y0, fy = rows.astype(int), (rows % 1)[:, None, None]
        x0, fx = cols.astype(int), (cols % 1)[None, :, None]
        top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
        bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
        writer.write(((top * (1 - fy) + bottom * fy) * 250).astype(np.uint8))
    writer.close()


def networks(folder, make=False):
    """The untrained networks, saved to (make) or loaded from `folder`."""
    import keras
    from nets import dae as dae_net, mtl as mtl_net
    from utils import checkpoints
    keras.utils.set_random_seed(0)
    with config.strategy.scope():
        mtl = mtl_net.build_from_config(pretrained=False)
        dae = dae_net.build_from_config() if config.correction else None
    for model, kind in ((mtl, 'mtl'), (dae, 'dae')):
        if model is not None:
            path = os.path.join(folder, f'{kind}.weights.h5')
            if make:
                checkpoints.save_weights(model, path, kind)
            else:
                checkpoints.load_weights(model, path, kind)
    return mtl, dae


def variant(name, folder, image_path):
    """One measurement in this process: prints {seconds, peak_mb}."""
    import predict
    import tifffile
    from utils import datasets, evaluation, inference
    mtl, dae = networks(folder)
    predict_fn = inference.make_predict_fn(mtl, dae)
    crop = config.cropSize
    warm = np.zeros((crop, crop, 3), np.float32)
    inference.predict_tile(predict_fn, warm, crop, config.test_stride)  # trace
    start = time.perf_counter()
    if name == 'streamed':
        paths = predict.output_paths(os.path.join(folder, 'streamed'), 'large',
                                     ('height', 'sem'))
        os.makedirs(os.path.dirname(paths['height']), exist_ok=True)
        predict.predict_image(predict_fn, image_path, paths, [0, 1, 2])
    elif name == 'whole':
        out = inference.predict_tile(predict_fn, datasets.read_image(image_path), crop,
                                     config.test_stride)
        tags = evaluation.geo_tags(image_path)
        tifffile.imwrite(os.path.join(folder, 'whole_height.tif'), out['height'],
                         extratags=tags, tile=(256, 256), compression='zlib')
        tifffile.imwrite(os.path.join(folder, 'whole_sem.tif'), evaluation.label_image(
            np.argmax(out['sem'], -1), config.label_codes), extratags=tags,
            tile=(256, 256), compression='zlib')
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
    image_path = os.path.join(folder, 'large.tif')
    rows = args.rows or args.size
    start = time.perf_counter()
    write_image(image_path, rows, args.size)
    print(f"image: {rows} x {args.size} px RGB uint8, tiled deflate, "
          f"{os.path.getsize(image_path) / 1e6:.0f} MB, made and written in "
          f"{time.perf_counter() - start:.1f} s")
    from utils import raster
    start = time.perf_counter()
    with raster.Image(image_path, [0, 1, 2], 3) as image:
        for r0 in range(0, rows, 256):
            image.rows(r0, min(r0 + 256, rows))
    print(f"reading it in bands of 256 rows (decode, scale, nodata mask): "
          f"{time.perf_counter() - start:.1f} s")
    networks(folder, make=True)

    from utils import inference
    windows = len(inference.window_starts(args.size, config.cropSize, config.test_stride)) \
        * len(inference.window_starts(rows, config.cropSize, config.test_stride))
    print(f"machine: {machine.describe()}")
    print(f"crop {config.cropSize}, stride {config.test_stride}, {windows} windows, "
          f"{config.test_batch_size} per call, MTL decoder_scale {config.mtl_decoder_scale}"
          + (f" + DAE width_scale {config.dae_width_scale}" if config.correction else '')
          + f", replicas: {config.strategy.num_replicas_in_sync}")
    megapixels = rows * args.size / 1e6
    model = measure('model', folder, image_path, sets)
    print(f"networks alone: peak {model['peak_mb']:.0f} MB")
    results = {}
    for name in ('streamed',) + (() if args.skip_whole else ('whole',)):
        r = results[name] = measure(name, folder, image_path, sets)
        print(f"{name:>9}: {r['seconds']:.0f} s, {megapixels / r['seconds']:.3f} megapixels/s, "
              f"peak {r['peak_mb']:.0f} MB ({r['peak_mb'] - model['peak_mb']:.0f} MB above "
              f"the networks)")
    if temp:
        temp.cleanup()
    if 'whole' in results:
        print(f"ratio: {results['whole']['peak_mb'] / results['streamed']['peak_mb']:.2f}")
    else:
        print("ratio: n/a (--skip-whole)")


if __name__ == '__main__':
    main()
