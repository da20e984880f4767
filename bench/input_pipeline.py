"""Training input speed: utils/pipeline.py against a loader that works the
way the research code does, on the same Vaihingen-like tiles, in one run.

    python bench/input_pipeline.py [--tiles 4] [--rounds 3] [--batches 200]
        [--reference-batches 6] [--set NAME=VALUE ...]

Writes full-size tiles (about 2000 x 2500 px) in the Vaihingen layout (RGB
tif, NDSM jpg, SEM colour tif) to a temporary folder and trains on them as
the 'train' split (the benchmark replaces the published list of 13 training
areas by the tiles it wrote). MTL settings: 320 px crops with the image,
height, mask, labels and normals, the published global batch of 4.

Reference, per batch: pick a tile at random, decode its three files from
disk (datasets.load_sample), compute the normals of the whole tile
(geometry.surface_normals), crop batch_size samples in a Python loop; one
thread. Ours: tf.data with the tiles cached once (the one-time decode is
timed and reported on its own, not in the rate).

The machine may be shared, so the two loaders alternate for --rounds
rounds and each reports its median rate. Prints samples per second of both
and last `ratio: <ours / reference>`.
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402

import config  # noqa: E402
import machine  # noqa: E402
from utils import settings  # noqa: E402

TILE_SHAPES = [(2000, 2500), (2100, 2400), (1950, 2550), (2050, 2480)]
AREAS = (1, 3, 5, 7)


def write_tiles(root, count, seed=0):
    """Vaihingen-like tiles: terrain and buildings in the NDSM, classes and colours to match."""
    rng = np.random.default_rng(seed)
    for folder in ('RGB', 'NDSM', 'SEM'):
        os.makedirs(os.path.join(root, folder))
    for area, (rows, cols) in zip(AREAS[:count], TILE_SHAPES):
        write_tile(root, area, rows, cols, rng)


def write_tile(root, area, rows, cols, rng):
    """One Vaihingen-like area (the folders exist)."""
    codes = np.array(config.VAIHINGEN_CODES, np.uint8)
    small = rng.random((rows // 50, cols // 50)).astype(np.float32)
    terrain = cv2.resize(small, (cols, rows), interpolation=cv2.INTER_CUBIC) * 10
    height = terrain.copy()
    classes = np.zeros((rows, cols), np.uint8)                  # impervious
    classes[terrain > 6] = 2                                    # low vegetation
    for _ in range(150):                                        # buildings
        y, x = rng.integers(0, rows - 80), rng.integers(0, cols - 80)
        h, w = rng.integers(20, 80, 2)
        height[y:y + h, x:x + w] = rng.uniform(40, 200)
        classes[y:y + h, x:x + w] = 1
    for _ in range(300):                                        # trees and cars
        y, x = rng.integers(0, rows - 20), rng.integers(0, cols - 20)
        kind, size = (3, 15) if rng.random() < 0.8 else (4, 4)
        height[y:y + size, x:x + size] += 10 if kind == 3 else 1
        classes[y:y + size, x:x + size] = kind
    colours = codes[classes]
    noise = rng.integers(0, 40, (rows, cols, 3), dtype=np.uint8)
    rgb = (codes[classes] // 2 + noise).astype(np.uint8)
    name = f'top_mosaic_09cm_area{area}'
    tifffile.imwrite(os.path.join(root, 'RGB', name + '.tif'), rgb)
    cv2.imwrite(os.path.join(root, 'NDSM', f'dsm_09cm_matching_area{area}.jpg'),
                np.clip(height, 0, 255).astype(np.uint8))
    tifffile.imwrite(os.path.join(root, 'SEM', name + '.tif'), colours)


def reference_batches(samples, batch, count, rng):
    """The research loader: per batch one tile decoded, its normals, a crop loop."""
    from utils import datasets, geometry
    crop = config.cropSize
    for _ in range(count):
        loaded = datasets.load_sample(samples[rng.integers(len(samples))])
        normals = geometry.surface_normals(loaded.height)
        rows, cols = loaded.height.shape
        images, heights, labels, norms = [], [], [], []
        for _ in range(batch):
            y, x = rng.integers(0, rows - crop + 1), rng.integers(0, cols - crop + 1)
            window = (slice(y, y + crop), slice(x, x + crop))
            images.append(loaded.image[window])
            heights.append(loaded.height[window][..., None])
            labels.append(loaded.labels[window])
            norms.append(normals[window])
        yield dict(image=np.stack(images), height=np.stack(heights), sem=np.stack(labels),
                   norm=np.stack(norms))


def rate(batches, batch_size):
    """Samples per second while consuming `batches` (an iterator)."""
    start, count = time.perf_counter(), 0
    for _ in batches:
        count += batch_size
    return count / (time.perf_counter() - start)


def main():
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--tiles', type=int, default=4, choices=range(1, len(AREAS) + 1))
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--batches', type=int, default=200, help='our batches timed per round')
    p.add_argument('--reference-batches', type=int, default=6,
                   help='reference batches timed per round')
    p.add_argument('--warmup', type=int, default=20, help='our batches before timing')
    args = settings.parse_args(p)
    with tempfile.TemporaryDirectory(prefix='dsmnet_bench_') as workdir:
        run(args, workdir)


def run(args, workdir):
    settings.apply(['dataset_name=Vaihingen', f'shortcut_path={workdir}', 'cropSize=320',
                    'sem_flag=True', 'norm_flag=True', 'edge_flag=False', 'augment=False',
                    'mtl_training_samples=1000000'] + args.set)
    from utils import datasets, pipeline
    datasets.VAIHINGEN_AREAS['train'] = AREAS[:args.tiles]
    batch = config.mtl_global_batch_size
    print(machine.describe())
    print(f"command: python bench/input_pipeline.py {' '.join(sys.argv[1:])}")

    start = time.perf_counter()
    write_tiles(os.path.join(workdir, 'Vaihingen'), args.tiles)
    samples = datasets.find_split('train')
    print(f"{len(samples)} tiles {', '.join('x'.join(map(str, s)) for s in TILE_SHAPES[:args.tiles])}"
          f" written in {time.perf_counter() - start:.1f} s; crop {config.cropSize}, "
          f"global batch {batch}")

    start = time.perf_counter()
    pipeline.train_dataset('mtl', batch, epoch=0)
    print(f"ours, one-time decode + normals + cache of the tiles: "
          f"{time.perf_counter() - start:.1f} s (not in the rate)")

    rng = np.random.default_rng(config.seed)
    ours, reference = [], []
    for r in range(args.rounds):
        reference.append(rate(reference_batches(samples, batch, args.reference_batches, rng),
                              batch))
        iterator = iter(pipeline.train_dataset('mtl', batch, epoch=r + 1))
        for _ in range(args.warmup):
            next(iterator)
        ours.append(rate((next(iterator) for _ in range(args.batches)), batch))
        del iterator    # no background prefetching while the reference runs
        print(f"round {r + 1}: ours {ours[-1]:.1f} samples/s, "
              f"reference {reference[-1]:.2f} samples/s")
    ours_rate, reference_rate = statistics.median(ours), statistics.median(reference)
    print(f"ours (tf.data, cached tiles): {ours_rate:.1f} samples/s (median of {args.rounds})")
    print(f"reference (decode + normals per batch, Python crops): "
          f"{reference_rate:.2f} samples/s (median of {args.rounds})")
    print(f"ratio: {ours_rate / reference_rate:.1f}")


if __name__ == '__main__':
    main()
