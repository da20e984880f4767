"""Shared fixtures: every test starts from config.py's own values.

The suite runs on the CPU on every machine: its tolerances are derived for
float32 CPU arithmetic, and its replica tests split the CPU (cpu_replicas).
GPUs are hidden from pytest and every process it starts (CUDA_VISIBLE_DEVICES
empty), except in the `gpu` tier (tests/test_gpu.py), which runs where GPUs
are visible and is skipped with its reason elsewhere.
"""
import copy
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _visible_gpus():
    """How many NVIDIA GPUs the user's environment shows (the driver's list,
    narrowed by CUDA_VISIBLE_DEVICES), found without importing TensorFlow in
    the pytest process: that takes seconds, and then fixes its devices."""
    found = len(glob.glob('/proc/driver/nvidia/gpus/*'))
    if not found and shutil.which('nvidia-smi'):
        listed = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True)
        found = sum(line.startswith('GPU ') for line in listed.stdout.splitlines())
    chosen = os.environ.get('CUDA_VISIBLE_DEVICES')
    if chosen is not None:
        found = min(found, len([d for d in chosen.split(',') if d.strip() not in ('', '-1')]))
    return found


# The user's CUDA_VISIBLE_DEVICES (None: unset), for the gpu tier; then hidden.
USER_CUDA_VISIBLE_DEVICES = os.environ.get('CUDA_VISIBLE_DEVICES')
GPUS = _visible_gpus()
os.environ['CUDA_VISIBLE_DEVICES'] = ''


def gpu_env():
    """The environment of a gpu-tier subprocess: the user's GPUs visible again."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    env.pop('CUDA_VISIBLE_DEVICES')
    if USER_CUDA_VISIBLE_DEVICES is not None:
        env['CUDA_VISIBLE_DEVICES'] = USER_CUDA_VISIBLE_DEVICES
    return env

import config  # noqa: E402
from utils import distribute, settings  # noqa: E402

if os.environ.get('PYTEST_XDIST_WORKER'):   # not xdist's controller, which runs no test
    distribute.start_tensorflow()   # as the scripts start it (without scikit-learn)

_ORIGINAL = {k: copy.deepcopy(getattr(config, k)) for k in settings.names()}
_ORIGINAL_DECLARED = copy.deepcopy(config.declared)


def restore_config():
    for key, value in _ORIGINAL.items():
        setattr(config, key, copy.deepcopy(value))
    config.declared.update(copy.deepcopy(_ORIGINAL_DECLARED))
    config.resolve()


@pytest.fixture(autouse=True)
def fresh_config():
    """Undo any setting a test changed (the strategy itself stays cached)."""
    yield
    restore_config()


STAND_IN = os.path.join(ROOT, 'tests', 'stand_in.py')


def run_python(args, timeout=600, env=None, cwd=ROOT, gpus=False, stand_in=False):
    """Run `python args...` in a fresh process (its own device configuration;
    GPUs hidden unless `gpus`); with `stand_in` the script's MTL is built on
    tests/stand_in.py's encoder."""
    args = [STAND_IN, *args] if stand_in else list(args)
    full_env = dict(gpu_env() if gpus else os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
    return subprocess.run([sys.executable] + args, cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# Tiny settings on the built-in synthetic dataset: 32 px crops, 1/16 widths;
# test_dsm.py without the height uncertainty's two passes at predict_stride
# (the main job, tests/test_run_train_test.py, measures it).
TINY = ['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
        'test_stride=32', 'valid_stride=32', 'backbone_weights=None', 'plot_metrics=False',
        'plot_train_error=False', 'predict_uncertainty=off']


# predict.py's tests: tiny networks (1/16 widths) on 32 px windows;
# test_stride 10 overlaps them.
PREDICT_TINY = ['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
                'backbone_weights=None', 'dropout_rate=0', 'test_stride=10',
                'predict_stride=10', 'test_batch_size=3']


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """Tiny MTL and DAE weights files (PREDICT_TINY) with their .json, and the networks."""
    import keras
    from utils.model import networks, weights as weights_file
    folder = tmp_path_factory.mktemp('weights')
    settings.apply(PREDICT_TINY)
    cfg = settings.current()
    keras.utils.set_random_seed(3)
    mtl = networks.build_mtl(cfg, pretrained=False)
    dae = networks.build_dae(cfg)
    paths = {'mtl': str(folder / 'mtl.weights.h5'), 'dae': str(folder / 'dae.weights.h5')}
    weights_file.save(mtl, paths['mtl'], 'mtl', cfg)
    weights_file.save(dae, paths['dae'], 'dae', cfg)
    return dict(paths, models=(mtl, dae))


def _shared(tmp_path_factory, name):
    """A folder all pytest-xdist workers of this run share, and a lock on it:
    the first worker to take the lock makes the content, the others find it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        base = base.parent
    return base / name, open(base / f'{name}.lock', 'w')


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """The synthetic dataset, generated once per test run."""
    import fcntl
    from utils.data.layouts import find_split
    root, lock = _shared(tmp_path_factory, 'shared_datasets')
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        find_split(settings.current().replace(shortcut_path=str(root)), 'train')  # generates
    return str(root)


@pytest.fixture(scope='session')
def tiny_trained(tmp_path_factory, synthetic_root):
    """A tiny MTL on the stand-in encoder (tests/stand_in.py; its users build
    it too), then a DAE on it, each trained 2 steps by train_mtl.main() and
    train_dae.main(), once per test run: the worker that comes first
    trains them and writes trained.json; the others read it (pytest-xdist
    groups cannot be relied on to keep the tests on one worker)."""
    import fcntl
    import json
    import types
    ckpt, lock = _shared(tmp_path_factory, 'tiny_trained')
    summary = ckpt / 'trained.json'
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not summary.exists():
            import train_dae
            import train_mtl
            from stand_in import small_encoder
            sets = TINY + [f'shortcut_path={synthetic_root}', f'checkpoint_root={ckpt}',
                           f'output_root={ckpt / "output"}', 'batch_size=4', 'max_steps=2']
            settings.apply(sets)
            try:
                with small_encoder():
                    mtl = train_mtl.main()      # their training loops
                    dae = train_dae.main()
                trained = dict(
                    sets=sets, mtl_weights=config.predCheckPointPath,
                    dae_weights=config.corrCheckPointPath,
                    mtl_step=mtl.steps_done(), dae_step=dae.steps_done(),
                    mtl_history=mtl.history, dae_history=dae.history)
            finally:
                restore_config()
            summary.write_text(json.dumps(trained))
    return types.SimpleNamespace(**json.loads(summary.read_text()))


# The modules of the longest tests (minutes each: the 2-replica main job,
# the multi-worker story, kill -9 resume), started first.
LONGEST = ('test_run_train_test', 'test_multi_worker', 'test_training')


def pytest_collection_modifyitems(config, items):
    """The modules of the longest tests first, then the other modules holding
    slow tests, each module's tests kept together and in their own order.
    pytest-xdist hands out tests in this order, so the minute-long
    TensorFlow processes start early and the run ends on short tests on
    every worker, not on one worker finishing a long one (or two queued)
    while the others have nothing left."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker('slow')}

    def order(item):
        name = item.module.__name__
        return (LONGEST.index(name) if name in LONGEST else len(LONGEST),
                name not in slow)
    items.sort(key=order)
    if not GPUS:
        why = ('no GPU visible: ' + ('CUDA_VISIBLE_DEVICES is empty'
                                    if USER_CUDA_VISIBLE_DEVICES is not None else
                                    'no NVIDIA driver lists one (nvidia-smi -L)'))
        for item in items:
            if item.get_closest_marker('gpu'):
                item.add_marker(pytest.mark.skip(reason=f'gpu tier, {why}'))
