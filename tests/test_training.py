"""Data-parallel training: the proof that the batch is really split and the
loss really scaled is that 2 replicas apply the same updates as 1."""
import os

import numpy as np
import pytest

from conftest import ROOT, run_python

REPLICA_RUN = os.path.join(ROOT, 'tests', 'replica_run.py')


def replica_run(tmp_path, stage, replicas, steps=3):
    out = tmp_path / f'{stage}_{replicas}.npz'
    sets = ['batch_size=8'] if replicas == 1 else \
        [f'batch_size={8 // replicas}', 'multi_gpu_enabled=True', f'cpu_replicas={replicas}']
    result = run_python([REPLICA_RUN, str(out), stage, str(steps), *sets])
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out))


def weights(run, prefix='w_'):
    return [run[k] for k in sorted((k for k in run if k.startswith(prefix)),
                                   key=lambda k: int(k[len(prefix):]))]


@pytest.mark.parametrize('stage', ['mtl', 'dae'])
def test_two_replicas_apply_the_same_updates_as_one(tmp_path, stage):
    one, two = replica_run(tmp_path, stage, 1), replica_run(tmp_path, stage, 2)
    assert int(one['replicas']) == 1 and int(two['replicas']) == 2
    assert two['counts'].tolist() == [[4, 4]] * 3     # each replica saw half of each batch
    assert one['counts'].tolist() == [[8]] * 3
    assert int(one['iterations']) == int(two['iterations']) == 3
    for a, b in zip(weights(one, 'init_'), weights(two, 'init_')):
        np.testing.assert_array_equal(a, b)          # same start
    np.testing.assert_allclose(one['losses'], two['losses'], rtol=1e-4)
    norm = np.linalg.norm
    for a, b in zip(weights(one), weights(two)):
        assert norm(a - b) <= 1e-4 * norm(a)          # the same weights
    # And the same updates: a loss averaged per replica instead of over the
    # global batch would double every step (replica_run makes Adam linear).
    start = weights(one, 'init_')
    update_one = np.concatenate([(a - s).ravel() for a, s in zip(weights(one), start)])
    update_two = np.concatenate([(b - s).ravel() for b, s in zip(weights(two), start)])
    assert norm(update_one) > 1e-2 * norm(np.concatenate([s.ravel() for s in start]))
    assert norm(update_one - update_two) < 1e-4 * norm(update_one)
