"""The exported networks as the QGIS plugin Deepness runs them: ONNX models
that describe themselves in their metadata.

What the plugin expects, read from its model loader (PUTvision/
qgis-plugin-deepness 0.6.5, src/deepness/processing/models/): one input
[batch, channels, rows, cols] whose last dimension fixes the tile size and
an integer batch fixes its batch size; the tile it feeds is the layer's
bands, resampled to `resolution`, divided by 255 and, with
standardization_mean and standardization_std in the metadata, standardised;
a Regressor's outputs [batch, 1, rows, cols], square, times
reg_output_scaling; a Segmentor's [batch, classes, rows, cols] probabilities,
whose argmax is the class once those under seg_thresh are zeroed. Every
metadata value is read with json.loads. Tiles overlap by `tiles_overlap`
percent of the tile, floor(tile * percent / 100) px; each keeps the part
that half the overlap leaves at its inner sides, without blending.

Both files are model.onnx with a Transpose (and a scale, where the training
images were not 8-bit) before it and the one output after it, shapes fixed.
"""
import json
import math

import numpy as np

from utils.errors import CheckpointError, SettingError
from utils.model import heads
from utils.predict import export

KINDS = ('height', 'classes')
FILES = {'height': 'model_deepness.onnx', 'classes': 'model_deepness_classes.onnx'}
MODEL_TYPES = {'height': 'Regressor', 'classes': 'Segmentor'}
INPUT = 'image'
PLUGIN_SCALE = 255.0        # the plugin divides every band's values by it
HEIGHT_NAME = 'height_m'    # the plugin names the output layer by class_names


def kinds(requested, cfg, mtl_path):
    """The models `--deepness requested` asks for: 'auto' the height and,
    with a semantics head, the classes; or a comma-separated list of KINDS."""
    has_classes = any(h.is_classes for h in heads.from_config(cfg))
    if requested == 'auto':
        return ['height'] + (['classes'] if has_classes else [])
    asked = [k.strip() for k in requested.split(',') if k.strip()]
    if not asked or set(asked) - set(KINDS):
        raise SettingError(f"--deepness {requested}: list any of {', '.join(KINDS)}, e.g. "
                           f"--deepness height,classes (or --deepness alone for all the "
                           f"weights have)")
    if 'classes' in asked and not has_classes:
        raise SettingError(f"--deepness {requested}: {mtl_path} has no semantics head "
                           f"(sem_flag=False), so no Deepness Segmentor; leave classes out: "
                           f"--deepness height")
    return asked


def tile_size(cfg, mtl_file, explicit):
    """The tile the models are fixed at: the window the weights record
    (cropSize in their .json) or --set cropSize gives; SettingError if
    neither fixes it, as any other size would be a guess."""
    if 'cropSize' not in mtl_file.settings and 'cropSize' not in explicit:
        raise SettingError(f"--deepness: {mtl_file.path}.json records no window size "
                           f"(cropSize), so the tile the Deepness models are fixed at is not "
                           f"known; give the crop the network was trained on: --set "
                           f"cropSize=N")
    return int(cfg.cropSize)


def input_factor(cfg):
    """What turns the plugin's values (layer / 255) into the network's
    (layer / image_scale): 1 for 'auto' on 8-bit imagery, 255 / N for a
    number N; SettingError for 'minmax', which scales each image by its own
    range, never a tile's."""
    scale = cfg.image_scale
    if scale == 'auto':
        return 1.0
    if isinstance(scale, str):
        raise SettingError(f"--deepness: image_scale = {scale!r} scales each image by its "
                           f"own range, which a plugin feeding tiles divided by 255 cannot "
                           f"do; export weights trained with image_scale 'auto' or a number")
    return PLUGIN_SCALE / float(scale)


def plugin_overlap(tile, percent):
    """The overlap in px the plugin takes from `percent` of `tile`."""
    return math.floor(tile * percent / 100)


def overlap_percent(tile, stride):
    """The whole percent of `tile` that the plugin turns into the overlap
    nearest tile - stride (the windows' recommended step); of those, the
    nearest to its exact share."""
    want = tile - stride
    return min(range(100), key=lambda p: (abs(plugin_overlap(tile, p) - want),
                                          abs(p - 100 * want / tile)))


def metadata(kind, card, tile, gsd):
    """{key: JSON text} the plugin reads from the model of `kind`."""
    meta = {
        'model_type': MODEL_TYPES[kind],
        'resolution': round(gsd * 100, 6),      # cm per pixel
        'tile_size': tile,
        'tiles_overlap': overlap_percent(tile, card['windows']['stride']),
        # Our networks take the scaled values as they are (the training images'
        # statistics only warn of unlike imagery), so no standardization_*.
    }
    if kind == 'height':
        meta.update(class_names={0: HEIGHT_NAME}, reg_output_scaling=1.0)  # metres as they are
    else:
        # argmax of every probability and no smoothing, as predict.py's class map
        meta.update(class_names={c['index']: c['name'].replace('_', ' ') for c in card['classes']},
                    seg_thresh=0.0, seg_small_segment=0)
    return {k: json.dumps(v) for k, v in meta.items()}


def write(source, path, kind, card, *, tile, factor, gsd):
    """The Deepness model of `kind` at `path`, from the exported ONNX
    `source`: input INPUT [1, bands, tile, tile] (the plugin's values),
    times `factor`, transposed to the network's [1, tile, tile, bands]; its
    one output [1, channels, tile, tile]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = onnx.load(source)
    graph = model.graph
    head = heads.HEIGHT if kind == 'height' else next(
        heads.by_name(n) for n in card['outputs'] if heads.by_name(n).is_classes)
    channels = 1 if kind == 'height' else len(card['classes'])
    bands = card['input']['shape'][3]
    inner = {INPUT: INPUT + '_nhwc', head.name: head.name + '_nhwc'}
    for node in graph.node:
        node.input[:] = [inner.get(n, n) for n in node.input]
        node.output[:] = [inner.get(n, n) for n in node.output]
    for value in graph.value_info:
        value.name = inner.get(value.name, value.name)
    before, after, x = [], [], INPUT
    if factor != 1.0:
        graph.initializer.append(numpy_helper.from_array(np.float32(factor), 'plugin_factor'))
        before.append(helper.make_node('Mul', [x, 'plugin_factor'], ['image_scaled']))
        x = 'image_scaled'
    before.append(helper.make_node('Transpose', [x], [inner[INPUT]], perm=[0, 2, 3, 1]))
    if kind == 'height':
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), 'channel_axis'))
        after.append(helper.make_node('Unsqueeze', [inner[head.name], 'channel_axis'],
                                      [head.name]))
    else:
        after.append(helper.make_node('Transpose', [inner[head.name]], [head.name],
                                      perm=[0, 3, 1, 2]))
    nodes = before + list(graph.node) + after
    # Keep what the one output needs: the other heads' nodes go.
    needed, kept = {head.name}, []
    for node in reversed(nodes):
        if needed & set(node.output):
            kept.append(node)
            needed.update(node.input)
    # A new graph of copies: the nodes kept come from the old one.
    model.graph.CopyFrom(helper.make_graph(
        list(reversed(kept)), graph.name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, bands, tile, tile])],
        [helper.make_tensor_value_info(head.name, TensorProto.FLOAT,
                                       [1, channels, tile, tile])],
        initializer=[t for t in graph.initializer if t.name in needed],
        value_info=[v for v in graph.value_info if v.name in needed]))
    del model.metadata_props[:]
    for key, value in metadata(kind, card, tile, gsd).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (f"DSMNet {card['network']} ({card['dataset']}) for the QGIS plugin "
                        f"Deepness: {MODEL_TYPES[kind]} of the "
                        + ('height in metres' if kind == 'height' else 'class probabilities')
                        + f" on {tile} px tiles of the layer's bands divided by 255")
    onnx.checker.check_model(model)
    onnx.save(model, path)


def run(path, values):
    """The model at `path` on windows [n, tile, tile, bands] of the plugin's
    values (layer / 255), one at a time as its batch of 1: [n, channels,
    tile, tile]."""
    session = export.onnx_session(path, threads=1)
    nchw = np.transpose(np.asarray(values, np.float32), (0, 3, 1, 2))
    return np.concatenate([session.run(None, {INPUT: w[None]})[0] for w in nchw])


def plugin_maps(kind, maps):
    """The output the model of `kind` gives, [n, channels, tile, tile], from
    the serving function's maps {head: [n, rows, cols(, channels)]}."""
    if kind == 'height':
        return maps[heads.HEIGHT.name][:, None]
    name = next(n for n in maps if heads.by_name(n) is not None and heads.by_name(n).is_classes)
    return np.transpose(maps[name], (0, 3, 1, 2))


def check(paths, values, maps, tolerances):
    """CheckpointError unless each model {kind: path} gives on the plugin's
    `values` the serving function's `maps` (plugin_maps) within
    `tolerances` {kind: bound}; returns {kind: largest difference}."""
    worst = {}
    for kind, path in paths.items():
        worst[kind] = float(np.abs(run(path, values) - plugin_maps(kind, maps)).max())
        if not worst[kind] <= tolerances[kind]:
            raise CheckpointError(f"{path}: its {kind} differ from the Keras networks' by up "
                                  f"to {worst[kind]:.3g} (tolerance {tolerances[kind]:.3g}); "
                                  f"the conversion is faulty, nothing was replaced")
    return worst
