"""Check the device setup in config.py: devices, strategy, replicas, batch sizes,
and one real distributed training step of the MTL and of the DAE.

    python test_multi_gpu.py [--quick] [--json] [--set NAME=VALUE ...]
    python test_multi_gpu.py --benchmark [--windows 5] [--quick] [--json] [--set ...]

Exit code 0 when the configuration does what config.py asks for (e.g. two
replicas for gpu_devices = "0,1" with multi_gpu_enabled); otherwise 1, with
the verdict `FAIL: <reason>`, or, like every script, one line `error: ...`
on stderr for a setting that cannot work. The step uses random weights
(backbone_weights is ignored here: this checks distribution, not data or
pretrained weights).

--benchmark measures, on this machine and with the current settings (crop,
per-replica batch, mixed_precision, jit_compile, steps_per_execution,
sync_batchnorm): MTL and DAE training samples/s on 1 replica and on all
configured replicas, the scaling efficiency, peak memory per replica (where
TensorFlow tracks it), the real input pipeline's rate next to the step rate,
and a verdict.
"""
import json
import math
import os
import sys

from utils import settings


def parse(argv=None):
    p = settings.parser(__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true',
                   help='64 px crop and 1/16-width networks; the check also freezes the '
                        'encoder (its step then builds in a third of the time, the '
                        'benchmark does not): well under a minute on a CPU')
    p.add_argument('--json', action='store_true', help='print one JSON object')
    p.add_argument('--benchmark', action='store_true',
                   help='measure training throughput and scaling instead of checking')
    p.add_argument('--windows', type=int, default=5,
                   help='--benchmark: timed windows per variant (median reported)')
    return settings.parse_args(p, argv)


def one_step(trainer, cfg):
    """One distributed step: (loss terms, examples each replica received)."""
    import tensorflow as tf
    from utils.train.benchmark import synthetic_batch
    dataset = tf.data.Dataset.from_tensors(synthetic_batch(trainer.global_batch, cfg))
    iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
    return trainer.train_step(iterator)


def check(cfg):
    """The device report, with the verdict of one MTL and one DAE step."""
    import tensorflow as tf
    from utils import distribute
    from utils.train.tasks import DAETask, MTLTask
    from utils.train.trainer import Trainer
    report = {'tensorflow': tf.__version__,
              'cuda_visible_devices': os.environ.get('CUDA_VISIBLE_DEVICES'),
              'physical_gpus': [d.name for d in tf.config.list_physical_devices('GPU')]}
    strategy = distribute.get_strategy(cfg)
    replicas = strategy.num_replicas_in_sync
    report.update({
        'logical_gpus': [d.name for d in tf.config.list_logical_devices('GPU')],
        'strategy': type(strategy).__name__, 'replicas': replicas,
        'devices': distribute.replica_devices(strategy),
        'crop': cfg.cropSize, 'batch_size': cfg.batch_size,
        'global_batch_size': cfg.batch_size * replicas,
        'mtl_batch_size': cfg.mtl_batchSize,
        'mtl_global_batch_size': cfg.mtl_batchSize * replicas,
        'dae_batch_size': cfg.dae_batchSize,
        'dae_global_batch_size': cfg.dae_batchSize * replicas})

    mtl_trainer = Trainer(MTLTask(cfg), strategy)
    mtl_losses, report['per_replica_examples'] = one_step(mtl_trainer, cfg)
    dae_trainer = Trainer(DAETask(cfg, mtl=mtl_trainer.model), strategy)
    dae_losses, report['dae_per_replica_examples'] = one_step(dae_trainer, cfg)
    report['mtl_losses'], report['dae_losses'] = mtl_losses, dae_losses

    problems = []
    for stage, counts in (('mtl', report['per_replica_examples']),
                          ('dae', report['dae_per_replica_examples'])):
        share = report[f'{stage}_global_batch_size'] // replicas
        if counts != [share] * replicas:
            problems.append(f"{stage.upper()} replicas received {counts} examples, "
                            f"expected {share} each")
    for name, value in {**{f'mtl {k}': v for k, v in mtl_losses.items()},
                        **{f'dae {k}': v for k, v in dae_losses.items()}}.items():
        if not math.isfinite(value):
            problems.append(f"loss {name} is {value}")
    report['step_ok'] = not problems
    # What the settings ask for on this machine (distribute.device_plan's rule).
    plan = distribute.device_plan(cfg, len(tf.config.list_physical_devices('GPU')))
    report['device_rule'] = plan.note
    if plan.replicas is not None and replicas != plan.replicas:
        problems.append(f"config asks for {plan.replicas} replica(s) ({plan.note}) "
                        f"but the strategy has {replicas}")
    report['ok'] = not problems
    report['verdict'] = ('OK: ' + f"{replicas} replica(s), each given "
                         f"{report['mtl_global_batch_size'] // replicas} of "
                         f"{report['mtl_global_batch_size']} MTL examples per step"
                         if not problems else 'FAIL: ' + '; '.join(problems))
    return report


def print_report(r):
    rows = [('TensorFlow', r['tensorflow']),
            ('CUDA_VISIBLE_DEVICES', r['cuda_visible_devices'] or 'unset'),
            ('physical GPUs', ', '.join(r['physical_gpus']) or 'none'),
            ('logical GPUs', ', '.join(r['logical_gpus']) or 'none'),
            ('device rule', r['device_rule']),
            ('strategy', r['strategy']), ('replicas in sync', r['replicas']),
            ('devices', ', '.join(r['devices'])), ('crop', r['crop']),
            ('MTL batch', f"{r['mtl_batch_size']} per replica, "
                          f"{r['mtl_global_batch_size']} global"),
            ('DAE batch', f"{r['dae_batch_size']} per replica, "
                          f"{r['dae_global_batch_size']} global"),
            ('MTL step', f"examples per replica {r['per_replica_examples']}, losses " +
             ', '.join(f"{k} {v:.4g}" for k, v in r['mtl_losses'].items())),
            ('DAE step', f"examples per replica {r['dae_per_replica_examples']}, loss "
                         f"{r['dae_losses']['loss']:.4g}")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(r['verdict'])


def main(args):
    from utils import distribute
    from utils.errors import DeviceConfigError
    from utils.train import benchmark
    changes = {}
    if args.quick:
        changes = dict(cropSize=64, mtl_decoder_scale=0.0625, dae_width_scale=0.0625)
        if not args.benchmark:  # a frozen encoder would measure another training
            changes['mtl_bb_freeze'] = True
    # Random weights: this checks distribution, not data or pretrained weights.
    cfg = settings.current().replace(backbone_weights=None, **changes)
    if args.benchmark:
        report = benchmark.scaling(cfg, distribute.get_strategy(cfg), windows=args.windows)
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            benchmark.print_scaling(report)
        return
    try:
        report = check(cfg)
    except DeviceConfigError as err:   # the machine lacks a device the settings name
        if args.json:
            print(json.dumps({'ok': False, 'step_ok': False, 'verdict': f'FAIL: {err}'},
                             indent=1))
        raise
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    if not report['ok']:
        sys.exit(1)


if __name__ == '__main__':
    sys.exit(settings.run_main(main, parse()))
