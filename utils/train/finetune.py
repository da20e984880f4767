"""Fine-tuning: a stage's network started from a weights file
(mtl_init_weights, dae_init_weights) instead of its initial weights.

The settings that shape the network must be the file's, except
label_codes: with another class list the layers that depend on it start as
built (the MTL's semantic output; the DAE's first convolution where it
reads the semantic probabilities) and everything else is loaded.
"""
from nets import dae as dae_net
from utils.data.samples import image_channels
from utils.model import heads
from utils.model.weights import WeightsFile, as_recorded

SETTING_OF_INIT = {'mtl': 'mtl_init_weights', 'dae': 'dae_init_weights'}


def start_from(model, stage, build, cfg):
    """Start `model` from the file cfg.<stage>_init_weights names; returns
    what it did, for the training log, or None when the setting is None.
    build(num_classes): the same network for another class count, for a file
    of another class list."""
    setting = SETTING_OF_INIT[stage]
    path = getattr(cfg, setting)
    if path is None:
        return None
    weights = WeightsFile(path, stage, setting)
    weights.check(cfg, skip=('label_codes',))
    current = as_recorded(cfg, stage)['label_codes']
    codes = weights.settings.get('label_codes', current)
    if codes == current or not cfg.sem_flag:
        weights.load_into(model)
        return f"{path} (every layer)"
    donor = build(len(codes))
    weights.load_into(donor)
    fresh = _transfer(donor, model, len(codes), cfg)
    return (f"{path}; label_codes differ from its {codes}: {', '.join(fresh)} "
            f"re-initialised, every other layer loaded")


def _transfer(donor, model, donor_classes, cfg):
    """Copy every layer of `donor` whose weights have the shapes of `model`'s;
    the DAE's first convolution channel by channel except the semantic
    probabilities'. Returns what stays as built, in words."""
    fresh = []
    # Layer by layer in build order: the same code built both, and Keras
    # numbers unnamed layers (an encoder's) per process, not per model.
    for layer, twin in zip(model.layers, donor.layers, strict=True):
        source = twin.get_weights()
        target = layer.get_weights()
        if [w.shape for w in source] == [w.shape for w in target]:
            layer.set_weights(source)
        elif layer.name == dae_net.FIRST_CONV:
            kernel, bias = target
            parts = [dae_net.input_parts(n, image_channels(cfg), **heads.switches(cfg))
                     for n in (donor_classes, len(cfg.label_codes))]
            start = [0, 0]
            for (name, old), (_, new) in zip(*parts):
                if name != 'sem':
                    kernel[:, :, start[1]:start[1] + new] = source[0][:, :, start[0]:start[0] + old]
                start = [start[0] + old, start[1] + new]
            layer.set_weights([kernel, source[1]])
            fresh.append(f"{layer.name} (the semantic input channels)")
        else:
            fresh.append(layer.name)
    return fresh
