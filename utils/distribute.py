"""Devices and the tf.distribute strategy, from config.py's settings.

The first call of get_strategy() checks every setting against its rule
(unless a command line was parsed and checked already), then configures the
TensorFlow runtime (visible GPUs, logical CPU replicas, precision,
determinism); the runtime allows that only once per process, so the
strategy is built once and cached. Device settings that cannot be right on
any machine (a malformed gpu_devices, an unknown distribution, a malformed
TF_CONFIG) are their rules' business; this module reports what only the
machine can tell (a listed GPU that is not there).
"""
import json
import os
import warnings

import config
from utils import settings
from utils.errors import DeviceConfigError

_strategy = None


def parse_gpu_devices(text):
    """'0,1' -> [0, 1] (its rule in config.py has checked the form)."""
    return [int(p) for p in str(text).split(',')]


def _select_gpus(tf, gpus):
    ids = parse_gpu_devices(config.gpu_devices)
    if not config.multi_gpu_enabled:
        ids = ids[:1]
    missing = [i for i in ids if i >= len(gpus)]
    if missing:
        raise DeviceConfigError(
            f"gpu_devices = {config.gpu_devices!r} asks for GPU {missing[0]}, but "
            f"only {len(gpus)} GPU(s) are visible (ids 0..{len(gpus) - 1}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
            f"Set gpu_devices to ids below {len(gpus)}.")
    chosen = [gpus[i] for i in ids]
    tf.config.set_visible_devices(chosen, 'GPU')
    for gpu in chosen:   # let replicas share a card with other processes
        tf.config.experimental.set_memory_growth(gpu, True)


def _split_cpu(tf, replicas):
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def _configure_runtime(tf):
    import keras
    gpus = tf.config.list_physical_devices('GPU')
    if gpus:
        _select_gpus(tf, gpus)
    elif config.cpu_replicas > 1:
        _split_cpu(tf, config.cpu_replicas)
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def strategy_kind():
    """'default', 'mirrored' or 'multi_worker' for the current settings."""
    kind = config.distribution
    if kind == 'auto':
        if os.environ.get('TF_CONFIG'):
            kind = 'multi_worker'
        elif config.multi_gpu_enabled:
            kind = 'mirrored'
        else:
            kind = 'default'
    return kind


def _build(tf):
    kind = strategy_kind()
    if kind == 'multi_worker':   # TF_CONFIG is set and JSON: its rule in config.py
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == 'default':
        if config.cpu_replicas > 1 and not tf.config.list_logical_devices('GPU'):
            warnings.warn(f"cpu_replicas = {config.cpu_replicas} has no effect while "
                          f"multi_gpu_enabled = False: running on one replica")
        return tf.distribute.get_strategy()
    devices = [d.name for d in tf.config.list_logical_devices('GPU')]
    if not devices:
        devices = [d.name for d in tf.config.list_logical_devices('CPU')]
    if len(devices) < 2:
        warnings.warn(f"multi_gpu_enabled = True but only one device is visible "
                      f"({devices[0]}): training continues on one replica. Check "
                      f"gpu_devices = {config.gpu_devices!r} and nvidia-smi, or set "
                      f"cpu_replicas = 2 to try two replicas on the CPU.")
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(devices)


def get_strategy():
    """The strategy for this process (built on first call)."""
    global _strategy
    if _strategy is None:
        settings.check_once()   # e.g. `from config import *` parses no command line
        settings.start_tensorflow()
        import tensorflow as tf
        _configure_runtime(tf)
        _strategy = _build(tf)
    return _strategy


WORKING_TASKS = ('chief', 'worker')


def task_type():
    """This process's task type in TF_CONFIG ('worker' when it names none);
    None without TF_CONFIG."""
    if not os.environ.get('TF_CONFIG'):
        return None
    return json.loads(os.environ['TF_CONFIG']).get('task', {}).get('type', 'worker')


def is_chief():
    """True on the one worker that writes checkpoints, logs and plots."""
    resolver = getattr(get_strategy(), 'cluster_resolver', None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == 'chief' or (
        resolver.task_type == 'worker' and resolver.task_id == 0)


def replica_devices(strategy):
    """Short device names ('GPU:0') of the strategy's local replicas (the
    default strategy has no list: its one device)."""
    import tensorflow as tf
    if strategy.num_replicas_in_sync == 1:
        logical = tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU')
        names = [logical[0].name]
    else:
        names = list(strategy.extended.worker_devices)
    return [n.split('device:')[-1] for n in names]
