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


@pytest.fixture(autouse=True)
def fresh_config():
    """Undo any setting a test changed (the strategy itself stays cached)."""
    yield
    for key, value in _ORIGINAL.items():
        setattr(config, key, copy.deepcopy(value))
    config.declared.update(copy.deepcopy(_ORIGINAL_DECLARED))
    config.resolve()


def run_python(args, timeout=600, env=None, cwd=ROOT):
    """Run `python args...` in a fresh process (its own device configuration)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
    return subprocess.run([sys.executable] + list(args), cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# Tiny settings on the built-in synthetic dataset: 32 px crops, 1/16 widths.
TINY = ['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
        'test_stride=32', 'backbone_weights=None', 'plot_metrics=False',
        'plot_train_error=False']


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """The synthetic dataset, generated once for every run in this session."""
    from utils import datasets
    root = str(tmp_path_factory.mktemp('datasets'))
    saved, config.shortcut_path = config.shortcut_path, root
    datasets.find_split('train')     # generates it
    config.shortcut_path = saved
    return root
