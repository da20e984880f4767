"""The two networks as the settings build them, fresh or from their weights.

build_mtl and build_dae turn a run's settings `cfg` into nets/mtl.py's and
nets/dae.py's arguments; trained() builds one under a strategy and fills it
from a WeightsFile. Training, testing, prediction, export and the
benchmarks all build their networks here, so they build the same thing.
"""
from nets import dae as dae_net, mtl as mtl_net
from utils.data.samples import image_channels
from utils.model import heads


def build_mtl(cfg, pretrained=True, num_classes=None):
    """The MTL with the settings `cfg`. pretrained=False skips the encoder's
    backbone_weights, for a network whose weights are loaded next (they
    replace every weight, so no ImageNet download is needed).
    num_classes: another class count than label_codes' (a weights file's)."""
    return mtl_net.build_mtl(
        num_classes=num_classes or len(cfg.label_codes),
        in_channels=image_channels(cfg),
        head_mode=cfg.mtl_head_mode, decoder_scale=cfg.mtl_decoder_scale,
        backbone_weights=cfg.backbone_weights if pretrained else None,
        dropout=cfg.dropout_rate,
        sync_batchnorm=cfg.sync_batchnorm, freeze_backbone=cfg.mtl_bb_freeze,
        bn_momentum=cfg.bn_momentum, **heads.switches(cfg))


def build_dae(cfg, num_classes=None):
    """The DAE with the settings `cfg` (num_classes: as for build_mtl)."""
    channels = dae_net.input_channels(num_classes or len(cfg.label_codes),
                                      image_channels(cfg), **heads.switches(cfg))
    return dae_net.build_dae(channels, cfg.dae_width_scale, cfg.dropout_rate)


def build(stage, cfg, pretrained=True):
    """The network of a stage ('mtl' or 'dae')."""
    return build_mtl(cfg, pretrained) if stage == 'mtl' else build_dae(cfg)


def trained(weights, cfg, strategy):
    """The network of `weights` (a WeightsFile) built with the settings
    `cfg` under `strategy`, checked against them and loaded."""
    weights.check(cfg)
    with strategy.scope():
        # The weights replace every weight: no backbone download.
        model = build(weights.stage, cfg, pretrained=False)
        weights.load_into(model)
    return model
