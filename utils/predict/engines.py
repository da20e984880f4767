"""What runs the networks on a batch of windows: TensorFlow, on any
strategy (GPUs, several replicas), or on one CPU device ONNX Runtime or
OpenVINO, both on every core, running the networks' conversion (ONNX, or
OpenVINO's own; utils/predict/conversion.py, cached beside the weights).
Each gives a window function fn(windows [n, crop, crop, C] float32) -> {map: array}
with a `batch_size`, which utils/predict/blend.py blends.
"""
import importlib

import numpy as np
import tensorflow as tf

from nets import dae as dae_net
from utils.data.samples import image_channels
from utils.errors import SettingError
from utils.model import heads
from utils.predict import conversion, export

ENGINES = ('tensorflow', 'onnxruntime', 'openvino')
# What bench/engines.py measured fastest on CPU (bench/RESULTS.md, "Engines"),
# with heights equal within export.height_tolerance; GPUs and several
# replicas stay on TensorFlow.
CPU_ENGINE = 'openvino'
# predict_precision -> OpenVINO's INFERENCE_PRECISION_HINT, and the CPU
# capability (OPTIMIZATION_CAPABILITIES) each needs; float32 is set too,
# since OpenVINO computes in bfloat16 by default on CPUs that have it. int8
# runs the quantized conversion: the layers NNCF left unquantized in float32.
OPENVINO_PRECISION = {'float32': 'f32', 'bfloat16': 'bf16', 'int8': 'f32'}
CPU_CAPABILITY = {'float32': 'FP32', 'bfloat16': 'BF16', 'int8': 'INT8'}
NEEDS = {'bfloat16': 'AVX-512 BF16 or AMX', 'int8': 'AVX2 or newer'}


def _replica_step(mtl, dae, outputs):
    """Per-replica forward pass of one batch of windows (inference mode): the
    height (refined by the DAE when given; the MTL's own as 'height_mtl') and
    the MTL's outputs named in `outputs`, as float32 (the height without its
    channel axis)."""
    height_name = heads.HEIGHT.name

    def step(windows):
        out = mtl(windows, training=False)
        height = tf.cast(out[height_name], tf.float32)
        result = {height_name + '_mtl': height[..., 0], height_name: height[..., 0]}
        if dae is not None:
            result[height_name] = dae_net.refine(dae, out, windows)[..., 0]
        for name in outputs:
            if name in out and name != height_name:
                result[name] = tf.cast(out[name], tf.float32)
        return result
    return step


def tensorflow_fn(mtl, dae=None, *, cfg, strategy, batch_size=None, outputs=None):
    """fn(windows [n, crop, crop, C] float32) -> dict of numpy arrays:
    'height' [n, crop, crop] (refined when a DAE is given), 'height_mtl'
    (the MTL's own height), and the maps of every head named in `outputs`
    that the MTL has, under its name ([n, crop, crop, channels]; a class
    head's probabilities). outputs None: the heads predict.py writes by
    default (heads.DEFAULT).

    Windows run `batch_size` at a time (default cfg.test_batch_size, rounded
    up to a multiple of the strategy's replicas); the last batch is padded so
    every call has one shape (one trace) and every replica equal work, and
    the padding is dropped. cfg.jit_compile: XLA for the step."""
    if outputs is None:
        outputs = [h.name for h in heads.HEADS if h.output == heads.DEFAULT]
    replicas = strategy.num_replicas_in_sync
    batch = int(batch_size or cfg.test_batch_size)
    if batch < 1:
        raise SettingError(f"test_batch_size = {batch}: use at least 1")
    batch = -(-batch // replicas) * replicas
    per_replica = batch // replicas
    step = tf.function(_replica_step(mtl, dae, tuple(outputs)),
                       jit_compile=bool(cfg.jit_compile))

    if replicas == 1:
        run = step
    else:
        @tf.function
        def run(windows):
            def chunk(ctx):
                i = ctx.replica_id_in_sync_group
                return windows[i * per_replica:(i + 1) * per_replica]
            values = strategy.experimental_distribute_values_from_function(chunk)
            out = strategy.run(step, args=(values,))
            # gather concatenates the replicas' outputs in replica order, on every
            # worker; one tensor at a time (given the whole dict it returned only
            # the first replica's part on TF 2.21).
            return {k: strategy.gather(v, axis=0) for k, v in out.items()}

    def predict(windows):
        return _in_batches(windows, batch, lambda chunk: {
            k: v.numpy() for k, v in run(tf.constant(chunk)).items()})

    predict.batch_size = batch
    return predict


def _in_batches(windows, batch, run):
    """run(chunk of exactly `batch` windows) -> {key: maps} over all
    `windows`: the last chunk padded with copies of its last window (one
    shape for every call), the padding dropped."""
    windows = np.asarray(windows, np.float32)
    pieces = []
    for first in range(0, len(windows), batch):
        chunk = windows[first:first + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, 0)])
        pieces.append({k: v[:real] for k, v in run(chunk).items()})
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


def onnx_fn(session, batch_size, keys):
    """fn(windows) -> {key: maps} like tensorflow_fn's, run by
    the ONNX Runtime `session`, `batch_size` windows at a time."""
    names = [o.name for o in session.get_outputs() if o.name in keys]

    def predict(windows):
        windows = np.asarray(windows, np.float32)
        pieces = [dict(zip(names, session.run(names, {export.INPUT: windows[i:i + batch_size]})))
                  for i in range(0, len(windows), batch_size)]
        return {k: np.concatenate([p[k] for p in pieces]) for k in names}

    predict.batch_size = batch_size
    return predict


def openvino_model(path, *, batch_size, crop, channels, precision='float32', threads=0):
    """The model at `path` (OpenVINO's .xml or ONNX) compiled by OpenVINO
    for the CPU, for batches of `batch_size` windows of crop x crop x channels, computing
    in `precision` (a predict_precision) on `threads` cores (0: all)."""
    import openvino as ov
    core = ov.Core()
    check_precision(precision, core)
    model = core.read_model(path)
    # One fixed shape: the CPU plugin then plans its kernels and memory once.
    model.reshape({export.INPUT: [batch_size, crop, crop, channels]})
    options = {'INFERENCE_PRECISION_HINT': OPENVINO_PRECISION[precision],
               'PERFORMANCE_HINT': 'LATENCY'}   # one batch at a time, every core on it
    if threads:
        options['INFERENCE_NUM_THREADS'] = threads
    return core.compile_model(model, 'CPU', options)


def openvino_fn(compiled, keys):
    """fn(windows) -> {key: maps} like tensorflow_fn's, run by the
    OpenVINO `compiled` model (openvino_model) a batch at a time."""
    names = [o.get_any_name() for o in compiled.outputs if o.get_any_name() in keys]
    batch = compiled.input(export.INPUT).get_shape()[0]
    request = compiled.create_infer_request()

    def run(chunk):
        result = request.infer({export.INPUT: chunk})
        # copies: the request's next call writes into the same buffers
        return {name: np.array(result[compiled.output(name)]) for name in names}

    def predict(windows):
        return _in_batches(windows, batch, run)

    predict.batch_size = batch
    return predict


def check_precision(precision, core=None):
    """SettingError unless OpenVINO can compute in `precision` on this CPU."""
    if core is None:
        import openvino as ov
        core = ov.Core()
    found = core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    if CPU_CAPABILITY[precision] not in found:
        raise SettingError(f"predict_precision = {precision!r}: this CPU cannot compute in "
                           f"{precision} (OpenVINO finds {', '.join(found)}; {precision} needs "
                           f"{NEEDS.get(precision, precision)}): set predict_precision=float32")


def _import_error(engine):
    """The ImportError importing `engine` raises, or None."""
    try:
        importlib.import_module(engine)
    except ImportError as err:
        return err
    return None


def _check_installed(engine):
    err = _import_error(engine)
    if err is not None:
        raise SettingError(f"--engine {engine}: the {engine} package is not installed "
                           f"({err}): pip install {engine} (requirements.txt), or --engine "
                           f"tensorflow") from err


def choose_engine(requested, strategy, precision='float32'):
    """The engine predict.py runs: `requested`, or for 'auto' on one CPU
    replica CPU_ENGINE (OpenVINO for a precision other than float32, the
    one engine that runs it) and TensorFlow on GPUs or several replicas.
    ONNX Runtime and OpenVINO run one CPU device, so they refuse a strategy
    of several replicas. SettingError in one line naming the setting and
    the fix for an engine not installed or a precision it or this CPU
    cannot run, before any network is built; 'auto' in float32 without
    CPU_ENGINE installed runs TensorFlow, saying so."""
    one_cpu = strategy.num_replicas_in_sync == 1 and not tf.config.list_logical_devices('GPU')
    if requested == 'auto':
        engine = ('openvino' if precision != 'float32' else CPU_ENGINE) if one_cpu \
            else 'tensorflow'
        if engine != 'tensorflow' and precision == 'float32' and _import_error(engine):
            print(f"warning: {engine} is not installed, so --engine auto runs TensorFlow on "
                  f"this CPU (slower: bench/RESULTS.md, Engines): pip install {engine} "
                  f"(requirements.txt), or --engine tensorflow to silence this")
            engine = 'tensorflow'
    elif requested in ENGINES:
        engine = requested
    else:
        raise SettingError(f"--engine {requested}: use auto, {', '.join(ENGINES)}")
    if precision != 'float32' and engine != 'openvino':
        raise SettingError(f"predict_precision = {precision!r} runs on --engine openvino on "
                           f"one CPU device only, not {engine}: set predict_precision=float32, "
                           f"or --engine openvino")
    if engine != 'tensorflow' and strategy.num_replicas_in_sync > 1:
        raise SettingError(f"--engine {engine} runs on one CPU device, not "
                           f"{strategy.num_replicas_in_sync} replicas: leave out "
                           f"--engine or set cpu_replicas / multi_gpu_enabled off")
    if engine != 'tensorflow':
        _check_installed(engine)
    if engine == 'openvino':
        check_precision(precision)
    if precision == 'int8' and _import_error('nncf'):
        raise SettingError(conversion.missing('openvino_int8'))
    return engine


def window_fn(engine, mtl, dae, *, cfg, strategy, outputs, files):
    """The window function predict.py blends (blend.predict_rows): the
    networks run by TensorFlow (tensorflow_fn), or their conversion of the
    WeightsFiles `files` (MTL and DAE or None) run on every core by ONNX
    Runtime (conversion.onnx_model) or by OpenVINO in cfg.predict_precision
    (conversion.openvino_model; int8: its quantized conversion)."""
    if engine == 'tensorflow':
        return tensorflow_fn(mtl, dae, cfg=cfg, strategy=strategy, outputs=outputs)
    keys = set(outputs) | {heads.HEIGHT.name}
    if engine == 'onnxruntime':
        return onnx_fn(export.onnx_session(conversion.onnx_model(*files, mtl, dae, cfg)),
                       int(cfg.test_batch_size), keys)
    path = conversion.openvino_model(*files, mtl, dae, cfg, cfg.predict_precision)
    return openvino_fn(openvino_model(path, batch_size=int(cfg.test_batch_size),
                                      crop=cfg.cropSize, channels=image_channels(cfg),
                                      precision=cfg.predict_precision), keys)
