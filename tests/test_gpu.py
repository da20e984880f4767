"""The gpu tier: the device settings and the data-parallel step on real
GPUs. Runs where GPUs are visible (`./run_tests.sh -m gpu`); elsewhere every
test is skipped with its reason (conftest.py). The rest of the suite hides
the GPUs; these tests give them back to their own processes (gpus=True)."""
import json

import pytest

from conftest import GPUS, run_python
from test_training import FLOAT32_U, TERMS, assert_same_step, replica_run

pytestmark = pytest.mark.gpu
two_gpus = pytest.mark.skipif(0 < GPUS < 2, reason=f'needs 2 GPUs, {GPUS} visible')

PROBE = """
import json, sys
from utils import settings
settings.apply(sys.argv[1:])
import config
import tensorflow as tf
strategy = config.strategy
visible = tf.config.get_visible_devices('GPU')
print(json.dumps({
    'physical': [d.name for d in tf.config.list_physical_devices('GPU')],
    'visible': [d.name for d in visible],
    'growth': [tf.config.experimental.get_memory_growth(d) for d in visible],
    'replicas': strategy.num_replicas_in_sync,
    'devices': list(getattr(strategy.extended, 'worker_devices', []))}))
"""


def probe(*sets):
    result = run_python(['-c', PROBE, *sets], timeout=300, gpus=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_one_gpu_by_default_with_memory_growth():
    out, err = probe()
    assert len(out['physical']) == GPUS
    assert out['visible'] == out['physical'][:1] and out['growth'] == [True]
    assert out['replicas'] == 1
    assert "devices: GPU 0 (gpu_devices = '0'; CUDA_VISIBLE_DEVICES" in err


@two_gpus
def test_gpu_devices_in_their_order_with_memory_growth():
    out, err = probe('multi_gpu_enabled=True', 'gpu_devices=1,0')
    assert out['visible'] == [out['physical'][1], out['physical'][0]]
    assert out['growth'] == [True, True] and out['replicas'] == 2
    assert "every GPU of gpu_devices = '1,0'" in err


def test_cpu_replicas_hide_the_gpus():
    """What every replica test of the suite relies on, on a GPU machine: two
    logical CPU replicas, not one GPU replica."""
    out, err = probe('multi_gpu_enabled=True', 'cpu_replicas=2')
    assert out['visible'] == [] and out['replicas'] == 2
    assert [d.split('device:')[-1] for d in out['devices']] == ['CPU:0', 'CPU:1']
    assert f"the {GPUS} visible GPU(s) are hidden from this process" in err


# Unit roundoffs: TF32 keeps 10 of float32's 23 fraction bits (Ampere and
# newer round matmul and convolution inputs to it, TensorFlow's default),
# bfloat16 7. Each layer then errs by the rounding of its two inputs
# (2 u) plus its float32 accumulation (TERMS * FLOAT32_U, see test_training.py).
TF32_U, BFLOAT16_U = 2.0 ** -11, 2.0 ** -8


@two_gpus
@pytest.mark.parametrize('stage,precision,u', [
    ('mtl', 'float32', TF32_U),
    # bfloat16 on the MTL's 148 layers bounds nothing (148 x 8e-3 > 1): the DAE
    ('dae', 'mixed_bfloat16', BFLOAT16_U)])
def test_two_gpus_take_the_step_of_one(tmp_path, stage, precision, u):
    extra = [f'mixed_precision={precision}']
    one = replica_run(tmp_path, stage, 1, extra=extra, gpus=True)
    two = replica_run(tmp_path, stage, 2, extra=extra, gpus=True)
    assert_same_step(one, two, layer_error=2 * u + TERMS * FLOAT32_U)


@two_gpus
def test_benchmark_prints_the_scaling_figure(synthetic_root):
    result = run_python(['test_multi_gpu.py', '--benchmark', '--quick', '--windows', '1',
                         '--set', f'shortcut_path={synthetic_root}',
                         '--set', 'multi_gpu_enabled=True', '--set', 'gpu_devices=0,1'],
                        timeout=900, gpus=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert 'benchmark: MirroredStrategy, 2 replica(s) on GPU:0, GPU:1' in out
    for stage in ('MTL', 'DAE'):
        line = next(line for line in out.splitlines() if line.startswith(stage))
        assert 'per-replica batch' in line
    assert out.count('scaling efficiency') >= 2
