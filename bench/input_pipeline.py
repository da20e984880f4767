"""Training input speed and memory of utils/train/pipeline.py on a full-size
Vaihingen-like training set, for this checkout and older ones, in one run.

    python bench/input_pipeline.py [--code DIR ...] [--tiles 13] [--size 2000x2500]
        [--jitter 60] [--rounds 3] [--batches 200] [--warmup 20]
        [--reference-batches 2] [--set NAME=VALUE ...]

Writes --tiles Vaihingen tiles (RGB tif, NDSM jpg, SEM colour tif, the
published training areas) of about --size px, each side varied by up to
--jitter px, to a temporary folder. MTL settings: 320 px crops with the
image, height, mask, labels and normals, the published global batch of 4.

For each --code folder (default: this checkout; give older checkouts to
compare, e.g. `git archive 1de1d65 | tar -x -C /tmp/old`) a Python process
imports that code, starts TensorFlow, resets its peak resident size and
builds the training cache (tasks.MTLTask.train_dataset). Then the processes take
turns, --rounds times: each times --batches batches after --warmup on all
the machine's cores, then with every thread of the process pinned to one
core (sched_setaffinity), a fresh iterator each time. Reported per code:
the cache's bytes, the build time, the peak resident size over the size
before the build (through the whole run), the median rates, the rate of
each code over the first one's, and the CPU time the process spent per
sample and per second of the timed batches (on a shared machine the CPU a
loader needs per sample, and how many cores it kept busy, say more than
its rate).

Reference, per batch (--reference-batches per round, 0: none): the way the
research code loads, in this process: pick a tile at random, decode its
three files (utils/data/samples.load_sample), compute the normals of the
whole tile (utils/data/targets.surface_normals), crop the batch in a Python loop; one thread.
"""
import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

import machine
from checkout import code_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 2 ** 20
SETTINGS = ['dataset_name=Vaihingen', 'cropSize=320', 'sem_flag=True', 'norm_flag=True',
            'edge_flag=False', 'augment=False', 'mtl_training_samples=1000000']


def write_tile(root, area, rows, cols, rng):
    """One Vaihingen-like area (the folders exist): terrain and buildings in
    the NDSM, classes and colours to match."""
    import config
    from utils.geo.write import write_geotiff
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
    write_geotiff(os.path.join(root, 'RGB', name + '.tif'), rgb)
    cv2.imwrite(os.path.join(root, 'NDSM', f'dsm_09cm_matching_area{area}.jpg'),
                np.clip(height, 0, 255).astype(np.uint8))
    write_geotiff(os.path.join(root, 'SEM', name + '.tif'), colours)


def write_tiles(root, areas, rows, cols, jitter, seed=0):
    """Tiles of the given areas, each side rows / cols +- jitter; their shapes."""
    rng = np.random.default_rng(seed)
    for folder in ('RGB', 'NDSM', 'SEM'):
        os.makedirs(os.path.join(root, folder))
    shapes = [(rows + int(rng.integers(-jitter, jitter + 1)),
               cols + int(rng.integers(-jitter, jitter + 1))) for _ in areas]
    for area, shape in zip(areas, shapes):
        write_tile(root, area, *shape, rng)
    return shapes


# ------------------------------------------------------------ child process

def memory():
    """{'VmRSS': bytes, 'VmHWM': bytes} of this process."""
    with open('/proc/self/status') as f:
        fields = dict(line.split(':', 1) for line in f)
    return {k: int(fields[k].split()[0]) * 1024 for k in ('VmRSS', 'VmHWM')}


def pin(cpus):
    """Every thread of this process onto `cpus` (new threads inherit it)."""
    for tid in os.listdir('/proc/self/task'):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:         # the thread ended meanwhile
            pass


def cpu_seconds():
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cache_bytes(cache):
    nbytes = getattr(cache, 'nbytes', None)
    if nbytes is None:      # code that captured the cache as stacked tensors
        nbytes = sum(t.shape.num_elements() * t.dtype.size
                     for stack, _ in cache.stacks for t in stack.values())
    return nbytes


def child(code, workdir, tiles, sets):
    """Build the cache with the code in `code`, then time batches on command."""
    sys.path.insert(0, code)
    from utils import distribute
    getattr(distribute, 'start_tensorflow', lambda: None)()   # quietly, where the code can
    import tensorflow as tf
    import config
    from utils import settings
    datasets, pipeline, tasks = code_modules()
    settings.apply([f'shortcut_path={workdir}'] + SETTINGS + sets)
    datasets.VAIHINGEN_AREAS['train'] = datasets.VAIHINGEN_AREAS['train'][:tiles]
    # A checkout from before the settings were an argument reads config itself.
    takes_settings = 'cfg' in inspect.signature(datasets.find_split).parameters
    datasets.find_split(*([config] if takes_settings else []), 'train')
    batch = config.mtl_global_batch_size
    task = tasks.MTLTask(config)
    tf.constant(0)                      # the runtime starts before the baseline
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')                    # peak := current resident size
    before = memory()['VmRSS']
    start = time.perf_counter()
    task.train_dataset(batch, epoch=0)
    print(json.dumps(dict(cache=cache_bytes(pipeline._cache['value']),
                          build=time.perf_counter() - start,
                          build_peak=memory()['VmHWM'] - before)), flush=True)
    every = os.sched_getaffinity(0)
    epoch = 0
    for line in sys.stdin:
        command = json.loads(line)
        if command['cores'] == 'one':
            pin({min(every)})
        epoch += 1
        iterator = iter(task.train_dataset(batch, epoch=epoch))
        for _ in range(command['warmup']):
            next(iterator)
        start, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(command['batches']):
            next(iterator)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        del iterator        # no background prefetching while the others run
        pin(every)
        samples = command['batches'] * batch
        print(json.dumps(dict(rate=samples / seconds, cpu=cpu / samples, cores=cpu / seconds,
                              peak=memory()['VmHWM'] - before)), flush=True)


# ------------------------------------------------------------ this process

def reference_rate(samples, batch, count, rng):
    """Samples/s of the research loader: per batch one tile decoded, its
    normals, a crop loop."""
    import config
    from utils.data.samples import load_sample
    from utils.data.targets import surface_normals
    crop = config.cropSize
    start = time.perf_counter()
    for _ in range(count):
        loaded = load_sample(config, samples[rng.integers(len(samples))])
        normals = surface_normals(loaded.height, config.normalize_flag)
        rows, cols = loaded.height.shape
        fields = {'image': [], 'height': [], 'sem': [], 'norm': []}
        for _ in range(batch):
            y, x = rng.integers(0, rows - crop + 1), rng.integers(0, cols - crop + 1)
            window = (slice(y, y + crop), slice(x, x + crop))
            fields['image'].append(loaded.image[window])
            fields['height'].append(loaded.height[window][..., None])
            fields['sem'].append(loaded.labels[window])
            fields['norm'].append(normals[window])
        {name: np.stack(arrays) for name, arrays in fields.items()}
    return count * batch / (time.perf_counter() - start)


class Child:
    def __init__(self, code, workdir, args):
        self.code = code
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), '--tiles', str(args.tiles),
             '--child', os.path.abspath(code), workdir] + [f'--set={s}' for s in args.set],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
        self.built = self.answer()
        self.rates = {'all': [], 'one': []}
        self.cpu = {'all': [], 'one': []}     # CPU seconds per sample
        self.cores = {'all': [], 'one': []}   # CPU seconds per second
        self.peak = self.built['build_peak']

    def answer(self):
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"{self.code}: the benchmark process failed (its stderr is above)")
        return json.loads(line)

    def rate(self, cores, args):
        self.proc.stdin.write(json.dumps(dict(cores=cores, batches=args.batches,
                                              warmup=args.warmup)) + '\n')
        self.proc.stdin.flush()
        reply = self.answer()
        self.rates[cores].append(reply['rate'])
        self.cpu[cores].append(reply['cpu'])
        self.cores[cores].append(reply['cores'])
        self.peak = max(self.peak, reply['peak'])
        return reply['rate']

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--code', action='append', help='repository checkout to measure')
    p.add_argument('--tiles', type=int, default=13, choices=range(1, 14))
    p.add_argument('--size', default='2000x2500', help='ROWSxCOLS')
    p.add_argument('--jitter', type=int, default=60)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--batches', type=int, default=200, help='batches timed per turn')
    p.add_argument('--warmup', type=int, default=20, help='batches before timing')
    p.add_argument('--reference-batches', type=int, default=2,
                   help='reference batches timed per round (0: no reference)')
    p.add_argument('--set', action='append', default=[], metavar='NAME=VALUE')
    p.add_argument('--child', nargs=2, help=argparse.SUPPRESS)   # CODE WORKDIR
    args = p.parse_args()
    if args.child:
        child(*args.child, args.tiles, args.set)
        return

    sys.path.insert(0, ROOT)
    import config
    from utils import settings
    from utils.data import layouts as datasets
    rows, cols = map(int, args.size.split('x'))
    print(machine.describe())
    print(f"command: python bench/input_pipeline.py {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory(prefix='dsmnet_bench_') as workdir:
        areas = datasets.VAIHINGEN_AREAS['train'][:args.tiles]
        start = time.perf_counter()
        shapes = write_tiles(os.path.join(workdir, 'Vaihingen'), areas, rows, cols,
                             args.jitter)
        pixels = sum(r * c for r, c in shapes)
        print(f"{len(areas)} tiles, {pixels / 1e6:.1f} Mpx, written in "
              f"{time.perf_counter() - start:.0f} s; cores: "
              f"{len(os.sched_getaffinity(0))}")
        settings.apply([f'shortcut_path={workdir}'] + SETTINGS + args.set)
        datasets.VAIHINGEN_AREAS['train'] = areas
        samples = datasets.find_split(config, 'train')
        batch = config.mtl_global_batch_size
        print(f"crop {config.cropSize}, global batch {batch}")
        children = []
        for code in args.code or [ROOT]:    # one build at a time: no contention
            children.append(Child(code, workdir, args))
            built = children[-1].built
            print(f"{code}: cache {built['cache'] / MB:.0f} MiB, built in "
                  f"{built['build']:.0f} s, build peak +{built['build_peak'] / MB:.0f} MiB",
                  flush=True)
        rng = np.random.default_rng(0)
        reference = []
        try:
            for r in range(args.rounds):
                line = []
                for c, each in enumerate(children):
                    for cores in ('all', 'one'):
                        line.append(f"{c}/{cores} {each.rate(cores, args):.0f}")
                if args.reference_batches:
                    reference.append(reference_rate(samples, batch, args.reference_batches,
                                                    rng))
                    line.append(f"reference {reference[-1]:.2f}")
                print(f"round {r + 1}, samples/s: {', '.join(line)}", flush=True)
        finally:
            for each in children:
                each.close()
    first = None
    for c, each in enumerate(children):
        all_cores, one_core = (statistics.median(each.rates[k]) for k in ('all', 'one'))
        first = first or all_cores
        print(f"{c} = {each.code}: cache {each.built['cache'] / MB:.0f} MiB; peak resident "
              f"+{each.peak / MB:.0f} MiB over the size before the build "
              f"({each.peak / each.built['cache']:.2f}x the cache); all cores "
              f"{all_cores:.0f} samples/s (rounds "
              f"{' / '.join(f'{x:.0f}' for x in each.rates['all'])}), one core "
              f"{one_core:.0f} ({' / '.join(f'{x:.0f}' for x in each.rates['one'])}); "
              f"all / one {all_cores / one_core:.2f}; all cores / code 0: "
              f"{all_cores / first:.2f}; CPU per sample "
              f"{statistics.median(each.cpu['all']) * 1e3:.2f} ms on all cores, "
              f"{statistics.median(each.cpu['one']) * 1e3:.2f} ms on one; cores busy "
              f"{statistics.median(each.cores['all']):.2f} on all, "
              f"{statistics.median(each.cores['one']):.2f} on one")
    if reference:
        rate = statistics.median(reference)
        print(f"reference (decode + normals per batch, Python crops): {rate:.2f} samples/s; "
              f"ratio code 0 all cores / reference: {first / rate:.0f}")


if __name__ == '__main__':
    main()
