"""What MirroredStrategy costs on its own: the same MTL training step, same
global batch, through the default strategy (one replica) and through
MirroredStrategy over 2 logical CPU devices, each with and without XLA, in
one process, timed in interleaved windows.

    python bench/strategy_overhead.py [--crop 128] [--batch 8] [--decoder-scale 0.25]
        [--windows 5] [--calls 3] [--no-xla] [--intra N] [--inter N] [--set NAME=VALUE ...]

Both logical devices share the same cores, so no speed-up is possible: the
ratio is the strategy's overhead (splitting the batch, two half-size steps
competing for the cores, the gradient all-reduce). --intra/--inter set
TensorFlow's thread pools (default: its own choice, which measured as well
as the alternatives here, see bench/RESULTS.md). Prints
seconds per step (median of the windows) and last `ratio: <mirrored step
time / default step time>` (float32).
"""
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import settings  # noqa: E402


def main():
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--crop', type=int, default=128, help='crop side, px (multiple of 32)')
    p.add_argument('--batch', type=int, default=8, help='global batch (even)')
    p.add_argument('--decoder-scale', type=float, default=0.25,
                   help='MTL decoder width (0.25: 18.4 M parameters)')
    p.add_argument('--windows', type=int, default=5, help='timed windows per variant')
    p.add_argument('--calls', type=int, default=3, help='train_step calls per window')
    p.add_argument('--no-xla', action='store_true', help='float32 without XLA only')
    p.add_argument('--intra', type=int, help='intra-op threads (default: ours)')
    p.add_argument('--inter', type=int, help='inter-op threads (default: ours)')
    args = settings.parse_args(p)
    if args.batch % 2:
        p.error(f'--batch {args.batch}: use an even global batch (two replicas)')
    settings.apply([f'cropSize={args.crop}', f'mtl_decoder_scale={args.decoder_scale}',
                    'backbone_weights=None', 'multi_gpu_enabled=True', 'cpu_replicas=2',
                    f'batch_size={args.batch // 2}'])

    import tensorflow as tf
    import config
    from utils import distribute
    from utils.train import benchmark, tasks
    from utils.train.trainer import Trainer

    if args.intra is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    strategy = distribute.get_strategy(config)
    if strategy.num_replicas_in_sync != 2:
        sys.exit(f"expected 2 replicas, got {strategy.num_replicas_in_sync}")

    timers = {}
    for xla in ([False] if args.no_xla else [False, True]):
        config.jit_compile = xla
        suffix = ' + XLA' if xla else ''
        timers['mirrored' + suffix] = benchmark.StepTimer(
            Trainer(tasks.MTLTask(config), strategy), steps_per_call=1)
        config.mtl_batchSize = args.batch   # one replica takes the whole global batch
        timers['default' + suffix] = benchmark.StepTimer(
            Trainer(tasks.MTLTask(config), tf.distribute.get_strategy()),
            steps_per_call=1)
        config.mtl_batchSize = args.batch // 2
    params = timers['default'].trainer.model.count_params()
    medians, windows = benchmark.median_step_time(timers, args.windows, args.calls)

    print(f"machine: nproc {os.cpu_count()}, {platform.processor() or platform.machine()}, "
          f"TensorFlow {tf.__version__}, threads intra "
          f"{tf.config.threading.get_intra_op_parallelism_threads()} inter "
          f"{tf.config.threading.get_inter_op_parallelism_threads()} (0: TensorFlow's choice)")
    print(f"MTL {params / 1e6:.1f} M parameters, crop {args.crop}, global batch {args.batch}; "
          f"{args.windows} windows of {args.calls} steps, median")
    for name, seconds in medians.items():
        print(f"{name:<16} {seconds:7.3f} s/step  {args.batch / seconds:6.2f} samples/s  "
              f"(windows: {' '.join(f'{w:.3f}' for w in windows[name])})")
    if not args.no_xla:
        print(f"XLA ratio, default:  {medians['default + XLA'] / medians['default']:.3f} "
              f"(XLA step time / float32 step time)")
        print(f"XLA ratio, mirrored: {medians['mirrored + XLA'] / medians['mirrored']:.3f}")
        print(f"mirrored / default with XLA: "
              f"{medians['mirrored + XLA'] / medians['default + XLA']:.3f}")
    print(f"ratio: {medians['mirrored'] / medians['default']:.3f}")


if __name__ == '__main__':
    sys.exit(settings.run_main(main))
