"""utils/model/heads.py: the table is the published one, a head's turn agrees with
its target on a turned crop, and a head added to it reaches the network, the
DAE's input, the targets, the loss, a training step with augmentation, the
evaluation and predict.py's files."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tifffile

import config
import predict
from nets import dae, mtl
from tests.conftest import TINY
from tests.stand_in import small_encoder
from utils import distribute, rules, settings
from utils.data import layouts, samples
from utils.evaluate import evaluation
from utils.model import heads, networks, weights as weights_files
from utils.predict import blend, engines, flips
from utils.train import fields as training_fields, losses, tasks, trainer as training


def test_the_table_is_the_published_heads():
    """Names, term names and settings are in weights files, logs and config.py:
    they and their order must not change."""
    rows = [(h.name, h.term, h.weight, h.flag, h.on_by_default) for h in heads.HEADS]
    assert rows == [('height', 'dsm', 'w1', None, True), ('sem', 'sem', 'w2', 'sem_flag', True),
                    ('norm', 'norm', 'w3', 'norm_flag', True),
                    ('edge', 'edge', 'w4', 'edge_flag', False)]
    assert training.TERM_ORDER == ('dsm', 'sem', 'norm', 'edge', 'loss')
    assert weights_files.ARCHITECTURE['mtl'][:3] == ('sem_flag', 'norm_flag', 'edge_flag')
    with pytest.raises(TypeError, match='height'):
        heads.select(height=False)     # the height is no switch


def _slope(loaded, cfg):
    """A made-up head: the height's row and column differences."""
    h = np.nan_to_num(loaded.height)
    return np.stack([np.gradient(h, axis=0), np.gradient(h, axis=1)], -1)


def _turn_slope(value, transpose, flip_rows, flip_cols, cfg):
    """A transpose swaps the row and column differences; a flip negates its own."""
    rows, cols = tf.unstack(value, axis=-1)
    rows, cols = tf.where(transpose, cols, rows), tf.where(transpose, rows, cols)
    rows = tf.where(flip_rows, -rows, rows)
    cols = tf.where(flip_cols, -cols, cols)
    return tf.stack([rows, cols], -1)


@pytest.fixture
def slope_head(monkeypatch):
    """The table with a fifth head, switched by a new setting `slope_flag`:
    direction-dependent, written by predict.py on request, scored."""
    head = heads.Head('slope', 2, None, 'regression', 'slope', 'w_slope', 'slope_flag',
                      False, _slope, turn=_turn_slope, output=heads.OPTIONAL, scored=True)
    table = heads.HEADS + (head,)
    monkeypatch.setattr(heads, 'HEADS', table)
    monkeypatch.setattr(heads, 'NAMES', tuple(h.name for h in table))
    monkeypatch.setattr(heads, 'TERMS', tuple(h.term for h in table))
    monkeypatch.setattr(training, 'TERM_ORDER', heads.TERMS + ('loss',))
    # As config.py would declare them: each name with its rule.
    monkeypatch.setitem(config.__annotations__, 'slope_flag', bool)
    monkeypatch.setitem(config.__annotations__, 'w_slope', rules.number(at_least=0))
    monkeypatch.setattr(config, 'slope_flag', True, raising=False)
    monkeypatch.setattr(config, 'w_slope', 0.5, raising=False)
    return head


def test_a_new_head_reaches_every_part(slope_head):
    config.sem_flag, config.norm_flag, config.edge_flag = True, False, False
    classes = len(config.label_codes)
    model = mtl.build_mtl(classes, decoder_scale=0.0625, **heads.switches(config))
    out = model(np.zeros((1, 32, 32, 3), 'float32'))
    assert {k: v.shape[-1] for k, v in out.items()} == {'height': 1, 'sem': classes,
                                                       'slope': 2}
    assert dae.input_channels(classes, **heads.switches(config)) == 1 + classes + 2 + 3
    stacked = dae.assemble_input(out, np.zeros((1, 32, 32, 3), 'float32'))
    np.testing.assert_array_equal(stacked[..., 1 + classes:-3], out['slope'])

    height = np.arange(32 * 32, dtype='float32').reshape(32, 32) % 7
    fields = training_fields.make_fields(samples.Loaded(np.zeros((32, 32, 3)), height,
                                  np.zeros((32, 32), 'int32')), config)
    np.testing.assert_array_equal(fields['slope'][..., 1], np.gradient(height, axis=1))
    assert ('slope', tf.float32, 2) in training_fields.field_specs(config)

    batch = {k: v[None] for k, v in training_fields.drop_index_channel(fields, config).items()}
    terms = losses.mtl_terms(batch, out, config)
    assert list(terms) == ['dsm', 'sem', 'slope']
    expected = np.mean((np.asarray(out['slope'])[0] - fields['slope']) ** 2)
    np.testing.assert_allclose(terms['slope'], [expected], rtol=1e-5)
    total = config.w1 * terms['dsm'] + config.w2 * terms['sem'] + 0.5 * terms['slope']
    np.testing.assert_allclose(losses.mtl_total(terms, config), total, rtol=1e-6)
    keras.backend.clear_session()


def test_switching_a_head_off_removes_it_everywhere():
    config.norm_flag = False
    assert [h.name for h in heads.from_config(config)] == ['height', 'sem']
    assert [name for name, _, _ in training_fields.field_specs(config)] == ['image', 'mask',
                                                                       'height', 'sem']
    assert dae.input_channels(6, norm=False) == 1 + 6 + 3


def _moved(array, transpose, flip_rows, flip_cols):
    """The pixels of [H, W, ...] under a D4 transform, as augmentation moves them."""
    if transpose:
        array = np.swapaxes(array, 0, 1)
    if flip_rows:
        array = array[::-1]
    if flip_cols:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('transform', flips.D4)
def test_turn_makes_the_target_of_the_turned_crop(slope_head, transform, normalize):
    """A head's turn, applied to its moved target, is the target of the moved
    height: augmentation and test-time flips may move the pixels and turn."""
    config.normalize_flag = normalize
    rng = np.random.default_rng(0)
    height = tf.image.resize(rng.random((1, 6, 7, 1)) * 40, (30, 35))[0, ..., 0].numpy()
    for name in ('norm', 'slope'):
        head = heads.by_name(name)
        target = head.target(samples.Loaded(None, height, None), config)
        turned = head.turn(_moved(target, *transform), *transform, config)
        expected = head.target(samples.Loaded(None, _moved(height, *transform), None), config)
        np.testing.assert_allclose(turned, expected, atol=1e-5 * (1 if normalize else 255))
    assert heads.by_name('sem').turn is None and heads.by_name('height').turn is None


@pytest.mark.slow
def test_a_new_head_trains_with_augmentation_and_is_evaluated(slope_head, synthetic_root,
                                                               tmp_path):
    settings.apply(TINY + [f'shortcut_path={synthetic_root}', f'checkpoint_root={tmp_path}',
                           'augment=True', 'batch_size=2', 'edge_flag=False'])
    with small_encoder():
        strategy = distribute.get_strategy(config)
        trainer = training.Trainer(tasks.MTLTask(config), strategy)
        batches = trainer.task.train_dataset(trainer.global_batch, epoch=0)
        assert batches.element_spec['slope'].shape[1:] == (32, 32, 2)
        # The augmented crops' slopes are those of their turned heights, so
        # the pipeline turned the values with the row's turn (without it a
        # flipped crop's would be negated, a transposed one's swapped).
        # Interior pixels: the crop's border lacks the tile's neighbours.
        sloped = 0
        for batch in batches.take(4):
            for height, slope in zip(batch['height'].numpy()[..., 0], batch['slope'].numpy()):
                expected = _slope(samples.Loaded(None, height, None), config)
                np.testing.assert_allclose(slope[1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-4)
                sloped += np.abs(expected[1:-1, 1:-1]).max() > 0.1
        assert sloped >= 4      # crops with slopes a missing turn would get wrong
        terms, _ = trainer.train_step(
            iter(strategy.experimental_distribute_dataset(batches)), steps=1)
        assert np.isfinite(terms['slope']) and terms['slope'] > 0

        result = evaluation.evaluate(trainer.model, cfg=config, strategy=strategy,
                                     split='valid', max_images=1, verbose=0)
        # a second computation: the blended slope maps against the target
        loaded = samples.load_sample(config, layouts.find_split(config, 'valid')[0])
        fn = engines.tensorflow_fn(trainer.model, cfg=config, strategy=strategy,
                                   outputs=('slope',))
        got = blend.predict_tile(fn, loaded.image, 32, config.test_stride)['slope']
        error = (got - _slope(loaded, config))[np.isfinite(loaded.height)]
        assert result['slope_mae'] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)
        assert result['slope_rmse'] == pytest.approx(np.sqrt(np.mean(error ** 2)), rel=1e-5)
        assert result['miou'] is not None       # the other heads are still scored
    keras.backend.clear_session()


class RampNetwork:
    """A stand-in MTL: height 1, and as its slope the forward differences of
    input channel 0 (the last row and column repeat theirs). On a ramp the
    slope is the same everywhere, in the frame of the window it sees: a
    flipped window's is negated, a transposed one's swapped."""
    def __call__(self, x, training=False):
        f = x[..., 0]
        rows = f[:, 1:] - f[:, :-1]
        cols = f[:, :, 1:] - f[:, :, :-1]
        rows = tf.concat([rows, rows[:, -1:]], 1)
        cols = tf.concat([cols, cols[:, :, -1:]], 2)
        return {'height': tf.ones_like(x[..., :1]), 'slope': tf.stack([rows, cols], -1)}


def test_a_new_head_is_predicted_with_flips_and_written_by_predict_py(slope_head, tmp_path,
                                                                      monkeypatch):
    """predict.py --outputs height,slope with all 8 test-time flips: every
    flipped window's slope, turned back by the head's turn, is the ramp's;
    without the turn the 8 would average to 0."""
    rows, cols = np.mgrid[0:40, 0:50]
    ramp = (2 * rows + 3 * cols).astype(np.uint8)
    path = tmp_path / 'ramp.tif'
    tifffile.imwrite(path, np.stack([ramp] * 3, -1), photometric='rgb')
    weights = tmp_path / 'mtl.weights.h5'
    weights.write_bytes(b'stand-in')
    monkeypatch.setattr(weights_files, 'adopt', lambda cfg, files, keep=(): cfg)
    monkeypatch.setattr(networks, 'trained', lambda found, cfg, strategy: RampNetwork())
    predict.main([str(path), '--out', str(tmp_path / 'out'), '--mtl-weights', str(weights),
                  '--outputs', 'height,slope', '--ungeoreferenced', '--set', 'cropSize=32', '--set',
                  'predict_stride=10', '--set', 'predict_flips=8'])

    scaled = samples.read_image(config, str(path))[..., 0].astype(np.float64)
    step_rows, step_cols = np.diff(scaled, axis=0).mean(), np.diff(scaled, axis=1).mean()
    assert step_cols == pytest.approx(1.5 * step_rows) and step_rows > 0
    slope = tifffile.imread(tmp_path / 'out' / 'ramp_slope.tif')
    assert slope.shape == (40, 50, 2) and slope.dtype == np.float32
    np.testing.assert_allclose(slope[..., 0], step_rows, atol=1e-5)
    np.testing.assert_allclose(slope[..., 1], step_cols, atol=1e-5)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / 'out' / 'ramp_height.tif'), 1)
    assert sorted(os.listdir(tmp_path / 'out')) == ['ramp_height.tif', 'ramp_preview.png',
                                                   'ramp_slope.tif']
