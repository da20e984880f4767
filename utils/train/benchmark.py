"""Training throughput on this machine: what `python test_multi_gpu.py
--benchmark` and bench/strategy_overhead.py measure.

Steps are timed on synthetic in-memory batches (the step, not the disk),
after warm-up calls that trace and compile; each figure is the median of
several timed windows. The real input pipeline is timed on its own, so the
two rates can be compared.
"""
import statistics
import time

import numpy as np
import tensorflow as tf

from utils import distribute
from utils.data.samples import Loaded, image_channels
from utils.errors import DatasetError
from utils.train import tasks
from utils.train.fields import drop_index_channel, make_fields
from utils.train.trainer import Trainer


def synthetic_batch(global_batch, cfg, seed=0):
    """A global batch shaped like utils/train/pipeline.py's for the settings `cfg`,
    random but fixed: random images, heights and labels, and the heads'
    targets made from them."""
    rng = np.random.default_rng(seed)
    shape = (global_batch, cfg.cropSize, cfg.cropSize)
    images = rng.uniform(0, 1, shape + (image_channels(cfg),)).astype('float32')
    heights = rng.uniform(0, 30, shape).astype('float32')
    labels = rng.integers(0, len(cfg.label_codes), shape, dtype='int32')
    examples = [make_fields(Loaded(*sample), cfg) for sample in zip(images, heights, labels)]
    return drop_index_channel({k: np.stack([e[k] for e in examples]) for k in examples[0]}, cfg)


class StepTimer:
    """Times `trainer.train_step` on one repeated synthetic global batch."""

    def __init__(self, trainer, steps_per_call=None, warmup_calls=2):
        self.trainer = trainer
        self.steps = int(steps_per_call or trainer.cfg.steps_per_execution)
        batch = synthetic_batch(trainer.global_batch, trainer.cfg)
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        self.iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
        for _ in range(warmup_calls):   # the first traces (and compiles with XLA)
            trainer.train_step(self.iterator, steps=self.steps)

    def window(self, calls):
        """Seconds per step over `calls` calls of steps_per_call steps."""
        start = time.perf_counter()
        for _ in range(calls):
            report, _ = self.trainer.train_step(self.iterator, steps=self.steps)
        elapsed = time.perf_counter() - start
        if not all(np.isfinite(v) for v in report.values()):
            raise FloatingPointError(f"non-finite loss while timing: {report}")
        return elapsed / (calls * self.steps)


def median_step_time(timers, windows, calls):
    """{name: median seconds per step}, the timers' windows interleaved so
    that a change of load on a shared machine hits every variant alike."""
    times = {name: [] for name in timers}
    for _ in range(windows):
        for name, timer in timers.items():
            times[name].append(timer.window(calls))
    return {name: statistics.median(t) for name, t in times.items()}, times


def input_rate(task, global_batch, batches=20, warmup=3):
    """Samples per second the real input pipeline of `task` delivers on its own."""
    total = task.steps_per_epoch(global_batch)
    batches = min(batches, total - warmup)
    if batches < 1:
        raise ValueError(f"the {task.stage} epoch has only {total} batches of {global_batch}: "
                         f"too few to time the input pipeline")
    iterator = iter(task.train_dataset(global_batch, epoch=0))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * global_batch / (time.perf_counter() - start)


def _memory_in_use(devices):
    used = {}
    for device in devices:
        try:
            used[device] = int(tf.config.experimental.get_memory_info(device)['current'])
            tf.config.experimental.reset_memory_stats(device)
        except (ValueError, tf.errors.InvalidArgumentError):
            used[device] = None   # TensorFlow does not track this device (CPU)
    return used


def _peak_since(devices, before):
    """Peak bytes per device above what was in use before (None: not tracked)."""
    peaks = []
    for device in devices:
        if before[device] is None:
            peaks.append(None)
        else:
            peak = tf.config.experimental.get_memory_info(device)['peak']
            peaks.append(int(peak) - before[device])
    return peaks


class _Timed(StepTimer):
    """A StepTimer whose windows last about `seconds`, with the peak memory
    its training step needed on each device."""

    def __init__(self, trainer, devices, seconds):
        before = _memory_in_use(devices)
        start = time.perf_counter()
        super().__init__(trainer, warmup_calls=1)
        first = time.perf_counter() - start
        start = time.perf_counter()
        trainer.train_step(self.iterator, steps=self.steps)   # warm-up after the trace
        call = time.perf_counter() - start
        self.calls = max(1, min(100, round(seconds / max(call, 1e-6))))
        self.trace_seconds = first - call
        self.peak_bytes = _peak_since(devices, before)

    def window(self, calls=None):
        return super().window(self.calls)


def steps_only_task(stage, cfg):
    """The task of `stage` for timing steps: the DAE's MTL keeps random weights."""
    return tasks.make(stage, cfg, **({'mtl': 'untrained'} if stage == 'dae' else {}))


def scaling(cfg, strategy, windows=5, seconds=2.0, stage_names=('mtl', 'dae')):
    """Training throughput on 1 replica (the default strategy, on the first
    device) and on every replica of `strategy`, the scaling efficiency, peak
    memory and the input pipeline's own rate, for the settings `cfg`."""
    replicas = strategy.num_replicas_in_sync
    devices = distribute.replica_devices(strategy)
    report = {'strategy': type(strategy).__name__, 'replicas': replicas, 'devices': devices,
              'crop': cfg.cropSize, 'mixed_precision': cfg.mixed_precision,
              'jit_compile': bool(cfg.jit_compile),
              'steps_per_execution': int(cfg.steps_per_execution),
              'sync_batchnorm': bool(cfg.sync_batchnorm), 'windows': windows,
              'tensorflow': tf.__version__, 'stages': {}}
    for stage in stage_names:
        task = steps_only_task(stage, cfg)
        per_replica = task.batch_size
        timers = {replicas: _Timed(Trainer(task, strategy), devices, seconds)}
        if replicas > 1:
            timers[1] = _Timed(Trainer(steps_only_task(stage, cfg),
                                                tf.distribute.get_strategy()),
                               devices[:1], seconds)
        medians, _ = median_step_time(timers, windows, None)
        rate = {n: per_replica * n / medians[n] for n in timers}
        entry = {'per_replica_batch': per_replica,
                 'step_seconds': {str(n): medians[n] for n in timers},
                 'samples_per_second': {str(n): rate[n] for n in timers},
                 'trace_seconds': {str(n): timers[n].trace_seconds for n in timers},
                 'peak_bytes_per_replica': {str(n): timers[n].peak_bytes for n in timers},
                 'scaling_efficiency': rate[replicas] / (replicas * rate[1]) if replicas > 1
                 else None}
        try:
            entry['input_samples_per_second'] = input_rate(task, per_replica * replicas)
        except (DatasetError, ValueError, OSError) as err:
            entry['input_samples_per_second'] = None
            entry['input_error'] = str(err)
        entry['verdict'] = _verdict(entry, rate[replicas])
        report['stages'][stage] = entry
    return report


def _verdict(entry, training_rate):
    fed = entry['input_samples_per_second']
    if fed is None:
        return f"input pipeline not measured: {entry['input_error']}"
    if fed < training_rate:
        return (f"the input pipeline is the bottleneck: it delivers {fed:.1f} samples/s "
                f"but the training step could take {training_rate:.1f}. Training will "
                f"run at the pipeline's rate; set *_preload = True, use faster storage, "
                f"or give the machine more CPU cores for decoding.")
    if fed < 1.5 * training_rate:
        return (f"the input pipeline keeps up, with little margin ({fed:.1f} samples/s "
                f"for {training_rate:.1f} consumed): other load on the CPU may slow training")
    return (f"the input pipeline is not the bottleneck ({fed:.1f} samples/s delivered, "
            f"{training_rate:.1f} consumed)")


def print_scaling(report):
    n = report['replicas']
    print(f"benchmark: {report['strategy']}, {n} replica(s) on {', '.join(report['devices'])}; "
          f"crop {report['crop']}, {report['mixed_precision']}, XLA "
          f"{'on' if report['jit_compile'] else 'off'}, steps_per_execution "
          f"{report['steps_per_execution']}, sync_batchnorm "
          f"{'on' if report['sync_batchnorm'] else 'off'}; median of "
          f"{report['windows']} windows, synthetic batches")
    for stage, e in report['stages'].items():
        print(f"{stage.upper()}  per-replica batch {e['per_replica_batch']}")
        for k in sorted(e['samples_per_second'], key=int):
            peaks = e['peak_bytes_per_replica'][k]
            memory = ', '.join('n/a' if p is None else f"{p / 2 ** 20:.0f} MiB" for p in peaks)
            print(f"  {k} replica(s): {e['samples_per_second'][k]:8.2f} samples/s, "
                  f"{e['step_seconds'][k]:.4f} s/step, peak memory per replica {memory}")
        if e['scaling_efficiency'] is not None:
            print(f"  scaling efficiency {e['scaling_efficiency']:.3f} "
                  f"({n}-replica samples/s / ({n} x 1-replica samples/s))")
        fed = e['input_samples_per_second']
        print(f"  input pipeline {'n/a' if fed is None else f'{fed:.1f} samples/s'}")
        print(f"  {e['verdict']}")
