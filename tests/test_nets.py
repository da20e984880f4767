"""The two networks: outputs of every head combination, and parameter counts
checked against counts computed by hand from the layer list of the paper (Elhousni et al., IEEE Access 2021) and the README."""
import itertools

import keras
import numpy as np
import pytest

from stand_in import small_encoder
from nets import dae, mtl
from utils.model import networks

# Keras Applications lists DenseNet121 at 8,062,504 parameters with its
# 1000-class top (1024 x 1000 weights + 1000 biases); without the top:
DENSENET121_NOTOP = 8_062_504 - (1024 * 1000 + 1000)


def conv(cin, cout, k=3):
    return cin * cout * k * k + cout


def mtl_params_by_hand(k, head_channels, mode, scale=1.0):
    """Count from the layer list: encoder, BN, five decoder stages, final convs."""
    total = DENSENET121_NOTOP + 4 * 1024     # BatchNormalization: 4 vectors of 1024
    n = len(head_channels)
    prev = 1024
    for base in (1024, 512, 256, 64, 32):
        c = max(1, round(base * scale))
        total += n * conv(prev, c)                           # each head's deconv
        if mode == 'dsm':
            total += conv(n * c, c) + conv(c, c)             # height fusion only
        else:
            total += n * (conv(n * c, c) + conv(c, c))       # every head fuses
        prev = c
    return total + sum(conv(prev, ch) for ch in head_channels)


def test_published_mtl_parameter_count():
    """320 px, semantics + normals, 'dsm' heads: the paper's ~103 M network."""
    model = mtl.build_mtl(6, sem=True, norm=True, edge=False, head_mode='dsm')
    expected = mtl_params_by_hand(6, [1, 6, 3], 'dsm')
    assert model.count_params() == expected
    assert 102e6 < expected < 104e6


def test_full_mode_parameter_count():
    model = mtl.build_mtl(5, sem=True, norm=True, edge=True, head_mode='full',
                          decoder_scale=0.125)
    assert model.count_params() == mtl_params_by_hand(5, [1, 5, 3, 1], 'full', 0.125)


def test_dae_parameter_count():
    channels = dae.input_channels(6, sem=True, norm=True, edge=False)
    assert channels == 1 + 6 + 3 + 3
    expected, prev = 0, channels
    for c in (64, 128, 256, 512):
        expected += conv(prev, c) + conv(c, c)
        prev = c
    expected += conv(512, 1024) + conv(1024, 1024)
    prev = 1024
    for c in (512, 256, 128, 64):
        expected += conv(prev, c, k=2) + conv(2 * c, c) + conv(c, c)
        prev = c
    expected += conv(64, 1)
    assert dae.build_dae(channels).count_params() == expected


@pytest.mark.parametrize('sem,norm,edge', list(itertools.product([False, True], repeat=3)))
def test_every_head_combination(sem, norm, edge):
    rng = np.random.default_rng(0)
    for head_mode, sar in itertools.product(('dsm', 'full'), (False, True)):
        channels = 4 if sar else 3
        with small_encoder():
            model = mtl.build_mtl(4, in_channels=channels, sem=sem, norm=norm, edge=edge,
                                  head_mode=head_mode, decoder_scale=0.0625)
        out = model(rng.uniform(0, 1, (2, 32, 32, channels)).astype('float32'))
        expected = {'height': 1} | ({'sem': 4} if sem else {}) | \
            ({'norm': 3} if norm else {}) | ({'edge': 1} if edge else {})
        assert {k: tuple(v.shape) for k, v in out.items()} == \
            {k: (2, 32, 32, c) for k, c in expected.items()}, (head_mode, sar)
        if sem:
            np.testing.assert_allclose(np.sum(out['sem'], -1), 1.0, atol=1e-5)
            assert np.all(np.asarray(out['sem']) >= 0)
        if edge:
            assert np.all(np.asarray(out['edge']) >= 0)   # ReLU head
        assert ('sar_fuse' in [l.name for l in model.layers]) == sar
        keras.backend.clear_session()


def test_dae_refines_by_subtracting_noise():
    model = dae.build_dae(dae.input_channels(3, edge=True), width_scale=0.0625)
    outputs = {'height': np.full((1, 32, 32, 1), 5.0, 'float32'),
               'sem': np.full((1, 32, 32, 3), 1 / 3, 'float32'),
               'norm': np.zeros((1, 32, 32, 3), 'float32'),
               'edge': np.zeros((1, 32, 32, 1), 'float32')}
    stacked = dae.assemble_input(outputs, np.ones((1, 32, 32, 3), 'float32'))
    assert stacked.shape == (1, 32, 32, 1 + 3 + 3 + 1 + 3)
    np.testing.assert_array_equal(np.asarray(stacked)[..., 0], 5.0)     # height first
    np.testing.assert_array_equal(np.asarray(stacked)[..., -3:], 1.0)   # image last
    assert model(stacked).shape == (1, 32, 32, 1)


def test_missing_imagenet_weights_error_names_the_fix(monkeypatch):
    def unavailable(*args, **kwargs):
        raise OSError('URL fetch failure')
    monkeypatch.setattr(keras.applications, 'DenseNet121', unavailable)
    with pytest.raises(mtl.BackboneWeightsError) as err:
        mtl.build_mtl(6, backbone_weights='imagenet')
    assert mtl.DENSENET_FILE in str(err.value) and 'backbone_weights = None' in str(err.value)


def test_a_network_about_to_load_a_checkpoint_skips_the_imagenet_download(monkeypatch):
    import config
    real = keras.applications.DenseNet121

    def offline(*args, weights=None, **kwargs):
        if weights is not None:
            raise OSError('URL fetch failure')
        return real(*args, weights=weights, **kwargs)
    monkeypatch.setattr(keras.applications, 'DenseNet121', offline)
    config.backbone_weights, config.mtl_decoder_scale = 'imagenet', 0.0625
    assert networks.build_mtl(config, pretrained=False).count_params() > 7e6
    with pytest.raises(mtl.BackboneWeightsError):
        networks.build_mtl(config)
