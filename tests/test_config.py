"""config.py, --set overrides and the strategy the device settings build."""
import json

import pytest

import config
from conftest import run_python
from utils import distribute, settings


def test_published_defaults_per_dataset():
    settings.apply(['dataset_name=Vaihingen'])
    assert (config.cropSize, config.batch_size, config.mtl_batchSize) == (320, 4, 4)
    assert (config.w1, config.w2, config.w3, config.w4) == (1e-4, 1e-1, 1e-5, 1e-3)
    assert config.label_codes[1] == (0, 0, 255) and config.backbone_weights == 'imagenet'
    settings.apply(['dataset_name=DFC2019_crp512_bin'])    # longest prefix, binary codes
    assert (config.cropSize, config.batch_size, config.label_codes) == (512, 2, [0, 1])
    settings.apply(['dataset_name=MyCity'])                # no entry: crop 256, batch 2
    assert (config.cropSize, config.batch_size) == (256, 2)
    assert config.test_stride == 256 // 6 and config.valid_stride == 256 // 2
    assert config.mtl_lr == 2e-4 and config.early_stop_patience == 10


def test_set_parses_to_the_type_of_the_default():
    settings.apply(['mtl_lr=1e-3', 'cropSize=128', 'multi_gpu_enabled=true',
                    'gpu_devices=0,1', 'backbone_weights=None', 'mtl_decoder_scale=0.5'])
    assert config.mtl_lr == 1e-3 and isinstance(config.mtl_lr, float)
    assert config.cropSize == 128 and isinstance(config.cropSize, int)
    assert config.multi_gpu_enabled is True
    assert config.gpu_devices == '0,1' and config.backbone_weights is None
    assert config.test_stride == 128 // 6       # derived settings follow
    assert config.valid_stride == 128 // 2
    settings.apply(['dataset_name=Vaihingen'])  # an explicit crop survives a dataset change
    assert config.cropSize == 128 and config.batch_size == 4


def test_set_rejects_bad_input():
    with pytest.raises(ValueError, match='cropSize'):
        settings.apply(['cropsize=64'])          # suggests the closest name
    with pytest.raises(ValueError, match='expected a number'):
        settings.apply(['mtl_lr=fast'])
    with pytest.raises(ValueError, match='True or False'):
        settings.apply(['sem_flag=maybe'])
    with pytest.raises(ValueError, match='NAME=VALUE'):
        settings.apply(['cropSize'])


@pytest.mark.parametrize('value', ['0,a', '-1', '0,0', '', '1.5'])
def test_malformed_gpu_devices(value):
    with pytest.raises(distribute.DeviceConfigError, match='gpu_devices'):
        distribute.parse_gpu_devices(value)


def test_gpu_devices_parse():
    assert distribute.parse_gpu_devices(' 0, 1 ,3') == [0, 1, 3]


def test_strategy_kind():
    assert distribute.strategy_kind() == 'default'
    config.multi_gpu_enabled = True
    assert distribute.strategy_kind() == 'mirrored'
    config.distribution = 'ring'
    with pytest.raises(distribute.DeviceConfigError, match='distribution'):
        distribute.strategy_kind()


STRATEGY_PROBE = """
import json, sys
from utils import settings
settings.apply(sys.argv[1:])
import config
s = config.strategy
print(json.dumps({'kind': type(s).__name__, 'replicas': s.num_replicas_in_sync,
                  'global': config.global_batch_size, 'mtl': config.mtl_global_batch_size}))
"""


def probe(*sets):
    result = run_python(['-c', STRATEGY_PROBE, *sets], timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_default_strategy_in_a_fresh_process():
    out = probe('batch_size=3')
    assert out == {'kind': '_DefaultDistributionStrategy', 'replicas': 1, 'global': 3, 'mtl': 3}


def test_mirrored_strategy_on_two_cpu_replicas():
    out = probe('multi_gpu_enabled=True', 'cpu_replicas=2', 'batch_size=3', 'mtl_batchSize=5')
    assert out == {'kind': 'MirroredStrategy', 'replicas': 2, 'global': 6, 'mtl': 10}


def test_one_device_asked_to_mirror_warns_and_continues():
    result = run_python(['-c', STRATEGY_PROBE, 'multi_gpu_enabled=True'], timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'only one device is visible' in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])['replicas'] == 1


class FakeConfig:
    """Stands in for tf.config: records which GPUs were made visible."""

    def __init__(self):
        self.visible, self.growth = None, []
        self.experimental = self

    def set_visible_devices(self, devices, kind):
        self.visible = (list(devices), kind)

    def set_memory_growth(self, device, flag):
        self.growth.append((device, flag))


class FakeTF:
    def __init__(self):
        self.config = FakeConfig()


def test_gpu_selection_on_a_machine_with_two_gpus():
    gpus = ['GPU:0', 'GPU:1']
    config.multi_gpu_enabled, config.gpu_devices = True, '1,0'
    tf = FakeTF()
    distribute._select_gpus(tf, gpus)
    assert tf.config.visible == (['GPU:1', 'GPU:0'], 'GPU')
    config.multi_gpu_enabled = False            # one GPU: the first listed
    distribute._select_gpus(tf, gpus)
    assert tf.config.visible == (['GPU:1'], 'GPU')
    config.multi_gpu_enabled, config.gpu_devices = True, '0,1,2'
    with pytest.raises(distribute.DeviceConfigError,
                       match=r"asks for GPU 2, but only 2 GPU\(s\) are visible"):
        distribute._select_gpus(tf, gpus)
