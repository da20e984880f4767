"""Test trained DSMNet weights on a split of the configured dataset.

Tiled prediction of every image, height and segmentation metrics, a
mean-height baseline, predicted GeoTIFFs and figures; for datasets with a
building class, errors per building and by height bin. Writes
output/<dataset>/<run>/metrics.json (<run>: 'mtl', or 'mtl_dae' with
--correction) and ends with one line a script can grep:

    RESULT rmse=... mae=... mse=... delta1=... baseline_rmse=... baseline_mae=... miou=...

Example: python test_dsm.py --correction --set dataset_name=Vaihingen
"""
import json
import math
import os
import sys

from utils import settings
from utils.model import weights

TABLE = [('MSE', 'mse'), ('MAE', 'mae'), ('RMSE', 'rmse'), ('delta1', 'delta1'),
         ('delta2', 'delta2'), ('delta3', 'delta3'), ('mIoU', 'miou'), ('OA', 'oa'),
         ('FWIoU', 'fwiou'), ('baseline RMSE', 'baseline_rmse'),
         ('baseline MAE', 'baseline_mae')]
RESULT_KEYS = ('rmse', 'mae', 'mse', 'delta1', 'baseline_rmse', 'baseline_mae', 'miou')


def parse(argv=None):
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--split', choices=('test', 'valid', 'train'), default='test')
    weights.add_options(p)
    p.add_argument('--out', help='folder for metrics.json and the predictions '
                                 '(default: <output_root>/<dataset>/mtl or mtl_dae)')
    p.add_argument('--max-images', type=int, help='only the first N images (smoke runs)')
    return settings.parse_args(p, argv)


def _finite(value):
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _fmt(value):
    return 'n/a' if value is None else f'{value:.4f}'


def report(result, correction, dataset_name):
    """The readable table, and the RESULT line last."""
    print(f"\n{dataset_name}, split {result['split']}, {result['images']} images")
    header = f"{'metric':<15}{'refined' if correction else 'MTL':>10}"
    print(header + (f"{'MTL only':>10}" if correction else ''))
    for label, key in TABLE:
        line = f"{label:<15}{_fmt(result.get(key)):>10}"
        if correction and key in result and f'mtl_{key}' in result:
            line += f"{_fmt(result[f'mtl_{key}']):>10}"
        print(line)
    if result.get('buildings'):
        report_buildings(result['buildings'])
    if result.get('uncertainty'):
        report_uncertainty(result['uncertainty'])
    print('RESULT ' + ' '.join(f"{k}={_fmt(result.get(k))}" for k in RESULT_KEYS))


BUILDING_COLUMNS = [('buildings', 'buildings'), ('med MAE', 'median_mae'),
                    ('med bias', 'median_bias'), ('p70 MAE', 'p70_mae'),
                    ('p70 RMSE', 'p70_rmse'), ('p70 bias', 'p70_bias'), ('pixels', 'pixels'),
                    ('px MAE', 'pixel_mae'), ('px RMSE', 'pixel_rmse'), ('px bias', 'pixel_bias')]


def report_buildings(errors):
    """Errors per building (predicted - reference median and 70th percentile
    height of each building of the reference labels), overall and by
    reference height bin, with the pixel errors of each bin."""
    print(f"\nbuildings of the reference labels: {errors['buildings']} "
          f"(errors in m, predicted - reference)")
    print(f"{'height':<9}" + ''.join(f"{label:>10}" for label, _ in BUILDING_COLUMNS))
    rows = {'all': dict(buildings=errors['buildings'],
                        **{f'median_{k}': v for k, v in errors['median'].items()},
                        **{f'p70_{k}': v for k, v in errors['p70'].items()})}
    rows.update({f'{name} m': row for name, row in errors['by_height'].items()})
    for name, row in rows.items():
        cells = [row.get(key, '') for _, key in BUILDING_COLUMNS]
        print(f"{name:<9}" + ''.join(f"{v if isinstance(v, (int, str)) else _fmt(v):>10}"
                                     for v in cells))


UNCERTAINTY_COLUMNS = [('pixels', 'pixels'), ('1 sigma', 'coverage_1sigma'),
                       ('2 sigma', 'coverage_2sigma'), ('RMS sigma', 'rms_sigma'),
                       ('RMSE', 'rmse')]


def report_uncertainty(found):
    """The calibrated sigma on the split: sparsification areas (m), coverage
    against nominal, rank correlation; coverage by reference height bin."""
    nominal = found['nominal']
    print(f"\nheight uncertainty (sigma calibrated on valid, predict.py's windows): "
          f"AUSE {_fmt(found['ause'])} m, AURG {_fmt(found['aurg'])} m, within 1 sigma "
          f"{_fmt(found['coverage_1sigma'])} ({nominal['coverage_1sigma']}), within 2 sigma "
          f"{_fmt(found['coverage_2sigma'])} ({nominal['coverage_2sigma']}), Spearman "
          f"{_fmt(found['spearman'])}")
    print(f"{'height':<9}" + ''.join(f"{label:>10}" for label, _ in UNCERTAINTY_COLUMNS))
    for name, row in found['by_height'].items():
        print(f"{name + ' m':<9}" + ''.join(
            f"{row[key] if isinstance(row[key], int) else _fmt(row[key]):>10}"
            for _, key in UNCERTAINTY_COLUMNS))


def run_test(args):
    """Test, write metrics.json and the predictions, print the table."""
    cfg = settings.current()    # config.py after --set
    from utils import distribute
    from utils.data.layouts import find_split

    mtl_file, dae_file = weights.from_options(args, cfg)
    correction = dae_file is not None
    for file in filter(None, (mtl_file, dae_file)):
        file.check(cfg)
    find_split(cfg, args.split)     # a missing folder or image, before TensorFlow starts
    run = args.out or os.path.join(cfg.output_root, cfg.dataset_name,
                                   'mtl_dae' if correction else 'mtl')
    strategy = distribute.get_strategy(cfg)
    # Imported after --set and the strategy: the networks see the overrides.
    from utils.evaluate import evaluation
    from utils.model import networks
    mtl = networks.trained(mtl_file, cfg, strategy)
    dae = networks.trained(dae_file, cfg, strategy) if correction else None
    result = evaluation.evaluate(mtl, dae, cfg=cfg, strategy=strategy,
                                 split=args.split, out_dir=run, max_images=args.max_images)
    result['uncertainty'] = None
    why = cfg.predict_uncertainty != 'off' and evaluation.uncalibrated(cfg)
    if why:
        print(f"height uncertainty not calibrated: {why} (predict.py --outputs "
              f"...,uncertainty needs weights calibrated on a held-out valid split)")
    elif cfg.predict_uncertainty != 'off':
        calibration, result['uncertainty'] = evaluation.uncertainty(
            mtl, dae, cfg=cfg, strategy=strategy, split=args.split, max_images=args.max_images)
        result['uncertainty']['calibration'] = calibration.record()
        if distribute.is_chief(strategy):   # for predict.py: beside the weights it reads
            from utils.predict.calibration import KEY
            (dae_file if correction else mtl_file).store(KEY, calibration.record())

    if distribute.is_chief(strategy):
        overall = {k: v for k, v in result.items()
                   if k not in ('per_image', 'buildings', 'uncertainty')}
        record = {'dataset': cfg.dataset_name, 'split': args.split,
                  'correction': correction,
                  'checkpoints': {'mtl': mtl_file.path,
                                  'dae': dae_file.path if correction else None},
                  'overall': overall,
                  'baseline': {'height': result['baseline_height'],
                               'rmse': result['baseline_rmse'],
                               'mae': result['baseline_mae']},
                  'buildings': result['buildings'],
                  'uncertainty': result['uncertainty'],
                  'per_image': result['per_image'],
                  'settings': cfg.as_dict()}
        path = os.path.join(run, 'metrics.json')
        with open(path, 'w') as f:
            json.dump(_finite(record), f, indent=2, default=str)
        print(f"\nmetrics and predictions: {run}")
    report(result, correction, cfg.dataset_name)


def main(argv=None):
    """The script's exit code (the convention of settings.run_main)."""
    return settings.run_main(run_test, parse(argv), tensorflow=False)   # by get_strategy


if __name__ == '__main__':
    sys.exit(main())
