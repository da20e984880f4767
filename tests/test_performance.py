"""Performance options (mixed precision, XLA, steps_per_execution, sync batch
normalisation) must not change what training computes beyond rounding.

Each comparison trains the same initial weights on the same batches with
and without the option, in a subprocess (tests/perf_run.py), since devices
and precision are configured once per process."""
import os

import numpy as np
import pytest

from conftest import ROOT, run_python

# TensorFlow processes training an MTL (DenseNet121 frozen, or the stand-in
# encoder of tests/stand_in.py); on one pytest-xdist worker,
# so each module fixture below is made once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('performance')]

PERF_RUN = os.path.join(ROOT, 'tests', 'perf_run.py')
TWO_REPLICAS = ['batch_size=4', 'multi_gpu_enabled=True', 'cpu_replicas=2']
norm = np.linalg.norm


def perf_run(tmp_path, name, variants, sets):
    out = tmp_path / f'{name}.npz'
    args = [PERF_RUN, str(out), *variants]
    for s in sets:
        args += ['--set', s]
    result = run_python(args)
    assert result.returncode == 0, result.stderr[-3000:]
    data = dict(np.load(out))
    return {v.split(':')[0]: {k.split('/', 1)[1]: data[k] for k in data
                              if k.startswith(v.split(':')[0] + '/')}
            for v in variants} | {'replicas': int(data['replicas'])}


def flat(run, prefix='w_'):
    keys = sorted((k for k in run if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
    return np.concatenate([run[k].ravel() for k in keys])


@pytest.fixture(scope='module')
def one_replica_mtl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('precision')
    weights = str(tmp / 'stand_in.weights.h5')
    # Loading across precisions, which does not depend on the encoder, on the
    # stand-in (each DenseNet121 variant costs about 11 s of tracing); float16
    # stays on DenseNet121: on the stand-in, 4 steps of perf_run's linear Adam
    # did not lower its loss (136.79 after, 136.49 before, 2026-12-08)
    return perf_run(tmp, 'one', [
        'f32:mtl:1+1+1+1',
        'bf16:mtl:1+1+1+1:mixed_precision=mixed_bfloat16',
        'f16:mtl:1+1+1+1:mixed_precision=mixed_float16',
        f'stand_in:mtl:1+1+1+1:stand_in=1,save={weights}',
        f'bf16_loaded:mtl:0:mixed_precision=mixed_bfloat16,load={weights},stand_in=1',
        'densenet:mtl:1:mtl_bb_freeze=False'], ['batch_size=8'])


def test_bfloat16_tracks_float32(one_replica_mtl):
    f32, bf16 = one_replica_mtl['f32'], one_replica_mtl['bf16']
    assert str(bf16['policy']) == 'mixed_bfloat16' and str(bf16['compute_dtype']) == 'bfloat16'
    assert set(str(bf16['output_dtypes']).split(',')) == {'float32'}
    np.testing.assert_array_equal(flat(f32, 'init_'), flat(bf16, 'init_'))
    # The float32 run's loss falls by over 10% in these 4 steps, so a bf16 run
    # that did not learn, or learnt from wrong gradients, would leave the band.
    assert f32['losses'][-1, 0] < 0.9 * f32['losses'][0, 0]
    # bfloat16 keeps 8 significant bits: every stored activation is rounded by
    # up to u = 2^-8 = 0.39%. The loss terms are float32 means over 8192 pixels,
    # where independent roundings average out, so 2% (5u) holds with margin
    # (measured: 1.1e-3 on 1 and 2 threads) yet is 5x below what training moves.
    assert np.isfinite(bf16['losses']).all()
    np.testing.assert_allclose(bf16['losses'], f32['losses'], rtol=2e-2)
    # The updates are compared along the float32 update: u16 . u32 / |u32|^2,
    # with the linear Adam of perf_run their first-order effect on the loss.
    # Not |u16 - u32|: a bias gradient summed over 8192 pixels that nearly
    # cancel (the 2-channel last decoder stage) keeps only an absolute error
    # of about u * sum|terms|, far above its value, and how much of the sum
    # runs in bf16 depends on the kernels the CPU gets (|u16 - u32| / |u32|:
    # 0.07 here on 1 and 2 threads, 0.48 in a run elsewhere). Such errors are
    # uncorrelated with u32 and cancel in the projection, where those
    # variables weigh little; the well-conditioned bulk carries about
    # sqrt(130 layers) * u = 4.5% (measured: 0.991 on 1 and 2 threads, with
    # the encoder frozen as perf_run.py has it). A bf16 implementation
    # error moves it far: 0 (updates lost), 2^k (unscaled loss), < 0 (sign).
    update32 = flat(f32) - flat(f32, 'init_')
    update16 = flat(bf16) - flat(bf16, 'init_')
    assert 0.85 < update16 @ update32 / (update32 @ update32) < 1.15


def test_float16_scales_the_loss_and_skips_overflowing_steps(one_replica_mtl):
    f32, f16 = one_replica_mtl['f32'], one_replica_mtl['f16']
    assert str(f16['compute_dtype']) == 'float16'
    assert set(str(f16['output_dtypes']).split(',')) == {'float32'}
    assert np.isfinite(f16['losses']).all() and np.isfinite(flat(f16)).all()
    # Before any update the float16 forward gives the float32 losses (2^-11 rounding).
    np.testing.assert_allclose(f16['losses'][0], f32['losses'][0], rtol=1e-2)
    # Dynamic loss scaling: every skipped step halves the scale from 2^15,
    # every applied one counts as an optimizer iteration.
    applied = int(f16['iterations'])
    skipped = int(round(np.log2(2.0 ** 15 / float(f16['loss_scale']))))
    assert applied + skipped == int(f16['step']) == 4
    assert applied >= 1 and f16['losses'][-1, 0] < f16['losses'][0, 0]


def test_weights_load_across_precisions(one_replica_mtl):
    f32, loaded = one_replica_mtl['stand_in'], one_replica_mtl['bf16_loaded']
    assert str(loaded['compute_dtype']) == 'bfloat16'
    np.testing.assert_array_equal(flat(loaded), flat(f32))   # variables stay float32
    # Same predictions up to bfloat16 rounding of the activations.
    a, b = f32['outputs'], loaded['outputs']
    assert 0 < norm(b - a) < 3e-2 * norm(a)


@pytest.fixture(scope='module')
def two_replicas(tmp_path_factory):
    return perf_run(tmp_path_factory.mktemp('two'), 'two', [
        # Batch statistics on the stand-in encoder: synchronisation is under test.
        'sync:mtl:1+1+1+1:sync_batchnorm=True,stand_in=1', 'local:mtl:1+1+1+1:stand_in=1',
        'single:dae:1+1+1', 'spe:dae:d+1:steps_per_execution=2',
        'xla:dae:1+1+1:jit_compile=True',
        'f16:dae:1:mixed_precision=mixed_float16,overflow=1',
        'densenet_sync:mtl:1:mtl_bb_freeze=False,sync_batchnorm=True'], TWO_REPLICAS)


def test_sync_batchnorm_on_two_replicas_matches_one_replica(one_replica_mtl, two_replicas):
    one, sync, local = one_replica_mtl['stand_in'], two_replicas['sync'], two_replicas['local']
    assert two_replicas['replicas'] == 2
    assert sync['counts'].tolist() == [[4, 4]] * 4
    # encoder_bn's moving statistics (the batches' share of them): those of
    # the full batch of 8 at every step.
    for key in ('bn_mean', 'bn_var'):
        assert norm(sync[key] - one[key]) < 1e-4 * norm(one[key])
    assert norm(flat(sync) - flat(one)) < 1e-4 * norm(flat(one) - flat(one, 'init_'))
    np.testing.assert_allclose(sync['outputs'], one['outputs'], rtol=1e-4, atol=1e-5)
    # Without synchronisation each replica normalises by its own 4 examples
    # (measured: 4% off in the mean, 19% in the variance).
    for key in ('bn_mean', 'bn_var'):
        assert norm(local[key] - one[key]) > 1e-2 * norm(one[key])


def test_sync_batchnorm_over_densenet121_on_two_replicas_matches_one_replica(
        one_replica_mtl, two_replicas):
    """One step of DenseNet121 trained (its BN layers computing batch
    statistics): every BN layer's moving statistics on 2 replicas of 4
    examples, synchronised, are those of one replica of 8."""
    one, sync = one_replica_mtl['densenet'], two_replicas['densenet_sync']
    assert sync['counts'].tolist() == [[4, 4]]
    layers = sorted({k.split('_')[0] for k in one if k.startswith('bn') and k[2].isdigit()})
    assert len(layers) > 120        # DenseNet121's BN layers and ours
    # Both runs sum the same values in another order (one reduction of 8
    # examples against two of 4 all-reduced): a statistic summed over n
    # values errs by about sqrt(n) u (u = 2^-24, n <= 8 x 32 x 32 = 8192:
    # 5.4e-6), and the errors of the 122 layers before it compound as
    # independent ones, sqrt(122) = 11 times: 6e-5 < 1e-4 (measured: 7e-6
    # at most, on one thread and on two). Unsynchronised, every layer was
    # 4.5% to 39% off (each replica normalising by its own 4 examples), 450
    # times this bound.
    for layer in layers:
        for stat in ('mean', 'var'):
            key = f'{layer}_{stat}'
            assert norm(sync[key] - one[key]) < 1e-4 * norm(one[key]), key


def test_steps_per_execution_equals_single_steps(two_replicas):
    single, spe = two_replicas['single'], two_replicas['spe']
    assert two_replicas['replicas'] == 2
    assert int(spe['step']) == int(spe['iterations']) == int(single['step']) == 3
    assert spe['counts'].tolist() == [[8, 8], [4, 4]]   # examples per replica per call
    np.testing.assert_allclose(flat(spe), flat(single), rtol=1e-6, atol=1e-7)
    # The first call reports the mean of its two steps' losses.
    np.testing.assert_allclose(spe['losses'][0], single['losses'][:2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(spe['losses'][1], single['losses'][2], rtol=1e-6)


def test_xla_equals_no_xla_on_two_replicas(two_replicas):
    single, xla = two_replicas['single'], two_replicas['xla']
    update = flat(single) - flat(single, 'init_')
    assert norm(update) > 1e-2 * norm(flat(single, 'init_'))
    # XLA fuses and reorders float32 arithmetic: rounding-level differences.
    assert norm(flat(xla) - flat(single)) < 1e-5 * norm(update)
    np.testing.assert_allclose(xla['losses'], single['losses'], rtol=1e-5)


def test_float16_overflow_on_one_replica_skips_the_step_on_all(two_replicas):
    f16 = two_replicas['f16']
    # Only the second replica's heights overflow float16; Keras alone would
    # judge by the first replica and sum an infinite gradient into the weights.
    np.testing.assert_array_equal(flat(f16), flat(f16, 'init_'))
    assert int(f16['iterations']) == 0 and int(f16['step']) == 1
    assert float(f16['loss_scale']) == 2.0 ** 14
    assert np.isfinite(f16['losses']).all()


def test_xla_with_synchronised_batchnorm_on_two_replicas_is_refused_clearly(tmp_path):
    # tf.distribute cannot all-reduce BN statistics from inside an XLA function.
    result = run_python([PERF_RUN, str(tmp_path / 'x.npz'),
                         'both:mtl:1:sync_batchnorm=True,jit_compile=True',
                         *[a for s in TWO_REPLICAS for a in ('--set', s)]])
    assert result.returncode != 0
    assert 'SettingError: jit_compile = True and sync_batchnorm = True cannot be ' \
           'combined on 2 replicas' in result.stderr
