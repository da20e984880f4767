"""The whole pipeline script, end to end, with tiny settings and a few steps."""
import glob
import json
import os
import sys

import numpy as np
import pytest
import tifffile

import config
from conftest import ROOT, TINY


@pytest.mark.slow
def test_run_train_test_writes_every_artifact(tmp_path, synthetic_root):
    import subprocess
    sets = [f'--set={s}' for s in TINY + [
        f'shortcut_path={synthetic_root}', f'checkpoint_root={tmp_path / "ckpt"}',
        f'output_root={tmp_path / "out"}', 'max_steps=3', 'batch_size=4',
        'plot_metrics=True', 'test_plot_images=2']]
    env = dict(os.environ, PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL='2')
    result = subprocess.run([os.path.join(ROOT, 'run_train_test.sh'), *sets], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for name in ('MTL training', 'MTL test', 'DAE training', 'MTL+DAE test'):
        assert f'=== stage: {name} ===' in out
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
    for test_run, label in (('mtl', 'MTL RMSE'), ('mtl_dae', 'MTL+DAE RMSE')):
        folder = tmp_path / 'out' / 'synthetic' / test_run
        with open(folder / 'metrics.json') as f:
            metrics = json.load(f)
        printed = next(line for line in summary.splitlines() if line.startswith(label + ' '))
        assert float(printed.split()[-1]) == round(metrics['overall']['rmse'], 4)
        assert metrics['overall']['images'] == 10 == len(metrics['per_image'])
        heights = sorted(glob.glob(str(folder / '*_height.tif')))
        assert len(heights) == 10 and len(glob.glob(str(folder / '*_sem.tif'))) == 10
        for path in heights:        # every test image, at its size, every pixel predicted
            height = tifffile.imread(path)
            assert height.shape == (192, 192) and np.isfinite(height).all()
            sem = tifffile.imread(path.replace('_height.tif', '_sem.tif'))
            assert sem.shape == (192, 192) and set(np.unique(sem)) <= codes
        assert len(glob.glob(str(folder / '*.png'))) == 2


def test_a_failing_stage_stops_the_script_with_its_name(tmp_path, synthetic_root):
    import subprocess
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        [os.path.join(ROOT, 'run_train_test.sh'), f'--set=shortcut_path={tmp_path}/none',
         '--set=dataset_name=Vaihingen'], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "=== stage 'MTL training' failed with exit code 1 ===" in result.stdout
    assert 'MTL test' not in result.stdout
