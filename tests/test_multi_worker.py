"""Several machines: MultiWorkerMirroredStrategy over two local processes
(TF_CONFIG with loopback addresses), through the scripts a cluster runs,
on the stand-in encoder (tests/stand_in.py).

One story, as a cluster job goes: train_mtl.py on two workers against one
process on the same global batches; train_dae.py on two workers sharing the
run folder, a worker killed with kill -9 in the middle of an epoch, both
restarted, resuming from the last checkpoint; test_dsm.py on two workers
against one process.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import tensorflow as tf

from conftest import ROOT, STAND_IN, TINY, run_python
from test_training import FLOAT32_U, TERMS, assert_adam_step, depth

pytestmark = pytest.mark.slow


def cluster_envs():
    """The environments (TF_CONFIG) of workers 0 and 1 of a new two-worker
    cluster on free loopback ports."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            ports.append(s.getsockname()[1])
    cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
    return [dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1',
                 TF_CONFIG=json.dumps({'cluster': cluster,
                                       'task': {'type': 'worker', 'index': index}}))
            for index in range(2)]


def start_workers(tmp_path, name, args):
    """`python tests/stand_in.py args...` as workers 0 (the chief) and 1,
    their output in <name><index>.log."""
    workers = []
    for index, env in enumerate(cluster_envs()):
        log = open(tmp_path / f'{name}{index}.log', 'w+')
        workers.append((subprocess.Popen([sys.executable, STAND_IN, *args], cwd=ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, text=True), log))
    return workers


def finish(workers, timeout=600):
    """Each worker's output, once both ended well."""
    outputs = []
    for proc, log in workers:
        proc.wait(timeout=timeout)
        log.seek(0)
        outputs.append(log.read())
        assert proc.returncode == 0, outputs[-1][-3000:]
    return outputs


def trained_tolerance(run, magnitude):
    """export.height_tolerance of the stand-in MTL and DAE trained in `run`."""
    from stand_in import small_encoder
    from utils import settings
    from utils.model import networks
    from utils.model.weights import WeightsFile, adopt
    from utils.predict.export import height_tolerance
    settings.apply(TINY)
    files = [WeightsFile(str(run / stage / 'best.weights.h5'), stage) for stage in ('mtl', 'dae')]
    cfg = adopt(settings.current(), files)      # as predict.py and test_dsm.py do
    with small_encoder():
        models = [networks.trained(f, cfg, tf.distribute.get_strategy()) for f in files]
    return height_tolerance(models, magnitude)


def weights(run, prefix='w_'):
    return np.concatenate([run[k].ravel() for k in sorted(
        (k for k in run if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))])


def test_two_workers_train_resume_after_a_killed_worker_and_test(tmp_path, synthetic_root):
    # --------------------------------------------- train_mtl.py: 2 workers = 1 process
    # The (stand-in) encoder is frozen so its BatchNorm runs on fixed
    # statistics; decoder, our BN and the optimizer are compared.
    common = [f'shortcut_path={synthetic_root}', 'max_steps=1', 'mtl_bb_freeze=True',
              'dropout_rate=0', 'sync_batchnorm=True', 'deterministic=True'] + TINY
    train_run = os.path.join(ROOT, 'tests', 'train_run.py')
    workers = [subprocess.Popen(
        [sys.executable, train_run, str(tmp_path / f'worker{index}.npz'), *common,
         'batch_size=4', f'checkpoint_root={tmp_path / f"ckpt{index}"}'],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index, env in enumerate(cluster_envs())]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    single = run_python([train_run, str(tmp_path / 'single.npz'), *common, 'batch_size=8',
                         f'checkpoint_root={tmp_path / "single"}'])
    assert single.returncode == 0, single.stderr[-3000:]
    w0, w1, one = (dict(np.load(tmp_path / f)) for f in
                   ('worker0.npz', 'worker1.npz', 'single.npz'))
    assert int(w0['replicas']) == int(w1['replicas']) == 2 and int(one['replicas']) == 1
    assert int(w0['step']) == int(w1['step']) == int(one['step']) == 1
    np.testing.assert_array_equal(weights(w0), weights(w1))
    np.testing.assert_array_equal(weights(w0, 'init_'), weights(one, 'init_'))
    # One step of Adam, compared as test_training.assert_same_step compares
    # replicas (the weights themselves are not: where a gradient is rounding
    # noise Adam moves its weight by about +-lr either way): the all-reduced
    # gradient, (1 - beta_1) g = m, equal to rounding of the global batch's
    # sums over every layer, and each run's weights Adam's step on its own.
    g_two, g_one = weights(w0, 'm_'), weights(one, 'm_')
    tolerance = depth(one) * TERMS * FLOAT32_U
    assert tolerance < 0.5 and np.linalg.norm(g_one) > 0    # tells a doubled gradient
    assert np.linalg.norm(g_two - g_one) <= tolerance * np.linalg.norm(g_one)
    for run in (w0, one):
        assert_adam_step(run)
    chief_files = os.listdir(tmp_path / 'ckpt0' / 'synthetic' / 'mtl')
    assert {'train_state', 'train.log', 'best.weights.h5'} <= set(chief_files)
    assert not os.path.exists(tmp_path / 'ckpt1')

    # --------------------------------------------- train_dae.py, a worker killed
    # From here on both workers use the chief's folder, as on a shared file
    # system: worker 1 reads the MTL weights and resumes from there.
    shared = [f'--set={s}' for s in common + [f'checkpoint_root={tmp_path / "ckpt0"}',
                                              'batch_size=4']]
    dae = [os.path.join(ROOT, 'train_dae.py'), *shared, '--set=max_steps=6',
           '--set=checkpoint_every=2']
    state = tmp_path / 'ckpt0' / 'synthetic' / 'dae' / 'train_state'
    workers = start_workers(tmp_path, 'dae', dae)
    (chief, _), (other, _) = workers
    deadline = time.time() + 600
    while 'checkpoint saved:' not in (tmp_path / 'dae0.log').read_text():
        assert chief.poll() is None and time.time() < deadline, \
            (tmp_path / 'dae0.log').read_text()[-3000:]
        time.sleep(0.05)
    other.send_signal(signal.SIGKILL)       # step 2 saved, the epoch of 37 steps under way
    other.wait(timeout=60)
    # The chief's next all-reduce finds its peer gone: a one-line error
    # saying how the job resumes. Then both are started again.
    chief.wait(timeout=120)
    log = (tmp_path / 'dae0.log').read_text()
    saved = int(tf.train.latest_checkpoint(str(state)).rsplit('-', 1)[1])
    assert chief.returncode == 1 and saved >= 2 and 'done after' not in log
    assert 'Traceback' not in log, log[-3000:]
    error, = [line for line in log.splitlines() if line.startswith('error: ')]
    assert error.startswith('error: a worker of the cluster stopped during training (')
    assert f'training resumes from {state}/ckpt-{saved} (checkpoint_every = 2 ' in error
    outputs = finish(start_workers(tmp_path, 'resumed', dae))
    for out in outputs:        # both restore the chief's newest checkpoint
        assert f'resuming from {state}/ckpt-{saved} at step {saved}' in out, out[-3000:]
        assert 'done after 6 steps' in out
    final = tf.train.latest_checkpoint(str(state))
    assert final.endswith('ckpt-6')
    reader = tf.train.load_checkpoint(final)
    iterations = [k for k in reader.get_variable_to_shape_map()
                  if k.startswith('optimizer/_iterations')]
    assert [int(reader.get_tensor(k)) for k in iterations] == [6]   # Adam's too

    # --------------------------------------------- test_dsm.py: 2 workers = 1 process
    test = [os.path.join(ROOT, 'test_dsm.py'), '--correction', '--max-images=2', *shared]
    finish(start_workers(tmp_path, 'test', [*test, '--out', str(tmp_path / 'two')]))
    single = run_python([*test, '--out', str(tmp_path / 'one')], stand_in=True)
    assert single.returncode == 0, single.stderr[-3000:]
    records = [json.loads((tmp_path / run / 'metrics.json').read_text())
               for run in ('two', 'one')]
    assert [r['name'] for r in records[0]['per_image']] == ['test_0000', 'test_0001']
    # The same windows, each replica's share of every batch: float32
    # rounding only, bounded by the networks' sums of products
    # (export.height_tolerance); an RMSE moves by at most the largest height
    # difference (triangle inequality), and the classes not at all.
    heights = {run: [] for run in ('two', 'one')}
    for run in heights:
        for name in ('test_0000', 'test_0001'):
            with rasterio.open(tmp_path / run / f'{name}_height.tif') as f:
                heights[run].append(f.read(1))
    tolerance = trained_tolerance(tmp_path / 'ckpt0' / 'synthetic',
                                  max(np.abs(h).max() for h in heights['one']))
    for two, one in zip(heights['two'], heights['one']):
        np.testing.assert_allclose(two, one, rtol=0, atol=tolerance)
        assert np.abs(two - np.roll(one, 1, axis=1)).max() > tolerance   # a shift is caught
    for key in ('rmse', 'mtl_rmse'):
        assert records[0]['overall'][key] == pytest.approx(records[1]['overall'][key],
                                                           rel=0, abs=tolerance), key
    assert records[0]['overall']['miou'] == records[1]['overall']['miou']
