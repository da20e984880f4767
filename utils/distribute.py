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

from utils.errors import DeviceConfigError, DeviceWarning

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


@contextlib.contextmanager
def _without_scikit_learn():
    """Keras imports scikit-learn, where installed (NNCF, for int8, brings
    it), for its scikit-learn wrappers, which nothing here uses: 1.2 s of
    every script's start (bench/RESULTS.md). Inside the block an import of
    it fails, as Keras expects where it is missing; after it, it imports."""
    hidden = 'sklearn' not in sys.modules
    if hidden:
        sys.modules['sklearn'] = None
    try:
        yield
    finally:
        if hidden:
            del sys.modules['sklearn']


def start_tensorflow():
    """Import TensorFlow and let it find its devices, without the start-up
    lines its log level hides (see above) and without scikit-learn; once
    per process."""
    if 'tensorflow' in sys.modules:
        return
    with _start_up_lines_hidden(), _without_scikit_learn():
        import tensorflow as tf
        tf.config.list_physical_devices()


_strategy = None


def parse_gpu_devices(text):
    """'0,1' -> [0, 1] (its rule in config.py has checked the form)."""
    return [int(p) for p in str(text).split(',')]


def _cuda_visible():
    value = os.environ.get('CUDA_VISIBLE_DEVICES')
    return 'CUDA_VISIBLE_DEVICES unset' if value is None else f'CUDA_VISIBLE_DEVICES={value!r}'


class Plan:
    """Which devices this process uses and why (see device_plan)."""

    def __init__(self, kind, where, ids, replicas, note, warning=None):
        self.kind, self.where, self.ids, self.replicas = kind, where, ids, replicas
        self.note, self.warning = note, warning


def device_plan(cfg, visible_gpus):
    """The one rule deciding the devices from the settings `cfg` and the
    number of GPUs this process sees (README, Devices):

    1. distribution (strategy_kind) decides the strategy: one device,
       MirroredStrategy, or MultiWorkerMirroredStrategy.
    2. Mirrored with cpu_replicas > 1: that many logical CPU devices, and the
       GPUs hidden from the process, whether there are any or not (the same
       float32 CPU arithmetic everywhere: what the tests and laptops ask for).
    3. Otherwise, with GPUs: those of gpu_devices, all of them when
       multi_gpu_enabled, else the first; ids count the GPUs that
       CUDA_VISIBLE_DEVICES leaves visible. Without GPUs: CPU:0.

    `note` says what was decided, naming the settings that decided it;
    `warning` is set when a setting asks for something this rule cannot give.
    A listed GPU that is not there is a DeviceConfigError."""
    kind, n = strategy_kind(cfg), cfg.cpu_replicas
    if kind == 'mirrored' and n > 1:
        hidden = (f"; the {visible_gpus} visible GPU(s) are hidden from this process "
                  f"({_cuda_visible()})" if visible_gpus else '')
        return Plan(kind, 'CPU', list(range(n)), n,
                    f"{n} replicas on logical CPU devices (cpu_replicas = {n}){hidden}")
    warning = None
    if n > 1:
        decided = ("multi_gpu_enabled = False" if cfg.distribution == 'auto' and kind == 'default'
                   else f"distribution = {kind!r}" + (' (TF_CONFIG is set)'
                                                       if cfg.distribution == 'auto' else ''))
        warning = (f"cpu_replicas = {n} has no effect while {decided}: it applies to "
                   f"one machine's MirroredStrategy (multi_gpu_enabled = True)")
    if not visible_gpus:
        replicas = 1 if kind != 'multi_worker' else None
        note = f"one replica on CPU:0 (no GPU visible, {_cuda_visible()})"
        if kind == 'mirrored' and cfg.multi_gpu_enabled:
            warning = (f"multi_gpu_enabled = True but no GPU is visible ({_cuda_visible()}): "
                       f"training continues on one replica on CPU:0. Check nvidia-smi and "
                       f"CUDA_VISIBLE_DEVICES, or set cpu_replicas = 2 to try two replicas "
                       f"on the CPU.")
        return Plan(kind, 'CPU', [0], replicas, note, warning)
    ids = parse_gpu_devices(cfg.gpu_devices)
    if not cfg.multi_gpu_enabled:
        ids = ids[:1]
    missing = [i for i in ids if i >= visible_gpus]
    if missing:
        raise DeviceConfigError(
            f"gpu_devices = {cfg.gpu_devices!r} asks for GPU {missing[0]}, but this "
            f"process sees {visible_gpus} GPU(s), ids 0..{visible_gpus - 1} "
            f"({_cuda_visible()}; gpu_devices counts the GPUs it leaves visible). "
            f"Set gpu_devices to ids below {visible_gpus}.")
    listed = f"gpu_devices = {cfg.gpu_devices!r}"
    if cfg.multi_gpu_enabled:
        why = f"multi_gpu_enabled = True: every GPU of {listed}"
    else:
        why = (f"multi_gpu_enabled = False: the first GPU of {listed}" if
               len(parse_gpu_devices(cfg.gpu_devices)) > 1 else listed)
    note = (f"GPU {', '.join(map(str, ids))} ({why}; {_cuda_visible()}), "
            f"memory growth on")
    if kind == 'mirrored' and len(ids) == 1 and cfg.multi_gpu_enabled:
        warning = (f"multi_gpu_enabled = True but {listed} lists one GPU: training "
                   f"continues on one replica. List more, e.g. gpu_devices = \"0,1\" "
                   f"(nvidia-smi shows them).")
    elif kind == 'mirrored' and not cfg.multi_gpu_enabled and cfg.distribution == 'mirrored':
        note += ("; distribution = 'mirrored' with multi_gpu_enabled = False: "
                 "MirroredStrategy on this one GPU")
    return Plan(kind, 'GPU', ids, len(ids) if kind != 'multi_worker' else None, note, warning)


def _configure_runtime(tf, cfg):
    """Apply device_plan before anything starts the runtime; the plan."""
    import keras
    gpus = tf.config.list_physical_devices('GPU')
    plan = device_plan(cfg, len(gpus))
    if plan.where == 'CPU':
        tf.config.set_visible_devices([], 'GPU')
        if plan.replicas and plan.replicas > 1:
            cpu = tf.config.list_physical_devices('CPU')[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * plan.replicas)
    else:
        chosen = [gpus[i] for i in plan.ids]
        tf.config.set_visible_devices(chosen, 'GPU')
        for gpu in chosen:   # let replicas share a card with other processes
            tf.config.experimental.set_memory_growth(gpu, True)
    keras.mixed_precision.set_global_policy(cfg.mixed_precision)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    return plan


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


def _build(tf, cfg, plan):
    if plan.warning:
        warnings.warn(plan.warning, DeviceWarning)
    if plan.where == 'GPU' or (plan.replicas or 1) > 1:
        print(f"devices: {plan.note}", file=sys.stderr, flush=True)
    if plan.kind == 'multi_worker':   # TF_CONFIG is set and JSON: its rule in config.py
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = [d.name for d in tf.config.list_logical_devices(plan.where)]
    # One device: the default strategy, unless 'mirrored' was asked for by name.
    if plan.kind == 'default' or (len(devices) < 2 and cfg.distribution != 'mirrored'):
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(devices)


def get_strategy(cfg):
    """The strategy for this process and the settings module `cfg` (built on
    the first call; later calls return it)."""
    global _strategy
    if _strategy is None:
        start_tensorflow()
        import tensorflow as tf
        _strategy = _build(tf, cfg, _configure_runtime(tf, cfg))
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


def has_synchronized_bn(model):
    """True when the model, or a model inside it, has a synchronised BN layer."""
    import keras
    layers = list(model.layers)
    while layers:
        layer = layers.pop()
        if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized:
            return True
        layers.extend(getattr(layer, 'layers', []))
    return False


def share_overflow(grads):
    """Make one replica's float16 overflow every replica's. Keras'
    LossScaleOptimizer skips or applies a step by the first replica's own
    gradients (before they are summed), so an overflow on another replica
    would reach the weights; NaN on all replicas makes all of them skip."""
    import tensorflow as tf
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads
                            if g is not None])
    overflows = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(overflows > 0, float('nan'), 0.0)
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]
