"""utils/heads.py: the table is the published one, and a head added to it
reaches the network, the DAE's input, the targets and the loss."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import config
from nets import dae, mtl
from utils import checkpoints, datasets, heads, losses, pipeline, training


def test_the_table_is_the_published_heads():
    """Names, term names and settings are in weights files, logs and config.py:
    they and their order must not change."""
    rows = [(h.name, h.term, h.weight, h.flag, h.default) for h in heads.HEADS]
    assert rows == [('height', 'dsm', 'w1', None, True), ('sem', 'sem', 'w2', 'sem_flag', True),
                    ('norm', 'norm', 'w3', 'norm_flag', True),
                    ('edge', 'edge', 'w4', 'edge_flag', False)]
    assert training.TERM_ORDER == ('dsm', 'sem', 'norm', 'edge', 'loss')
    assert checkpoints.ARCHITECTURE['mtl'][:3] == ('sem_flag', 'norm_flag', 'edge_flag')
    with pytest.raises(TypeError, match='height'):
        heads.select(height=False)     # the height is no switch


def _slope(loaded, cfg):
    """A made-up head: the height's row and column differences."""
    h = np.nan_to_num(loaded.height)
    return np.stack([np.gradient(h, axis=0), np.gradient(h, axis=1)], -1)


@pytest.fixture
def slope_head(monkeypatch):
    """The table with a fifth head, switched by a new setting `slope_flag`."""
    head = heads.Head('slope', 2, None, 'regression', 'slope', 'w_slope', 'slope_flag',
                      False, _slope)
    table = heads.HEADS + (head,)
    monkeypatch.setattr(heads, 'HEADS', table)
    monkeypatch.setattr(heads, 'NAMES', tuple(h.name for h in table))
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
    fields = pipeline.make_fields(datasets.Loaded(np.zeros((32, 32, 3)), height,
                                  np.zeros((32, 32), 'int32')))
    np.testing.assert_array_equal(fields['slope'][..., 1], np.gradient(height, axis=1))
    assert ('slope', tf.float32, 2) in pipeline._field_specs()

    batch = {k: v[None] for k, v in pipeline.drop_index_channel(fields).items()}
    terms = losses.mtl_terms(batch, out)
    assert list(terms) == ['dsm', 'sem', 'slope']
    expected = np.mean((np.asarray(out['slope'])[0] - fields['slope']) ** 2)
    np.testing.assert_allclose(terms['slope'], [expected], rtol=1e-5)
    total = config.w1 * terms['dsm'] + config.w2 * terms['sem'] + 0.5 * terms['slope']
    np.testing.assert_allclose(losses.mtl_total(terms), total, rtol=1e-6)
    keras.backend.clear_session()


def test_switching_a_head_off_removes_it_everywhere():
    config.norm_flag = False
    assert [h.name for h in heads.from_config(config)] == ['height', 'sem']
    assert [name for name, _, _ in pipeline._field_specs()] == ['image', 'mask', 'height',
                                                                 'sem']
    assert dae.input_channels(6, norm=False) == 1 + 6 + 3
