"""Memory of the training cache on full-size tiles: what building it adds to
the process at its peak, against the cache it leaves behind.

    python bench/cache_memory.py [--tiles 13] [--size 2000x2500] [--jitter 60]
        [--code DIR ...] [--set NAME=VALUE ...]

Writes --tiles Vaihingen tiles (RGB tif, NDSM jpg, SEM colour tif, the
published training areas) of about --size px to a temporary folder; each
side varies by up to --jitter px, as the real tiles differ (0: all the same
size, so the cache holds one stack). Then, for each --code folder (default:
this checkout; give an older checkout to compare), a fresh Python imports
that code, starts TensorFlow, reads its resident size, resets its peak
(VmHWM, through /proc/self/clear_refs) and builds the training cache as
training does (tasks.MTLTask(config).train_dataset(...) with the dataset's own
settings). Reported per run: the bytes the cache holds, the rise of the
peak over the resident size before the build, their ratio, and the same
rise once the first batch has been read through
strategy.experimental_distribute_dataset (with `--set multi_gpu_enabled=True
--set cpu_replicas=2`: auto-sharded and split over two replicas), and the
build's time.
"""
import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

import machine
from checkout import code_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 2 ** 20


def memory():
    """{'VmRSS': bytes, 'VmHWM': bytes} of this process."""
    with open('/proc/self/status') as f:
        fields = dict(line.split(':', 1) for line in f)
    return {k: int(fields[k].split()[0]) * 1024 for k in ('VmRSS', 'VmHWM')}


def measure(code, workdir, tiles, sets):
    """Run in the fresh process: build the cache with the code in `code`."""
    sys.path.insert(0, code)
    from utils import distribute
    getattr(distribute, 'start_tensorflow', lambda: None)()   # quietly, where the code can
    import tensorflow as tf
    import config
    from utils import distribute, settings
    datasets, pipeline, tasks = code_modules()
    settings.apply(['dataset_name=Vaihingen', f'shortcut_path={workdir}'] + sets)
    datasets.VAIHINGEN_AREAS['train'] = datasets.VAIHINGEN_AREAS['train'][:tiles]
    # A checkout from before the settings were an argument reads config itself.
    takes_settings = 'cfg' in inspect.signature(datasets.find_split).parameters
    datasets.find_split(*([config] if takes_settings else []), 'train')
    strategy = distribute.get_strategy(config)  # the runtime and devices start before the baseline
    tf.constant(0)
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')                # peak := current resident size
        before = memory()['VmRSS']
    except OSError:                     # no reset: the peak so far is the baseline
        before = memory()['VmHWM']
    start = time.perf_counter()
    dataset = tasks.MTLTask(config).train_dataset(config.mtl_global_batch_size, epoch=0)
    seconds = time.perf_counter() - start
    built = memory()
    cache = pipeline._cache['value']
    cache_bytes = getattr(cache, 'nbytes', None)
    if cache_bytes is None:     # code before the cache kept NumPy arrays: stacked tensors
        cache_bytes = sum(t.shape.num_elements() * t.dtype.size
                          for stack, _ in cache.stacks for t in stack.values())
    next(iter(strategy.experimental_distribute_dataset(dataset)))
    return dict(cache=cache_bytes, peak=built['VmHWM'] - before,
                after=built['VmRSS'] - before, batch_peak=memory()['VmHWM'] - before,
                seconds=seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--tiles', type=int, default=13, choices=range(1, 14))
    p.add_argument('--size', default='2000x2500', help='ROWSxCOLS')
    p.add_argument('--jitter', type=int, default=60)
    p.add_argument('--code', action='append', help='repository checkout to measure')
    p.add_argument('--set', action='append', default=[], metavar='NAME=VALUE')
    p.add_argument('--child', nargs=2, help=argparse.SUPPRESS)   # CODE WORKDIR
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.tiles, args.set)))
        return

    sys.path[:0] = [ROOT, os.path.join(ROOT, 'bench')]
    from utils.data.layouts import VAIHINGEN_AREAS
    areas = VAIHINGEN_AREAS['train'][:args.tiles]
    import numpy as np
    from input_pipeline import write_tile
    rows, cols = map(int, args.size.split('x'))
    rng = np.random.default_rng(0)
    print(machine.describe())
    print(f"command: python bench/cache_memory.py {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory(prefix='dsmnet_bench_') as workdir:
        root = os.path.join(workdir, 'Vaihingen')
        for folder in ('RGB', 'NDSM', 'SEM'):
            os.makedirs(os.path.join(root, folder))
        shapes = [(rows + int(rng.integers(-args.jitter, args.jitter + 1)),
                   cols + int(rng.integers(-args.jitter, args.jitter + 1)))
                  for _ in areas]
        for area, shape in zip(areas, shapes):
            write_tile(root, area, *shape, rng)
        pixels = sum(r * c for r, c in shapes)
        print(f"{len(areas)} tiles, {pixels / 1e6:.1f} Mpx "
              f"({', '.join(f'{r}x{c}' for r, c in shapes)})")
        for code in args.code or [ROOT]:
            child = subprocess.run(
                [sys.executable, os.path.abspath(__file__), '--tiles', str(args.tiles),
                 '--child', os.path.abspath(code), workdir] +
                [f'--set={s}' for s in args.set],
                capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
            if child.returncode:
                sys.exit(f"{code}: {child.stderr[-3000:]}")
            r = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{code}: cache {r['cache'] / MB:.0f} MiB ({r['cache'] / pixels:.1f} B/px); build peak +{r['peak'] / MB:.0f} MiB, "
                  f"after +{r['after'] / MB:.0f} MiB; through the first batch "
                  f"+{r['batch_peak'] / MB:.0f} MiB; ratio peak / cache: "
                  f"{r['peak'] / r['cache']:.2f}; build {r['seconds']:.0f} s")


if __name__ == '__main__':
    main()
