"""config.py, --set overrides and the strategy the device settings build."""
import json
import os
import re

import pytest

import config
from conftest import ROOT, run_python
from utils import distribute, rules, settings
from utils.errors import SettingError


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
    assert config.predict_stride == 256 // 3
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


def test_gpu_devices_parse():
    assert distribute.parse_gpu_devices(' 0, 1 ,3') == [0, 1, 3]


def test_strategy_kind(monkeypatch):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    assert distribute.strategy_kind(config) == 'default'
    config.multi_gpu_enabled = True
    assert distribute.strategy_kind(config) == 'mirrored'
    monkeypatch.setenv('TF_CONFIG', '{"cluster": {"worker": ["localhost:1"]}}')
    assert distribute.strategy_kind(config) == 'multi_worker'


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
    assert result.stderr.splitlines()[-1] == (
        "warning: multi_gpu_enabled = True but no GPU is visible (CUDA_VISIBLE_DEVICES=''): "
        "training continues on one replica on CPU:0. Check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES, or set cpu_replicas = 2 to try two replicas on the CPU.")
    assert json.loads(result.stdout.strip().splitlines()[-1])['replicas'] == 1


# The device rule (distribute.device_plan) on machines with 0, 1 and 2 GPUs:
# settings, GPUs visible -> where, ids, replicas, what the note says and
# how the warning starts (None: no warning).
PLANS = [
    # cpu_replicas means logical CPUs, GPUs or not: one GPU never stands in for two
    ({'multi_gpu_enabled': True, 'cpu_replicas': 2}, 1, 'CPU', [0, 1], 2,
     "2 replicas on logical CPU devices (cpu_replicas = 2); the 1 visible GPU(s) are "
     "hidden from this process (CUDA_VISIBLE_DEVICES unset)", None),
    ({'multi_gpu_enabled': True, 'cpu_replicas': 2}, 0, 'CPU', [0, 1], 2,
     "2 replicas on logical CPU devices (cpu_replicas = 2)", None),
    ({'multi_gpu_enabled': True, 'gpu_devices': '1,0'}, 2, 'GPU', [1, 0], 2,
     "GPU 1, 0 (multi_gpu_enabled = True: every GPU of gpu_devices = '1,0'; "
     "CUDA_VISIBLE_DEVICES unset), memory growth on", None),
    ({'gpu_devices': '1,0'}, 2, 'GPU', [1], 1,
     "GPU 1 (multi_gpu_enabled = False: the first GPU of gpu_devices = '1,0'", None),
    # forced 'mirrored' on one GPU: no claim that multi_gpu_enabled is True
    ({'distribution': 'mirrored', 'gpu_devices': '0,1'}, 2, 'GPU', [0], 1,
     "distribution = 'mirrored' with multi_gpu_enabled = False: MirroredStrategy on "
     "this one GPU", None),
    ({'distribution': 'mirrored'}, 0, 'CPU', [0], 1, "one replica on CPU:0 (no GPU visible", None),
    ({'multi_gpu_enabled': True}, 1, 'GPU', [0], 1,
     "GPU 0 (multi_gpu_enabled = True: every GPU of gpu_devices = '0'",
     "multi_gpu_enabled = True but gpu_devices = '0' lists one GPU"),
    ({'multi_gpu_enabled': True}, 0, 'CPU', [0], 1, "one replica on CPU:0",
     "multi_gpu_enabled = True but no GPU is visible (CUDA_VISIBLE_DEVICES unset)"),
    ({'cpu_replicas': 2}, 0, 'CPU', [0], 1, "one replica on CPU:0",
     "cpu_replicas = 2 has no effect while multi_gpu_enabled = False"),
    ({'cpu_replicas': 2, 'distribution': 'default', 'multi_gpu_enabled': True}, 1, 'GPU',
     [0], 1, "GPU 0", "cpu_replicas = 2 has no effect while distribution = 'default'"),
]


@pytest.mark.parametrize('sets,gpus,where,ids,replicas,note,warning', PLANS)
def test_device_rule(monkeypatch, sets, gpus, where, ids, replicas, note, warning):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    for key, value in sets.items():
        setattr(config, key, value)
    plan = distribute.device_plan(config, gpus)
    assert (plan.where, plan.ids, plan.replicas) == (where, ids, replicas)
    assert note in plan.note
    assert plan.warning is None if warning is None else plan.warning.startswith(warning)


def test_device_rule_names_cuda_visible_devices_with_gpu_devices(monkeypatch):
    """gpu_devices counts the GPUs CUDA_VISIBLE_DEVICES leaves: the error says both."""
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '2,3')
    config.multi_gpu_enabled, config.gpu_devices = True, '0,1,2'
    with pytest.raises(distribute.DeviceConfigError, match=re.escape(
            "gpu_devices = '0,1,2' asks for GPU 2, but this process sees 2 GPU(s), ids 0..1 "
            "(CUDA_VISIBLE_DEVICES='2,3'; gpu_devices counts the GPUs it leaves visible). "
            "Set gpu_devices to ids below 2.")):
        distribute.device_plan(config, 2)
    monkeypatch.setenv('TF_CONFIG', '{"cluster": {"worker": ["localhost:1"]}}')
    config.cpu_replicas = 2
    plan = distribute.device_plan(config, 0)
    assert plan.kind == 'multi_worker' and plan.replicas is None
    assert plan.warning.startswith(
        "cpu_replicas = 2 has no effect while distribution = 'multi_worker' (TF_CONFIG is set)")


# ----------------------------------------------------------------- the rules
# One value per rule that breaks it (the boundaries where there are some).
# Settings whose only rule is their type (True/False, a string) are covered
# by test_every_setting_rejects_a_value_of_the_wrong_type.
BAD = [
    ('gpu_devices', '0,a'), ('gpu_devices', '0,0'), ('gpu_devices', '-1'),
    ('gpu_devices', ''), ('gpu_devices', '1.5'), ('gpu_devices', True),
    ('cpu_replicas', -1), ('distribution', 'ring'), ('mixed_precision', 'float16'),
    ('steps_per_execution', 0), ('seed', -1), ('dataset_name', ' '),
    ('cropSize', 100), ('cropSize', 0), ('cropSize', 320.0), ('batch_size', 0),
    ('label_codes', [1, 1]), ('label_codes', []), ('label_codes', [(255, 0, 0), 3]),
    ('label_codes', [(256, 0, 0)]), ('label_codes', [(255, 0)]),
    ('image_scale', 0), ('image_scale', -4095), ('image_scale', 'bits'),
    # The synthetic codes are 0..5: a class, a colour, a fraction, a word.
    ('unlabelled_code', 5), ('unlabelled_code', (0, 0, 0)), ('unlabelled_code', 255.0),
    ('unlabelled_code', 'auto'), ('unlabelled_code', [255]),
    ('roof_height_threshold', -1), ('canny_lt', -1), ('canny_ht', 12.5),
    ('backbone_weights', 'resnet'), ('backbone_weights', 'weights.npz'),
    ('mtl_decoder_scale', 0), ('dae_width_scale', -0.5), ('mtl_head_mode', 'foo'),
    ('dropout_rate', 1.0), ('dropout_rate', -0.1), ('bn_momentum', 1.5),
    ('w1', -1), ('w2', float('nan')), ('w3', -1e-9), ('w4', -2),
    ('reg_loss', 'mae'), ('huber_delta', 0),
    ('mtl_lr', 0), ('dae_lr', -1e-4), ('mtl_beta_1', 1.0), ('dae_beta_1', -0.1),
    ('adam_epsilon', 0), ('mtl_batchSize', 0), ('dae_batchSize', -2),
    ('mtl_numEpochs', 0), ('dae_numEpochs', 0), ('mtl_training_samples', 0),
    ('dae_training_samples', 0), ('preload_max_gb', -1),
    ('early_stop_patience', 0), ('early_stop_delta', -0.1), ('eval_metric', 'accuracy'),
    ('checkpoint_every', 0), ('max_steps', -1),
    ('test_stride', 0), ('test_stride', 97),     # the synthetic crop is 96
    ('valid_stride', 0), ('valid_stride', 97),
    ('test_batch_size', 0), ('test_plot_images', -1),
    ('mtl_init_weights', 'best.h5'), ('dae_init_weights', 'checkpoints/dae'),
    ('predict_stride', 0), ('predict_stride', 97), ('predict_window', 'cosine'),
    ('predict_flips', 0), ('predict_flips', 9), ('predict_flips', 2.0),
    ('predict_uncertainty', 'mc_dropout'),      # not offered (README, Uncertainty)
    ('predict_precision', 'float16'),           # not offered (README, Engines)
]
# Values on the edge of a rule, which must pass.
GOOD = [
    ('gpu_devices', ' 1, 0'), ('gpu_devices', 3), ('cpu_replicas', 0), ('seed', 0),
    ('cropSize', 32), ('label_codes', [(0, 0, 0)]), ('label_codes', [0, 1]),
    ('image_scale', 'minmax'), ('image_scale', 4095), ('image_scale', 0.5),
    ('unlabelled_code', None), ('unlabelled_code', 6), ('unlabelled_code', -1),
    ('backbone_weights', None), ('backbone_weights', 'imagenet'),
    ('backbone_weights', '/data/densenet.weights.h5'), ('dropout_rate', 0.0),
    ('bn_momentum', 1), ('w2', 0), ('mtl_beta_1', 0), ('max_steps', 0),
    ('test_stride', 96), ('test_plot_images', 0), ('eval_metric', 'delta1'),
    ('mixed_precision', 'mixed_float16'), ('roof_height_threshold', 2.5),
    ('mtl_init_weights', 'runs/mtl/best.weights.h5'), ('dae_init_weights', None),
    ('predict_stride', 96), ('predict_stride', 1), ('predict_window', 'flat'),
    ('predict_flips', 1), ('predict_flips', 8), ('predict_uncertainty', 'off'),
    ('predict_precision', 'bfloat16'), ('predict_precision', 'int8'),
]


def broken_rule(name, value):
    setattr(config, name, value)
    with pytest.raises(SettingError) as err:
        settings.check()
    return str(err.value)


@pytest.mark.parametrize('name,value', BAD)
def test_a_value_that_breaks_its_rule_is_named(name, value):
    message = broken_rule(name, value)
    assert message.startswith(f"{name} = {value!r}: use ")
    assert message.endswith(settings.rule(name).allowed) and '\n' not in message


@pytest.mark.parametrize('name,value', GOOD)
def test_a_value_on_the_edge_of_its_rule_passes(name, value):
    settings.override(name, value)      # as --set would: derived settings follow
    settings.check()


def test_every_setting_rejects_a_value_of_the_wrong_type():
    for name in settings.names():
        saved = getattr(config, name)
        assert broken_rule(name, object()).startswith(f"{name} = <object"), name
        setattr(config, name, saved)


def test_every_rule_beyond_a_type_has_a_bad_value_in_the_table():
    typed_only = {n for n in settings.names() if settings.rule(n) in rules.TYPES.values()}
    assert set(settings.names()) - typed_only == {n for n, _ in BAD}
    assert typed_only and all(isinstance(getattr(config, n), (bool, str)) for n in typed_only)


def test_segmentation_metrics_need_the_semantic_head():
    config.eval_metric = 'miou'
    settings.check()
    config.sem_flag = False
    assert broken_rule('eval_metric', 'miou').startswith("eval_metric = 'miou': use ")
    assert 'sem_flag = True' in broken_rule('eval_metric', 'oa')


@pytest.mark.parametrize('value', ['{"cluster": ', '["worker"]', 'hostA:12345'])
def test_malformed_tf_config_is_named(monkeypatch, value):
    monkeypatch.setenv('TF_CONFIG', value)
    with pytest.raises(SettingError, match=re.escape(f"TF_CONFIG = {value!r}: use ")):
        settings.check()


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    config.distribution = 'multi_worker'
    with pytest.raises(SettingError, match="TF_CONFIG = None: .*'multi_worker' needs it"):
        settings.check()
    monkeypatch.setenv('TF_CONFIG', '{"cluster": {"worker": ["localhost:1"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    settings.check()


@pytest.mark.parametrize('name', [*config.DATASETS, 'DFC2019_crp256_bin', 'DFC2018_bin',
                                  'Vaihingen_bin', 'MyCity'])
@pytest.mark.parametrize('sar', [False, True])
def test_published_defaults_of_every_dataset_pass_the_rules(name, sar):
    settings.apply([f'dataset_name={name}', f'sar_mode={sar}'])
    assert config.cropSize == config.dataset_settings(name)['cropSize']
    settings.check()


def test_parse_args_exits_1_for_a_rule_and_2_for_a_malformed_set(capsys):
    with pytest.raises(SystemExit) as end:
        settings.parse_args(settings.parser('t'), ['--set', 'reg_loss=mae'])
    assert end.value.code == 1
    assert capsys.readouterr().err == "error: reg_loss = 'mae': use 'mse' or 'huber'\n"
    for malformed in ('reg_loss', 'regloss=mse', 'cropSize=big'):
        with pytest.raises(SystemExit) as end:
            settings.parse_args(settings.parser('t'), ['--set', malformed])
        assert end.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and err.count('\n') == 1


def test_set_reads_text_as_the_kind_its_rule_takes():
    settings.apply(['label_codes=[(0, 0, 0), [255, 255, 255]]', 'canny_lt=20', 'w1=3',
                    'mtl_head_mode=full', 'gpu_devices=1', 'image_scale=4095'])
    assert config.image_scale == 4095
    settings.apply(['image_scale=minmax'])
    assert config.image_scale == 'minmax'
    assert config.label_codes == [(0, 0, 0), (255, 255, 255)]
    assert config.canny_lt == 20 and isinstance(config.canny_lt, int)
    assert config.w1 == 3.0 and isinstance(config.w1, float)
    assert config.mtl_head_mode == 'full' and config.gpu_devices == '1'
    with pytest.raises(SettingError, match=r'expected a multiple of 32 >= 32'):
        settings.apply(['cropSize=1e3'])


# ----------------------------------------------------------------- None and 'auto'
@pytest.mark.parametrize('order', [
    ['backbone_weights=None', 'dataset_name=Vaihingen'],
    ['dataset_name=Vaihingen', 'backbone_weights=None'],
])
def test_backbone_weights_none_is_random_init_on_every_dataset(order):
    settings.apply(order)
    assert config.backbone_weights is None
    for name in config.DATASETS:
        settings.apply([f'dataset_name={name}'])
        assert config.backbone_weights is None, name
    settings.apply(['dataset_name=Vaihingen', 'backbone_weights=auto'])  # asks the dataset
    assert config.backbone_weights == 'imagenet'
    settings.apply(['dataset_name=synthetic'])
    assert config.backbone_weights is None


# The value of unlabelled pixels per dataset, as the issue and the benchmarks'
# documentation give it; DFC2019's 65 stays a class, as published.
UNLABELLED = {'Vaihingen': (0, 0, 0), 'Vaihingen_crp256': (0, 0, 0), 'DFC2018': 0,
              'DFC2019_crp256': None, 'DFC2019_crp512': None, 'DFC2023': None,
              'synthetic': None, 'DFC2019_crp256_bin': None, 'DFC2018_bin': None,
              'MyCity': None}


def test_unlabelled_code_of_every_dataset():
    assert set(config.DATASETS) <= set(UNLABELLED)
    for name, value in UNLABELLED.items():
        settings.apply([f'dataset_name={name}'])
        assert config.unlabelled_code == value, name
    assert 65 in config.dataset_settings('DFC2019_crp256')['label_codes']


@pytest.mark.parametrize('order', [
    ['unlabelled_code=None', 'dataset_name=DFC2018'],
    ['dataset_name=DFC2018', 'unlabelled_code=None'],
])
def test_unlabelled_code_none_and_auto(order):
    settings.apply(order)
    assert config.unlabelled_code is None
    settings.apply(['unlabelled_code=auto'])
    assert config.unlabelled_code == 0
    settings.apply(['dataset_name=Vaihingen'])
    assert config.unlabelled_code == (0, 0, 0)
    settings.check()


def test_unlabelled_code_is_read_like_label_codes_and_checked_against_them():
    settings.apply(['dataset_name=Vaihingen', 'unlabelled_code=[12, 34, 56]'])
    assert config.unlabelled_code == (12, 34, 56)
    settings.check()
    # Black made a class: the dataset's unlabelled black now breaks the rule ...
    settings.apply(['label_codes=[(0, 0, 0), (255, 255, 255)]'])
    assert broken_rule('unlabelled_code', (0, 0, 0)).startswith(
        'unlabelled_code = (0, 0, 0): use None, ')
    settings.apply(['unlabelled_code=None'])     # ... until the user says there is none
    settings.check()
    settings.apply(['dataset_name=MyCity', 'label_codes=[1, 2]', 'unlabelled_code=0'])
    assert config.unlabelled_code == 0
    settings.check()
    assert 'unlabelled_code' in config.__all__      # from config import * gives it


def test_a_star_import_gives_what_a_script_reads_of_config_and_not_its_imports():
    namespace = {}
    exec('from config import *', namespace)
    given = set(namespace) - {'__builtins__'}
    assert set(settings.names()) <= given
    # the dataset's facts, the tables and helpers users' scripts read, the computed names
    assert {'layout', 'folders', 'building_codes', 'DATASETS', 'PUBLISHED', 'VAIHINGEN_CODES',
            'BEST_WEIGHTS', 'LAST_WEIGHTS', 'CROP_MULTIPLE', 'dataset_settings',
            'trained_weights', 'global_batch_size'} <= set(config.__all__)
    assert namespace['building_codes'] == [1] and namespace['layout'] == 'split_folders'
    # not the modules and rule words config.py imports
    assert not {'json', 'os', 'sys', 'types', 'Literal', 'whole', 'number', 'Rule',
                'class_codes'} & set(config.__all__)


def test_backbone_weights_none_written_in_config_py_is_kept():
    config.declared['backbone_weights'] = None      # as config.py would declare it
    config.declared['dataset_name'] = 'Vaihingen'
    config.dataset_name = 'Vaihingen'
    config.resolve()
    assert config.backbone_weights is None and config.cropSize == 320


def test_no_download_with_backbone_weights_none(monkeypatch):
    """The MTL built from config on a real dataset with None asks Keras for no file;
    with 'auto' it does (so the patched function is the one Keras calls)."""
    from keras.src.utils import file_utils
    from nets import mtl
    from utils.model import networks
    downloads = []

    def no_download(fname, *args, **kwargs):
        downloads.append(fname)
        raise OSError('offline')
    monkeypatch.setattr(file_utils, 'get_file', no_download)
    settings.apply(['backbone_weights=None', 'dataset_name=Vaihingen', 'cropSize=32',
                    'mtl_decoder_scale=0.0625'])
    model = networks.build_mtl(config)
    assert downloads == [] and model.count_params() > 7e6
    settings.apply(['backbone_weights=auto'])
    with pytest.raises(mtl.BackboneWeightsError):
        networks.build_mtl(config)
    assert downloads == [mtl.DENSENET_FILE]


# ----------------------------------------------------------------- import cost, seed scripts
def test_reading_settings_does_not_start_tensorflow():
    code = ("import sys\nimport config\nfrom utils import settings\n"
            "settings.parse_args(settings.parser('t'), ['--set', 'cropSize=64'])\n"
            "print(config.cropSize, config.test_stride, 'tensorflow' in sys.modules)\n")
    result = run_python(['-c', code], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['64', str(64 // 6), 'False']


def test_rules_are_checked_before_the_strategy_without_a_parser():
    code = ("import sys\nimport config\nfrom utils.errors import SettingError\n"
            "config.mtl_head_mode = 'foo'\n"
            "try:\n    config.strategy\nexcept SettingError as err:\n"
            "    print(err, 'tensorflow' in sys.modules)\n")
    result = run_python(['-c', code], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "mtl_head_mode = 'foo': use 'dsm' or 'full' False"


# A script as written against the original multi-GPU config.py: every name
# from `from config import *`, then a model and an optimizer in the scope.
SEED_SCRIPT = """
import json
import sys

from utils import settings
settings.parse_args(settings.parser('seed'), sys.argv[1:])

from config import *
import keras
import tensorflow as tf

import config
assert config.strategy is strategy                 # built once
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    optimizer = keras.optimizers.SGD(0.1)


@tf.function
def step(batch):
    def replica_step(x):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(tf.reduce_sum(model(x) ** 2, axis=1),
                                              global_batch_size=global_batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return tf.shape(x)[0]
    return strategy.run(replica_step, (batch,))


data = tf.data.Dataset.from_tensors(tf.ones((global_batch_size, 4)))
counts = step(next(iter(strategy.experimental_distribute_dataset(data))))
print(json.dumps({
    'replicas': strategy.num_replicas_in_sync, 'multi_gpu_enabled': multi_gpu_enabled,
    'gpu_devices': gpu_devices, 'batch_size': batch_size,
    'mtl_batchSize': mtl_batchSize, 'dae_batchSize': dae_batchSize,
    'global_batch_size': global_batch_size, 'mtl_global_batch_size': mtl_global_batch_size,
    'dae_global_batch_size': dae_global_batch_size,
    'counts': [int(c) for c in strategy.experimental_local_results(counts)]}))
"""


@pytest.mark.parametrize('edited,sets,replicas', [
    (False, [], 1),
    pytest.param(True, [], 2, marks=pytest.mark.slow),
    pytest.param(True, ['--set', 'batch_size=3', '--set', 'dae_batchSize=5'], 2,
                 marks=pytest.mark.slow),
])
def test_seed_style_script(tmp_path, edited, sets, replicas):
    """`from config import *` gives every setting, the strategy and the global
    batch sizes, computed after --set; on 2 replicas with config.py edited to
    multi_gpu_enabled = True and cpu_replicas = 2 (a copy first on the path)."""
    script = tmp_path / 'seed.py'
    script.write_text(SEED_SCRIPT)
    if edited:
        text = open(os.path.join(ROOT, 'config.py')).read()
        text, n1 = re.subn(r'^(multi_gpu_enabled\b.*? = )False', r'\1True', text, flags=re.M)
        text, n2 = re.subn(r'^(cpu_replicas\b.*? = )0', r'\g<1>2', text, flags=re.M)
        assert n1 == n2 == 1
        (tmp_path / 'config.py').write_text(text)   # the script's folder comes first
    result = run_python([str(script), *sets], timeout=300, env={'PYTHONPATH': ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    per_replica = 3 if sets else config.dataset_settings('synthetic')['batch_size']
    dae = 5 if sets else per_replica
    assert out['replicas'] == replicas and out['multi_gpu_enabled'] is edited
    assert out['gpu_devices'] == '0'
    assert out['batch_size'] == out['mtl_batchSize'] == per_replica
    assert out['dae_batchSize'] == dae
    assert out['global_batch_size'] == out['mtl_global_batch_size'] == per_replica * replicas
    assert out['dae_global_batch_size'] == dae * replicas
    assert out['counts'] == [per_replica] * replicas    # each replica its own share


def test_settings_are_frozen_and_replace_resolves_and_checks():
    s = settings.current()
    with pytest.raises(AttributeError, match='frozen'):
        s.cropSize = 64
    with pytest.raises(SettingError, match=r'cropSize = 100: use a multiple of 32'):
        s.replace(cropSize=100)
    with pytest.raises(SettingError, match="unknown setting 'cropsize'"):
        s.replace(cropsize=64)
    v = s.replace(dataset_name='Vaihingen')     # its published crop, and what derives from it
    assert (v.cropSize, v.test_stride, v.layout) == (320, 320 // 6, 'vaihingen')
    assert (s.cropSize, config.cropSize, config.dataset_name) == (96, 96, 'synthetic')
