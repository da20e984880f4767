"""What runs the networks on a batch of windows: TensorFlow, on any
strategy (GPUs, several replicas), or ONNX Runtime on every CPU core (the
networks converted as export.py converts them). Either gives a window
function fn(windows [n, crop, crop, C] float32) -> {map: array} with a
`batch_size`, which utils/predict/blend.py blends.
"""
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from nets import dae as dae_net
from utils.errors import SettingError
from utils.model import heads
from utils.predict import export

ENGINES = ('tensorflow', 'onnxruntime')
# What bench/engines.py measured faster on CPU (bench/RESULTS.md, "Engines"),
# with heights equal within export.height_tolerance; GPUs and several
# replicas stay on TensorFlow.
CPU_ENGINE = 'tensorflow'


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
        windows = np.asarray(windows, np.float32)
        n = len(windows)
        pieces = []
        for first in range(0, n, batch):
            chunk = windows[first:first + batch]
            real = len(chunk)
            if real < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, 0)])
            out = run(tf.constant(chunk))
            pieces.append({k: v.numpy()[:real] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}

    predict.batch_size = batch
    return predict


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


def choose_engine(requested, strategy):
    """The engine predict.py runs: `requested`, or for 'auto' CPU_ENGINE on
    one CPU replica and TensorFlow on GPUs or several replicas. ONNX Runtime
    runs one CPU device, so it refuses a strategy of several replicas."""
    one_cpu = strategy.num_replicas_in_sync == 1 and not tf.config.list_logical_devices('GPU')
    if requested == 'auto':
        return CPU_ENGINE if one_cpu else 'tensorflow'
    if requested not in ENGINES:
        raise SettingError(f"--engine {requested}: use auto, {' or '.join(ENGINES)}")
    if requested == 'onnxruntime' and strategy.num_replicas_in_sync > 1:
        raise SettingError(f"--engine onnxruntime runs on one CPU device, not "
                           f"{strategy.num_replicas_in_sync} replicas: leave out "
                           f"--engine or set cpu_replicas / multi_gpu_enabled off")
    return requested


def window_fn(engine, mtl, dae, *, cfg, strategy, outputs):
    """The window function predict.py blends (blend.predict_rows): the
    networks run by TensorFlow (tensorflow_fn), or converted to ONNX in a
    temporary folder and run by ONNX Runtime on every core."""
    if engine == 'tensorflow':
        return tensorflow_fn(mtl, dae, cfg=cfg, strategy=strategy, outputs=outputs)
    folder = tempfile.mkdtemp(prefix='dsmnet_onnx_')
    try:
        card = export.model_card(cfg, correction=dae is not None, weights={})
        export.convert(mtl, dae, cfg, card, folder)
        session = export.onnx_session(os.path.join(folder, 'model.onnx'))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return onnx_fn(session, int(cfg.test_batch_size), set(outputs) | {'height'})
