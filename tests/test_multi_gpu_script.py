"""test_multi_gpu.py, the users' check of their device settings, run as they run it."""
import json

import pytest

from conftest import run_python


@pytest.mark.slow
@pytest.mark.parametrize('sets,replicas', [
    ([], 1),
    (['multi_gpu_enabled=True', 'cpu_replicas=2'], 2)])
def test_quick_check_reports_the_replicas_and_the_split(sets, replicas):
    result = run_python(['test_multi_gpu.py', '--json', '--quick', '--set', 'batch_size=3',
                         *[a for s in sets for a in ('--set', s)]])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report['replicas'] == replicas and report['step_ok'] is True
    assert report['batch_size'] == 3 and report['global_batch_size'] == 3 * replicas
    assert report['mtl_global_batch_size'] == report['dae_global_batch_size'] == 3 * replicas
    assert report['per_replica_examples'] == [3] * replicas      # an even split
    assert report['dae_per_replica_examples'] == [3] * replicas
    assert len(report['devices']) == replicas and report['tensorflow']
    assert report['verdict'].startswith('OK')


@pytest.mark.parametrize('value', ['0,a', '0,0'])
def test_malformed_gpu_devices_fail_with_the_setting_named(value):
    result = run_python(['test_multi_gpu.py', '--set', f'gpu_devices={value}'])
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: gpu_devices = '{value}': use ")
