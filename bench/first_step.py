"""What a short training run spends before it learns: building the MTL, its
first training step (tracing and optimising the graph) and its first
validation, with DenseNet121 (trained or frozen) or the test suite's
stand-in encoder (tests/stand_in.py), on one or two replicas, with our Adam
(utils/train/adam.py, fused) and with Keras' own; and a scan of
the dataset's folders (utils/data/layouts.find_split) as the scripts do it against
opening every file with GDAL. Each variant in its own process (devices are
configured once), 32 px crops, 1/16 decoder, batch 2 per replica.

    python bench/first_step.py                    # every variant, a table
    python bench/first_step.py VARIANT            # one: densenet, frozen, stand_in
                                                  # [replicas [fused|keras]]
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = [('densenet', 1), ('densenet', 2), ('frozen', 1), ('stand_in', 1), ('stand_in', 2)]


def measure(variant, replicas, optimizer='fused'):
    """Seconds of (build, first step, second step, first validation, second validation)."""
    sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]
    from utils import settings
    sets = ['cropSize=32', 'mtl_decoder_scale=0.0625', 'backbone_weights=None',
            'valid_stride=32', 'batch_size=2', 'checkpoint_root=/tmp/dsmnet_first_step',
            f'mtl_bb_freeze={variant == "frozen"}']
    if replicas > 1:
        sets += ['multi_gpu_enabled=True', f'cpu_replicas={replicas}']
    settings.apply(sets)
    import contextlib
    import config
    from stand_in import small_encoder
    from utils import distribute
    from utils.train import adam, tasks
    from utils.train.trainer import Trainer
    if optimizer == 'keras':
        import keras
        adam.Adam = keras.optimizers.Adam       # what Task.make_optimizer then builds
    strategy = distribute.get_strategy(config)
    times = []
    with small_encoder() if variant == 'stand_in' else contextlib.nullcontext():
        start = time.perf_counter()
        task = tasks.MTLTask(config)
        trainer = Trainer(task, strategy)
        times.append(time.perf_counter() - start)
        dataset = task.train_dataset(trainer.global_batch, 0)
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        for _ in range(2):
            start = time.perf_counter()
            trainer.train_step(iterator, 1)
            times.append(time.perf_counter() - start)
        for _ in range(2):
            start = time.perf_counter()
            task.validate(strategy)
            times.append(time.perf_counter() - start)
    return times


def scan(repeats=5):
    """Seconds per find_split of the three splits: as the scripts scan, and
    opening every file (the scan before 2026-12-03), alternately."""
    sys.path.insert(0, ROOT)
    import contextlib
    from unittest import mock
    import config
    from utils.data import layouts
    from utils.geo import files

    def opened(path):
        if files.is_sidecar(path):
            return False
        try:
            with files._open(path):
                return True
        except Exception:
            return False
    layouts.find_split(config, 'train')       # the synthetic set, generated if missing
    times = {'named': [], 'opened': []}
    for _ in range(repeats):
        for kind in times:
            # layouts looks is_image_file up as its own name (imported from geo/files)
            with mock.patch.object(layouts, 'is_image_file', opened) if kind == 'opened' \
                    else contextlib.nullcontext():
                start = time.perf_counter()
                for split in ('train', 'valid', 'test'):
                    layouts.find_split(config, split)
                times[kind].append(time.perf_counter() - start)
    return times


if __name__ == '__main__':
    if len(sys.argv) > 1:
        print(' '.join(f'{t:.1f}' for t in measure(sys.argv[1], int((sys.argv[2:3] or [1])[0]),
                                                   *sys.argv[3:4])))
        sys.exit()
    sys.path.insert(0, ROOT)
    from bench import machine
    print(machine.describe())
    print(f"{'encoder':<10}{'replicas':>9}{'Adam':>7}{'build':>8}{'step 1':>8}{'step 2':>8}"
          f"{'valid 1':>9}{'valid 2':>9}  (s)")
    for variant, replicas in VARIANTS:
        for optimizer in ('fused', 'keras'):       # alternating, each in its own process
            out = subprocess.run([sys.executable, __file__, variant, str(replicas), optimizer],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            build, s1, s2, v1, v2 = out.stdout.split()[-5:]
            print(f"{variant:<10}{replicas:>9}{optimizer:>7}{build:>8}{s1:>8}{s2:>8}{v1:>9}"
                  f"{v2:>9}")
    times = scan()
    for kind, values in times.items():
        print(f"find_split of 3 splits, files {kind}: " +
              ', '.join(f'{t:.2f}' for t in values) + ' s')
