"""Shared fixtures: every test starts from config.py's own values."""
import copy
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import config  # noqa: E402
from utils import settings  # noqa: E402

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


def run_python(args, timeout=600, env=None, cwd=ROOT):
    """Run `python args...` in a fresh process (its own device configuration)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
    return subprocess.run([sys.executable] + list(args), cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# Tiny settings on the built-in synthetic dataset: 32 px crops, 1/16 widths.
TINY = ['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
        'test_stride=32', 'valid_stride=32', 'backbone_weights=None', 'plot_metrics=False',
        'plot_train_error=False']


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """The synthetic dataset, generated once per test run: pytest-xdist's
    workers share it (under the run's common temporary folder, one at a time)."""
    import fcntl
    from utils import datasets
    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        base = base.parent
    root = base / 'shared_datasets'
    with open(base / 'shared_datasets.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved, config.shortcut_path = config.shortcut_path, str(root)
        try:
            datasets.find_split('train')     # generates it unless complete
        finally:
            config.shortcut_path = saved
    return str(root)


@pytest.fixture(scope='session')
def tiny_trained(tmp_path_factory, synthetic_root):
    """A tiny MTL, then a DAE on it, each trained 2 steps by train_mtl.main()
    and train_dae.main() in this process. Tests using it carry
    @pytest.mark.xdist_group('tiny_trained'), so one worker trains them."""
    import types
    import train_dae
    import train_mtl
    ckpt = tmp_path_factory.mktemp('tiny_trained')
    sets = TINY + [f'shortcut_path={synthetic_root}', f'checkpoint_root={ckpt}',
                   f'output_root={ckpt / "output"}', 'batch_size=4', 'max_steps=2']
    settings.apply(sets)
    try:
        mtl = train_mtl.main()
        dae = train_dae.main()
        trained = types.SimpleNamespace(
            sets=sets, checkpoint_root=ckpt, mtl_weights=config.predCheckPointPath,
            dae_weights=config.corrCheckPointPath, mtl_step=int(mtl.step.numpy()),
            dae_step=int(dae.step.numpy()), mtl_history=mtl.history, dae_history=dae.history)
    finally:
        restore_config()
    return trained
