"""test_multi_gpu.py, the users' check of their device settings, run as they run it."""
import json

import pytest

from conftest import ROOT, run_python


@pytest.mark.slow
@pytest.mark.parametrize('sets,replicas,strategy,rule', [
    # forced 'mirrored' on one device: no warning that multi_gpu_enabled = True
    (['distribution=mirrored'], 1, 'MirroredStrategy',
     "one replica on CPU:0 (no GPU visible, CUDA_VISIBLE_DEVICES='')"),
    (['multi_gpu_enabled=True', 'cpu_replicas=2'], 2, 'MirroredStrategy',
     "2 replicas on logical CPU devices (cpu_replicas = 2)")])
def test_quick_check_reports_the_replicas_and_the_split(sets, replicas, strategy, rule):
    # The MTL on the stand-in encoder: the devices and the split are under test.
    result = run_python(['test_multi_gpu.py', '--json', '--quick', '--set', 'batch_size=3',
                         *[a for s in sets for a in ('--set', s)]], stand_in=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert 'multi_gpu_enabled = True' not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report['replicas'] == replicas and report['step_ok'] is True
    assert report['strategy'] == strategy and report['device_rule'] == rule
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


BENCHMARK = r'''
import json, sys
from utils import settings
settings.apply(sys.argv[1:])
from utils import distribute
from utils.train import benchmark
cfg = settings.current()
report = benchmark.scaling(cfg, distribute.get_strategy(cfg), windows=1, seconds=0.5,
                           stage_names=('dae',))
benchmark.print_scaling(report)
print(json.dumps(report))
'''


@pytest.mark.slow
def test_benchmark_measures_one_and_two_replicas(synthetic_root, tmp_path):
    """What test_multi_gpu.py --benchmark runs (utils/train/benchmark.scaling), for
    the DAE stage (on the MTL's stand-in encoder): both replica counts
    timed, rates and efficiency as defined."""
    script = tmp_path / 'benchmark.py'
    script.write_text(BENCHMARK)
    result = run_python([str(script), f'shortcut_path={synthetic_root}',
                         'multi_gpu_enabled=True', 'cpu_replicas=2', 'cropSize=64',
                         'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625', 'batch_size=4'],
                        stand_in=True, env={'PYTHONPATH': ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    printed, last = result.stdout.rsplit('\n', 2)[0], result.stdout.strip().splitlines()[-1]
    report = json.loads(last)
    assert report['replicas'] == 2 and list(report['stages']) == ['dae']
    entry = report['stages']['dae']
    seconds, rate = entry['step_seconds'], entry['samples_per_second']
    assert set(seconds) == set(rate) == {'1', '2'}
    for n in ('1', '2'):
        assert seconds[n] > 0 and entry['trace_seconds'][n] > 0
        assert rate[n] == pytest.approx(4 * int(n) / seconds[n], rel=1e-12)
        assert len(entry['peak_bytes_per_replica'][n]) == int(n)
    assert entry['scaling_efficiency'] == pytest.approx(rate['2'] / (2 * rate['1']), rel=1e-12)
    fed = entry['input_samples_per_second']
    assert fed > 0
    expected = ('is the bottleneck' if fed < rate['2'] else 'little margin'
                if fed < 1.5 * rate['2'] else 'is not the bottleneck')
    assert expected in entry['verdict']
    assert 'scaling efficiency' in printed and 'DAE  per-replica batch 4' in printed
