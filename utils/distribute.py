"""TensorFlow's start, the devices and the tf.distribute strategy.

get_strategy(cfg) takes the settings module (config.py, already checked:
by settings.parse_args, or by config.py itself for a star-importing
script), configures the TensorFlow runtime (visible GPUs, logical CPU
replicas, precision, determinism), which it allows only once per process,
and builds the strategy once. The scripts build it and hand it down; no
module below them asks for it. Device settings that cannot be right on any
machine (a malformed gpu_devices, an unknown distribution, a malformed
TF_CONFIG) are their rules' business; this module reports what only the
machine can tell (a listed GPU that is not there).
"""
import contextlib
import json
import os
import re
import sys
import tempfile
import warnings

from utils.errors import DeviceConfigError

# TensorFlow's C++ start-up chatter buries our output. Its log level applies
# only once absl logging is set up, after the lines of the import itself and
# of the device search: start_tensorflow() holds those to the level too, and
# hides 'failed call to cuInit' (every machine without a GPU says it) unless
# TF_CPP_MIN_LOG_LEVEL=0 asks for everything.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_ABSL_BANNER = 'WARNING: All log messages before absl::InitializeLog() is called'
_NO_GPU = re.compile(r'E\d{4} .*failed call to cuInit')


def _start_up_line(line):
    """Whether TensorFlow's log level hides this line of its C++ start-up."""
    try:
        level = int(os.environ.get('TF_CPP_MIN_LOG_LEVEL', 0))
    except ValueError:
        level = 0
    if line.startswith(_ABSL_BANNER) or _NO_GPU.match(line):
        return level >= 1
    severity = re.match(r'([IWEF])\d{4} ', line)
    return severity is not None and 'IWEF'.index(severity.group(1)) < level


@contextlib.contextmanager
def _start_up_lines_hidden():
    """Run the block with the process's stderr (fd 2) caught, then pass on
    every caught line TensorFlow's log level does not hide."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors='replace').splitlines(True):
                if not _start_up_line(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def start_tensorflow():
    """Import TensorFlow and let it find its devices, without the start-up
    lines its log level hides (see above); once per process."""
    if 'tensorflow' in sys.modules:
        return
    with _start_up_lines_hidden():
        import tensorflow as tf
        tf.config.list_physical_devices()


_strategy = None


def parse_gpu_devices(text):
    """'0,1' -> [0, 1] (its rule in config.py has checked the form)."""
    return [int(p) for p in str(text).split(',')]


def _select_gpus(tf, gpus, cfg):
    ids = parse_gpu_devices(cfg.gpu_devices)
    if not cfg.multi_gpu_enabled:
        ids = ids[:1]
    missing = [i for i in ids if i >= len(gpus)]
    if missing:
        raise DeviceConfigError(
            f"gpu_devices = {cfg.gpu_devices!r} asks for GPU {missing[0]}, but "
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


def _configure_runtime(tf, cfg):
    import keras
    gpus = tf.config.list_physical_devices('GPU')
    if gpus:
        _select_gpus(tf, gpus, cfg)
    elif cfg.cpu_replicas > 1:
        _split_cpu(tf, cfg.cpu_replicas)
    keras.mixed_precision.set_global_policy(cfg.mixed_precision)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()


def strategy_kind(cfg):
    """'default', 'mirrored' or 'multi_worker' for the settings `cfg`."""
    kind = cfg.distribution
    if kind == 'auto':
        if os.environ.get('TF_CONFIG'):
            kind = 'multi_worker'
        elif cfg.multi_gpu_enabled:
            kind = 'mirrored'
        else:
            kind = 'default'
    return kind


def _build(tf, cfg):
    kind = strategy_kind(cfg)
    if kind == 'multi_worker':   # TF_CONFIG is set and JSON: its rule in config.py
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == 'default':
        if cfg.cpu_replicas > 1 and not tf.config.list_logical_devices('GPU'):
            warnings.warn(f"cpu_replicas = {cfg.cpu_replicas} has no effect while "
                          f"multi_gpu_enabled = False: running on one replica")
        return tf.distribute.get_strategy()
    devices = [d.name for d in tf.config.list_logical_devices('GPU')]
    if not devices:
        devices = [d.name for d in tf.config.list_logical_devices('CPU')]
    if len(devices) < 2:
        warnings.warn(f"multi_gpu_enabled = True but only one device is visible "
                      f"({devices[0]}): training continues on one replica. Check "
                      f"gpu_devices = {cfg.gpu_devices!r} and nvidia-smi, or set "
                      f"cpu_replicas = 2 to try two replicas on the CPU.")
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(devices)


def get_strategy(cfg):
    """The strategy for this process and the settings module `cfg` (built on
    the first call; later calls return it)."""
    global _strategy
    if _strategy is None:
        start_tensorflow()
        import tensorflow as tf
        _configure_runtime(tf, cfg)
        _strategy = _build(tf, cfg)
    return _strategy


def built():
    """Whether get_strategy has built this process's strategy."""
    return _strategy is not None


WORKING_TASKS = ('chief', 'worker')


def task_type():
    """This process's task type in TF_CONFIG ('worker' when it names none);
    None without TF_CONFIG."""
    if not os.environ.get('TF_CONFIG'):
        return None
    return json.loads(os.environ['TF_CONFIG']).get('task', {}).get('type', 'worker')


def is_chief(strategy):
    """True on the one worker of `strategy` that writes checkpoints, logs and plots."""
    resolver = getattr(strategy, 'cluster_resolver', None)
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
