"""CPU engines for prediction: TensorFlow (predict.py's Keras networks in a
tf.function, utils/predict/engines.py) against ONNX Runtime and OpenVINO (the
export of the same networks, utils/predict/export.py; OpenVINO in float32,
int8 (predict.py's conversion quantized by NNCF, utils/predict/quantize.py,
calibrated here on --calibration random windows: the weights are untrained
too) and, where the CPU has BF16, bfloat16), on the same windows, with 1
thread and with every core, in one run.

    python bench/engines.py [--windows 32] [--rounds 3] [--calibration 32] [--no-correction]
        [--set NAME=VALUE ...]

Untrained networks with random weights at the dataset's settings (default
synthetic: 96 px windows, 1/4 widths), MTL + DAE unless --no-correction.
Each thread count runs in a fresh process (TensorFlow's thread pools are
fixed at start); inside it the engines alternate for --rounds rounds of
--windows windows in batches of test_batch_size. Prints per thread count
the median windows/s of each, the GFLOP/s that makes (the forward pass's
operations counted by bench/flops.py's profiler, multiply and add as 2) and
its share of those cores' float32 peak (bench/machine.float32_peak), its
ratio to tensorflow's, and its largest
height difference from tensorflow's against
utils/predict/export.height_tolerance (float32's; bfloat16 and int8 are not
held to it: their accuracy is bench/predict_quality.py's --precisions).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import config  # noqa: E402
import machine  # noqa: E402
from utils import settings  # noqa: E402


def measure(folder, threads, windows, rounds):
    """In this process: windows/s of both engines, alternating."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 0)
    from utils.data.samples import image_channels
    from utils.model import networks
    from utils.errors import SettingError
    from utils.model.weights import WeightsFile
    from utils.predict import engines as predict_engines, export
    paths = json.load(open(os.path.join(folder, 'weights.json')))
    strategy = tf.distribute.get_strategy()
    mtl = networks.trained(WeightsFile(paths['mtl'], 'mtl'), config, strategy)
    dae = networks.trained(WeightsFile(paths['dae'], 'dae'), config, strategy) \
        if paths['dae'] else None
    onnx = os.path.join(folder, 'model.onnx')
    engines = {
        'tensorflow': predict_engines.tensorflow_fn(mtl, dae, cfg=config, strategy=strategy,
                                                    outputs=['sem']),
        'onnxruntime': predict_engines.onnx_fn(export.onnx_session(onnx, threads),
                                               int(config.test_batch_size), {'height', 'sem'})}
    not_run = {}
    # OpenVINO on predict.py's own conversion (the cached .xml) in each
    # precision, and on the exported ONNX for comparison
    models = [(f'openvino_{p}', paths['openvino_int8' if p == 'int8' else 'openvino'], p)
              for p in predict_engines.OPENVINO_PRECISION]
    for name, path, precision in models + [('openvino_onnx_float32', onnx, 'float32')]:
        try:
            compiled = predict_engines.openvino_model(
                path, batch_size=int(config.test_batch_size), crop=config.cropSize,
                channels=image_channels(config), precision=precision, threads=threads)
        except SettingError as err:     # a precision this CPU lacks: said, not timed
            not_run[name] = str(err)
            continue
        engines[name] = predict_engines.openvino_fn(compiled, {'height', 'sem'})
    batch = np.random.default_rng(0).random(
        (windows, config.cropSize, config.cropSize, image_channels(config)), np.float32)
    heights = {name: fn(batch[:config.test_batch_size])['height']     # warm-up, trace
               for name, fn in engines.items()}
    rates = {name: [] for name in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            start = time.perf_counter()
            fn(batch)
            rates[name].append(windows / (time.perf_counter() - start))
    tolerance = export.height_tolerance([m for m in (mtl, dae) if m is not None],
                                        np.abs(heights['tensorflow']).max())
    from flops import graph_flops       # the pass the engines run, traced for one window
    gflop = graph_flops(predict_engines._replica_step(mtl, dae, ('sem',)), tf.TensorSpec(
        [1, config.cropSize, config.cropSize, image_channels(config)], tf.float32)) / 1e9
    return dict(threads=threads, rates=rates, tolerance=tolerance, load=os.getloadavg(),
                gflop=gflop,
                not_run=not_run,
                difference={name: float(np.abs(heights['tensorflow'] - h).max())
                            for name, h in heights.items() if name != 'tensorflow'})


def main():
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--windows', type=int, default=32)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--calibration', type=int, default=32,
                   help='random windows the int8 quantization calibrates on')
    p.add_argument('--no-correction', action='store_true', help='MTL only, no DAE')
    p.add_argument('--child', help=argparse_hidden(), default=None)
    p.add_argument('--threads', type=int, default=0, help=argparse_hidden())
    args = settings.parse_args(p)
    if args.child:
        print('RESULT ' + json.dumps(measure(args.child, args.threads, args.windows,
                                             args.rounds)))
        return

    import keras
    from utils.model import networks, weights
    folder = tempfile.mkdtemp(prefix='bench_engines_')
    try:
        keras.utils.set_random_seed(0)
        paths = {'mtl': os.path.join(folder, 'mtl.weights.h5'),
                 'dae': None if args.no_correction else os.path.join(folder, 'dae.weights.h5')}
        weights.save(networks.build_mtl(config, pretrained=False), paths['mtl'], 'mtl', config)
        if paths['dae']:
            weights.save(networks.build_dae(config), paths['dae'], 'dae', config)
        # predict.py's OpenVINO conversion, timed: what a first run pays once
        import tensorflow as tf
        from utils.model.weights import WeightsFile
        from utils.predict import conversion
        files = [WeightsFile(paths[k], k) if paths[k] else None for k in ('mtl', 'dae')]
        nets = [networks.trained(f, config, tf.distribute.get_strategy()) if f else None
                for f in files]
        start = time.perf_counter()
        paths['openvino'] = conversion.openvino_model(*files, *nets, config)
        converted = time.perf_counter() - start
        # int8: the same conversion quantized, as predict.py does it
        import openvino as ov
        from utils.data.samples import image_channels
        from utils.predict import quantize
        calibration = list(np.random.default_rng(1).random(
            (args.calibration, config.cropSize, config.cropSize, image_channels(config)),
            np.float32))
        start = time.perf_counter()
        int8 = quantize.quantized(ov.Core().read_model(paths['openvino']), calibration)
        quantized = time.perf_counter() - start
        paths['openvino_int8'] = os.path.join(folder, 'int8.xml')
        ov.save_model(int8, paths['openvino_int8'], compress_to_fp16=False)
        json.dump(paths, open(os.path.join(folder, 'weights.json'), 'w'))
        # export.py is a driver: run as the user runs it (its lines printed here)
        sys.stdout.flush()
        exported = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'export.py'), '--out', folder,
             '--mtl-weights', paths['mtl']]
            + (['--correction', '--dae-weights', paths['dae']] if paths['dae'] else [])
            + sum((['--set', s] for s in args.set), []))
        if exported.returncode:
            sys.exit(f"export.py failed (exit {exported.returncode})")
        print(machine.describe())
        print(f"crop {config.cropSize}, {args.windows} windows x {args.rounds} rounds, batch "
              f"{config.test_batch_size}, {'MTL' if args.no_correction else 'MTL + DAE'}")
        cores = os.cpu_count()
        peak, how = machine.float32_peak()
        print(f"float32 peak: {how}")
        print(f"predict.py's OpenVINO conversion (once per weights): {converted:.1f} s; "
              f"its int8 quantization on {args.calibration} windows {quantized:.1f} s "
              f"(predict.py calibrates on {quantize.CALIBRATION_WINDOWS})")
        for threads in (1, cores):
            proc = subprocess.run(
                [sys.executable, __file__, '--child', folder, '--threads', str(threads),
                 '--windows', str(args.windows), '--rounds', str(args.rounds)]
                + sum((['--set', s] for s in args.set), []),
                capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
            line = [x for x in proc.stdout.splitlines() if x.startswith('RESULT ')]
            if proc.returncode or not line:
                sys.exit(f"the {threads}-thread run failed: {proc.stderr[-2000:]}")
            r = json.loads(line[0][len('RESULT '):])
            med = {k: statistics.median(v) for k, v in r['rates'].items()}
            load = ' '.join(f'{x:.2f}' for x in r['load'])
            print(f"{threads} thread(s), load average after {load}, height tolerance "
                  f"{r['tolerance']:.2g} m, {r['gflop']:.2f} GFLOP per window:")
            for k, v in r['rates'].items():
                against = '' if k == 'tensorflow' else (
                    f", {med[k] / med['tensorflow']:.2f}x tensorflow, heights "
                    f"{r['difference'][k]:.2g} m from its")
                share = '' if peak is None else (
                    f", {100 * med[k] * r['gflop'] / (peak * threads / cores):.0f}% of "
                    f"float32 peak")
                print(f"  {k}: {med[k]:.2f} windows/s ({' / '.join(f'{x:.2f}' for x in v)}), "
                      f"{med[k] * r['gflop']:.1f} GFLOP/s{share}" + against)
            for k, why in r['not_run'].items():
                print(f"  {k}: not run ({why})")

    finally:
        shutil.rmtree(folder, ignore_errors=True)

def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == '__main__':
    sys.exit(settings.run_main(main))
