"""Data-parallel training: the proof that the batch is really split and the
loss really scaled is that 2 replicas apply the same updates as 1."""
import os

import numpy as np
import pytest

from conftest import ROOT, STAND_IN, TINY, run_python
from stand_in import small_encoder
from utils.train import actions
from utils.errors import TrainingDiverged

REPLICA_RUN = os.path.join(ROOT, 'tests', 'replica_run.py')


def replica_run(tmp_path, stage, replicas, steps=2, extra=(), gpus=False):
    """tests/replica_run.py on `replicas` logical CPUs (or GPUs with `gpus`)."""
    out = tmp_path / f'{stage}_{replicas}.npz'
    if replicas == 1:
        sets = ['batch_size=8']
    else:
        sets = [f'batch_size={8 // replicas}', 'multi_gpu_enabled=True',
                'gpu_devices=0,1' if gpus else f'cpu_replicas={replicas}']
    result = run_python([REPLICA_RUN, str(out), stage, str(steps), *sets, *extra], gpus=gpus,
                        timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out))


def test_early_stopping_counts_finished_epochs_without_improvement():
    stop = actions.EarlyStopping(True, 2)
    # (improved, finished) per epoch: an unfinished epoch (max_steps) does not
    # count, an improvement starts the count again.
    epochs = [(False, True), (False, False), (True, True), (False, True), (False, True)]
    assert [stop.update(*e) for e in epochs] == [False, False, False, False, True]
    assert not actions.EarlyStopping(False, 1).update(False, True)


def test_best_weights_improve_by_more_than_delta():
    rmse = actions.BestWeights('a.weights.h5', 'rmse', 0.1, True)
    assert rmse.improved(5.0)           # nothing kept yet
    rmse.best.assign(5.0)
    assert not rmse.improved(4.95) and rmse.improved(4.85)     # lower is better
    miou = actions.BestWeights('a.weights.h5', 'miou', 0.1, True)
    miou.best.assign(0.5)
    assert miou.improved(0.61) and not miou.improved(0.59)      # higher is better
    assert actions.BestWeights('a.weights.h5', 'rmse', 0, False).describe().startswith(
        'last weights    a.weights.h5 (no validation')


def weights(run, prefix='w_'):
    return [run[k] for k in sorted((k for k in run if k.startswith(prefix)),
                                   key=lambda k: int(k[len(prefix):]))]


# The unit roundoff of float32: the arithmetic of this suite (GPUs hidden).
FLOAT32_U = 2.0 ** -24
# The largest sum in a step: a reduction over the global batch of 8 crops of
# 32 x 32 pixels (a loss, a batch statistic, a kernel's gradient). Summing n
# terms in another order (the all-reduce adds two half-batch sums, the
# convolutions block batch 4 and 8 differently) changes it by at most n * u
# relative to the sum of the terms' magnitudes (Higham, Accuracy and
# Stability, 4.2): 8192 * 2^-24 = 4.9e-4.
TERMS = 8 * 32 * 32


def depth(run):
    """The layers a step's error can pass through: those with a kernel."""
    return sum(w.ndim >= 2 for w in weights(run, 'init_'))


def adam_first_step(run):
    """The weights after Adam's first step from the run's moments, computed as
    Keras does (the same float32 constants: 1 - 0.999f is 1.3e-5 off 0.001,
    which v's (1 - beta_2) is not) but in float64."""
    f32 = np.float32
    alpha = float(run['lr']) * np.sqrt(1 - np.float64(f32(run['beta_2']))) / (
        1 - np.float64(f32(run['beta_1'])))
    return [s - alpha * m / (np.sqrt(v.astype('float64')) + np.float64(f32(run['epsilon'])))
            for s, m, v in zip(weights(run, 'init_'), weights(run, 'm_'), weights(run, 'v_'))]


def assert_same_step(one, two, layer_error=TERMS * FLOAT32_U):
    """2 replicas took the step of 1 replica on the same global batch: losses
    and gradient equal to depth x `layer_error`, a first-order bound of the
    rounding (each layer's relative error adds up along the path; float32 by
    default).

    At the published optimizer settings (config.py: Adam, epsilon 1e-7) the
    weights are the wrong quantity to compare element by element: Adam's first
    update is lr * g / (|g| + e), e = epsilon / sqrt(1 - beta_2) ~ 3e-6, about
    lr * sign(g) wherever |g| >> e, so a gradient element within rounding of 0
    may move its weight by +lr on one run and -lr on the other (a few percent
    of the update norm, here). What must be equal is what distribution could
    get wrong: each replica's share of the batch, the loss over the global
    batch, and the all-reduced gradient (a loss averaged per replica, or a
    batch seen twice, would double it: a relative difference of 1). Then each
    run's weights must be Adam's step on its own gradient."""
    assert int(one['replicas']) == 1 and int(two['replicas']) == 2
    steps = len(one['losses'])
    assert two['counts'].tolist() == [[4, 4]] * steps  # each replica half of each batch
    assert one['counts'].tolist() == [[8]] * steps
    assert int(one['iterations']) == int(two['iterations']) == steps
    for a, b in zip(weights(one, 'init_'), weights(two, 'init_')):
        np.testing.assert_array_equal(a, b)             # same start
    tolerance = depth(one) * layer_error
    assert tolerance < 0.5                      # still tells a doubled gradient
    # The first step's loss (same weights), the next ones' (after it)
    np.testing.assert_allclose(two['losses'], one['losses'], rtol=tolerance)
    # m = (1 - beta_1) g: the all-reduced gradients, scaled alike
    g1, g2 = (np.concatenate([m.ravel() for m in weights(run, 'm_')]) for run in (one, two))
    norm = np.linalg.norm
    assert norm(g1) > 0 and norm(g2 - g1) <= tolerance * norm(g1)
    for run in (one, two):
        assert_adam_step(run)


def assert_adam_step(run):
    """The run's weights are Adam's first step on its own moments, to float32
    rounding of it (the weight's ulp, and a few u of the update from its
    handful of operations)."""
    for start, w, adam in zip(weights(run, 'init_'), weights(run), adam_first_step(run)):
        np.testing.assert_array_less(
            np.abs(w - adam), 2 * FLOAT32_U * np.abs(start)
            + 16 * FLOAT32_U * np.abs(adam - start) + 1e-30)


@pytest.mark.slow
@pytest.mark.parametrize('stage', ['mtl', 'dae'])
def test_two_replicas_take_the_step_of_one(tmp_path, stage):
    """At the published settings (Adam's learning rate and epsilon, every
    layer trained, batch statistics synchronised: sync_batchnorm=True)."""
    assert_same_step(replica_run(tmp_path, stage, 1), replica_run(tmp_path, stage, 2))


# ---------------------------------------------------------------- full runs


def sets_for(root, ckpt, *extra):
    return [f'--set={s}' for s in TINY + [f'shortcut_path={root}',
                                           f'checkpoint_root={ckpt}', *extra]]


def checkpoint_values(path):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(path)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k != '_CHECKPOINTABLE_OBJECT_GRAPH'}


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(tmp_path, synthetic_root):
    """kill -9 after the first checkpoint of a 2-replica training, start
    again: same steps, same weights as an uninterrupted run (two epochs, so
    Adam also survives an epoch end). One replica resumes by the same code
    (test_max_steps_inside_an_epoch_is_resumed_within_that_epoch)."""
    import signal
    import subprocess
    import sys
    import tensorflow as tf
    # On the stand-in encoder: resuming restores every variable the same way
    # (DenseNet121 trains on 2 replicas in test_performance.py).
    # Without the per-epoch validation (train_valid_flag), which restores
    # nothing and took five passes here; a resumed run's validation record is
    # test_max_steps_inside_an_epoch_is_resumed_within_that_epoch's.
    common = ['batch_size=16', 'multi_gpu_enabled=True', 'cpu_replicas=2', 'mtl_numEpochs=2',
              'checkpoint_every=5', 'deterministic=True', 'train_valid_flag=False']
    env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
    train = os.path.join(ROOT, 'train_mtl.py')

    full = run_python([train, *sets_for(synthetic_root, tmp_path / 'a', *common)], stand_in=True)
    assert full.returncode == 0, full.stderr[-3000:]

    proc = subprocess.Popen([sys.executable, STAND_IN, train,
                             *sets_for(synthetic_root, tmp_path / 'b', *common)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith('checkpoint saved:'):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state_b = tmp_path / 'b' / 'synthetic' / 'mtl' / 'train_state'
    killed_at = int(tf.train.latest_checkpoint(str(state_b)).rsplit('-', 1)[1])
    assert killed_at >= 5

    resumed = run_python([train, *sets_for(synthetic_root, tmp_path / 'b', *common)],
                         stand_in=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resuming from {state_b}/ckpt-{killed_at} at step {killed_at}' in resumed.stdout
    assert 'strategy        MirroredStrategy, 2 replica(s)' in resumed.stdout

    state_a = tmp_path / 'a' / 'synthetic' / 'mtl' / 'train_state'
    final_a = tf.train.latest_checkpoint(str(state_a))
    final_b = tf.train.latest_checkpoint(str(state_b))
    steps = 2 * (300 // 32)          # two epochs of the 300 training patches, 32 a step
    assert final_a.endswith(f'-{steps}') and final_b.endswith(f'-{steps}')
    a, b = checkpoint_values(final_a), checkpoint_values(final_b)
    assert a.keys() == b.keys()
    iterations = [k for k in a if k.startswith('optimizer/_iterations')]
    assert [int(a[k]) for k in iterations] == [steps]   # Adam lived through both epochs
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, synthetic_root, monkeypatch):
    import tensorflow as tf
    import config
    import train_mtl
    from utils import settings
    from utils.train import pipeline
    settings.apply(TINY + [f'shortcut_path={synthetic_root}', f'checkpoint_root={tmp_path}',
                           'batch_size=4', 'checkpoint_every=2'])
    real = pipeline.train_dataset

    def poisoned(data, global_batch, epoch, skip_batches=0):
        def spoil(index, batch):     # the 4th batch's heights slip through as NaN
            bad = tf.equal(index + skip_batches, 3)
            height = tf.where(bad, tf.fill(tf.shape(batch['height']), np.nan),
                              batch['height'])
            return {**batch, 'height': height}
        return real(data, global_batch, epoch, skip_batches).enumerate().map(spoil)

    monkeypatch.setattr(pipeline, 'train_dataset', poisoned)
    # The NaN guard is under test, not DenseNet121: the stand-in encoder.
    with small_encoder(), pytest.raises(TrainingDiverged,
                                        match=r"loss term 'dsm' is nan at step 4"):
        train_mtl.main()
    state = tmp_path / 'synthetic' / 'mtl' / 'train_state'
    latest = tf.train.latest_checkpoint(str(state))
    assert latest.endswith('ckpt-2')
    values = checkpoint_values(latest)
    learned = [v for k, v in values.items() if k.startswith(('model_variables', 'optimizer'))]
    assert len(learned) > 100 and all(np.all(np.isfinite(v)) for v in learned)
    assert config.max_steps == 0


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(tmp_path, synthetic_root):
    import signal
    import subprocess
    import sys
    import tensorflow as tf
    env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.Popen([sys.executable, STAND_IN, os.path.join(ROOT, 'train_mtl.py'),
                             *sets_for(synthetic_root, tmp_path, 'batch_size=4')],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            # a suite started in the background (`cmd &`) ignores
                            # SIGINT, and a child would inherit that: a terminal's
                            # Ctrl-C reaches a script with the default handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith('  step '):       # training is under way
            proc.send_signal(signal.SIGINT)
            break
    lines += proc.stdout.readlines()
    proc.wait(timeout=120)
    out = ''.join(lines)
    assert proc.returncode == 130, out[-2000:]
    assert 'interrupted: state saved' in out
    saved = tf.train.latest_checkpoint(str(tmp_path / 'synthetic' / 'mtl' / 'train_state'))
    step = int(saved.rsplit('-', 1)[1])
    assert step >= 7 and f'checkpoint saved: {saved} (step {step})' in out


@pytest.mark.slow
def test_resume_false_moves_the_old_run_aside(tmp_path, synthetic_root, capsys):
    import glob
    import train_mtl
    from utils import settings
    settings.apply(TINY + [f'shortcut_path={synthetic_root}', f'checkpoint_root={tmp_path}',
                           'batch_size=4', 'max_steps=1'])
    with small_encoder():        # what happens to the run's folder is under test
        train_mtl.main()
        settings.apply(['resume=False', 'max_steps=2'])
        assert int(train_mtl.main().trainer.step.numpy()) == 2        # fresh: two steps from zero
    out = capsys.readouterr().out
    assert 'resuming from' not in out and 'previous run was moved to' in out
    aside = glob.glob(str(tmp_path / 'synthetic' / 'mtl.old-*'))
    assert len(aside) == 1
    assert os.path.exists(os.path.join(aside[0], 'train_state', 'ckpt-1.index'))
    assert os.path.exists(tmp_path / 'synthetic' / 'mtl' / 'train_state' / 'ckpt-2.index')


@pytest.mark.slow
def test_max_steps_inside_an_epoch_is_resumed_within_that_epoch(tmp_path, synthetic_root):
    """Stopped by max_steps after 3 of an epoch's 74 steps, then resumed to
    step 5: the epoch goes on with its 4th and 5th batches, so the weights are
    those of one run to step 5, and its record replaces the partial one."""
    import keras
    import config
    import train_mtl
    from utils import settings
    common = TINY + [f'shortcut_path={synthetic_root}', 'batch_size=4', 'deterministic=True']
    with small_encoder():           # resuming is under test, not DenseNet121
        settings.apply(common + [f'checkpoint_root={tmp_path / "a"}', 'max_steps=5'])
        keras.utils.set_random_seed(config.seed)     # the same initial weights in both runs
        straight = train_mtl.main()
        settings.apply([f'checkpoint_root={tmp_path / "b"}', 'max_steps=3'])
        keras.utils.set_random_seed(config.seed)
        stopped = train_mtl.main()
        assert int(stopped.epoch.numpy()) == 0 and len(stopped.history) == 1
        settings.apply(['max_steps=5'])
        resumed = train_mtl.main()
    assert int(resumed.trainer.step.numpy()) == 5
    assert int(resumed.epoch.numpy()) == int(resumed.epoch_start.numpy()) == 0
    assert [h['epoch'] for h in resumed.history] == [1]
    assert resumed.history[0]['val_rmse'] != stopped.history[0]['val_rmse']
    # ... and is the record of the straight run to step 5 (weights equal to float32
    # rounding, so is the validation that ranks them)
    assert resumed.history[0]['val_rmse'] == pytest.approx(straight.history[0]['val_rmse'],
                                                           rel=1e-5)
    for a, b in zip(straight.trainer.model.weights, resumed.trainer.model.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


@pytest.mark.slow
@pytest.mark.xdist_group('tiny_trained')
def test_dae_trains_on_the_frozen_mtl(tiny_trained):
    """train_dae.main() after train_mtl.main() (conftest.py): both stop at
    max_steps, validate once and keep their best weights; the MTL inside
    the DAE stage is the one the MTL stage saved, unchanged."""
    assert tiny_trained.mtl_step == tiny_trained.dae_step == 2
    assert os.path.isfile(tiny_trained.mtl_weights) and os.path.isfile(tiny_trained.dae_weights)
    (mtl,), (dae,) = tiny_trained.mtl_history, tiny_trained.dae_history
    assert np.isfinite([mtl['val_rmse'], dae['val_rmse'], dae['train_loss']]).all()
    # Same weights, same windows: the DAE stage's validation of the MTL alone
    # repeats the MTL stage's, up to float32 rounding (frozen, BN in inference).
    assert dae['val_mtl_rmse'] == pytest.approx(mtl['val_rmse'], rel=1e-5)
    assert dae['val_baseline_rmse'] == mtl['val_baseline_rmse']
