"""The whole pipeline script, end to end, with tiny settings and a few steps."""
import glob
import json
import os
import sys

import numpy as np
import pytest
import tifffile

import config
from conftest import ROOT, STAND_IN, TINY
from utils import settings


def rmse_from_files(folder, samples):
    """The test's figures recomputed from the files it wrote and the dataset's
    own, both read by GDAL: (mean over images of each image's RMSE over its
    finite ground-truth pixels, {image: RMSE})."""
    import rasterio
    per_image = {}
    for sample in samples:
        with rasterio.open(folder / f'{sample.name}_height.tif') as f:
            predicted = f.read(1).astype(np.float64)
        with rasterio.open(sample.height) as f:
            truth = f.read(1, masked=True).astype(np.float64).filled(np.nan)
        valid = np.isfinite(truth)
        per_image[sample.name] = float(np.sqrt(np.mean((predicted - truth)[valid] ** 2)))
    return float(np.mean(list(per_image.values()))), per_image


@pytest.mark.slow
def test_run_train_test_on_two_replicas_writes_every_artifact(tmp_path, synthetic_root):
    """The main job as a user without GPUs tries two replicas, on the
    synthetic set with its defaults (per-replica batch norm, the encoder
    trained): every stage on 2 replicas, every file written, every figure
    of the summary recomputed from the files. (One replica: the dataset
    matrix in test_dataset_matrix.py.) The MTL is built on the stand-in
    encoder (tests/stand_in.py), as in every test of what surrounds it:
    with DenseNet121, traced on 2 replicas in every stage, this test took
    266 s of the suite's 888 (2026-12-08); DenseNet121 itself trains on one
    replica and on two in test_performance.py."""
    import subprocess
    # PYTHON, which the script runs every stage with, as tests/stand_in.py
    python = tmp_path / 'python'
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    python.chmod(0o755)
    sets = [f'--set={s}' for s in TINY + [
        f'shortcut_path={synthetic_root}', f'checkpoint_root={tmp_path / "ckpt"}',
        f'output_root={tmp_path / "out"}', 'max_steps=3', 'batch_size=2',
        'plot_metrics=True', 'test_plot_images=2', 'predict_uncertainty=windows',
        # the uncertainty's passes (valid and test) at half the crop: 4 windows
        # over most pixels, 121 per image where the default cropSize // 3 gives
        # 289 (a CPU shrink, as TINY's test_stride)
        'predict_stride=16']]
    sets += ['--set', 'multi_gpu_enabled=True', '--set', 'cpu_replicas=2']   # as README says
    env = dict(os.environ, PYTHON=str(python), TF_CPP_MIN_LOG_LEVEL='2')
    # The timeout is a safety net only.
    result = subprocess.run([os.path.join(ROOT, 'run_train_test.sh'), *sets], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for name in ('MTL training', 'MTL test', 'DAE training', 'MTL+DAE test'):
        assert f'=== stage: {name} ===' in out
    for stage in ('MTL', 'DAE'):
        assert f'== {stage} training on synthetic ==' in out
    assert out.count('strategy        MirroredStrategy, 2 replica(s)') == 2
    assert out.count('batch           2 per replica, 4 global') == 2
    # every stage (the script shows each stage's stderr in its output)
    assert out.count('devices: 2 replicas on logical CPU devices (cpu_replicas = 2)') == 4
    summary = out[out.index('=== summary ==='):]
    for label in ('MTL RMSE', 'MTL+DAE RMSE', 'baseline RMSE', 'MTL mIoU', 'verdict',
                  'outputs', 'training plots', 'total time'):
        assert label in summary
    run = tmp_path / 'ckpt' / 'synthetic'
    for stage in ('mtl', 'dae'):
        for name in ('best.weights.h5', 'best.weights.h5.json', 'train.log',
                     'history.json', 'metrics.png'):
            assert (run / stage / name).is_file(), (stage, name)
        assert glob.glob(str(run / stage / 'train_state' / 'ckpt-3*'))
        assert glob.glob(str(run / stage / 'tensorboard' / 'events.out.tfevents.*'))
    for stage in ('mtl', 'dae'):    # what the files hold, not only that they exist
        with open(run / stage / 'best.weights.h5.json') as f:
            meta = json.load(f)
        assert meta['kind'] == stage and meta['settings']['cropSize'] == 32
        assert meta['settings']['dataset_name'] == 'synthetic'
        with open(run / stage / 'history.json') as f:
            history = json.load(f)
        assert [record['epoch'] for record in history] == [1]   # max_steps=3 ends in epoch 1
        assert np.isfinite(history[0]['val_rmse'])
    codes = set(config.dataset_settings('synthetic')['label_codes'])
    from utils.data.layouts import find_split
    samples = find_split(settings.current().replace(shortcut_path=synthetic_root), 'test')
    measured = {}
    for test_run, label in (('mtl', 'MTL RMSE'), ('mtl_dae', 'MTL+DAE RMSE')):
        folder = tmp_path / 'out' / 'synthetic' / test_run
        with open(folder / 'metrics.json') as f:
            metrics = json.load(f)
        printed = next(line for line in summary.splitlines() if line.startswith(label + ' '))
        assert float(printed.split()[-1]) == round(metrics['overall']['rmse'], 4)
        assert metrics['overall']['images'] == 10 == len(metrics['per_image'])
        # The heights written are those scored: float32 files, float64 sums
        overall, per_image = rmse_from_files(folder, samples)
        assert metrics['overall']['rmse'] == pytest.approx(overall, rel=1e-9)
        assert {row['name']: row['rmse'] for row in metrics['per_image']} == \
            pytest.approx(per_image, rel=1e-9)
        heights = sorted(glob.glob(str(folder / '*_height.tif')))
        assert len(heights) == 10 and len(glob.glob(str(folder / '*_sem.tif'))) == 10
        for path in heights:        # every test image, at its size, every pixel predicted
            height = tifffile.imread(path)
            assert height.shape == (192, 192) and np.isfinite(height).all()
            sem = tifffile.imread(path.replace('_height.tif', '_sem.tif'))
            assert sem.shape == (192, 192) and set(np.unique(sem)) <= codes
        assert len(glob.glob(str(folder / '*.png'))) == 2
        # the height uncertainty's calibration, fitted on valid, kept with the
        # weights making the height
        found = measured[test_run] = metrics['uncertainty']
        stage = 'dae' if test_run == 'mtl_dae' else 'mtl'
        with open(run / stage / 'best.weights.h5.json') as f:
            assert json.load(f)['uncertainty'] == found['calibration']
        assert found['calibration']['windows']['correction'] == (stage == 'dae')
    # On the test split the calibrated sigma covers about 68% of the errors at 1 sigma
    for test_run, found in measured.items():
        print(f"{test_run}: uncertainty AURG {found['aurg']:.4f} m, AUSE {found['ause']:.4f} m, "
              f"1 sigma {found['coverage_1sigma']:.4f}, 2 sigma {found['coverage_2sigma']:.4f}, "
              f"Spearman {found['spearman']:.4f}")
    for found in measured.values():
        assert 0 <= found['coverage_1sigma'] <= found['coverage_2sigma'] <= 1
        assert abs(found['coverage_1sigma'] - 0.6827) <= 0.10
    # AURG > 0 (sigma ranks the errors) is not asserted: after 3 steps the
    # networks have learnt next to nothing and their windows' spread does not
    # yet rank their errors (2026-12-07, predict_stride 16: AURG -0.10 m MTL,
    # -0.14 m MTL+DAE, Spearman -0.02 and -0.03); the figures are printed
    # above. bench/RESULTS.md has those of the main job's own training.


def test_a_failing_stage_stops_the_script_with_its_name(tmp_path):
    import subprocess
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        [os.path.join(ROOT, 'run_train_test.sh'), f'--set=shortcut_path={tmp_path}/none',
         '--set=dataset_name=Vaihingen'], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "=== stage 'MTL training' failed with exit code 1 ===" in result.stdout
    assert 'MTL test' not in result.stdout
