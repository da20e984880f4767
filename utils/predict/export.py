"""Trained networks as files other tools run: the MTL (and the DAE after it,
as one graph, with correction) in float32 as a SavedModel and as an ONNX
model, each carrying the model card: what the network expects (bands,
scale, window size and the multiple it must be of, blending) and what it
returns (heights in metres, class probabilities with the dataset's classes
and colours).

The graph takes windows scaled as the training images were and returns
their maps; the sliding windows and their blending (utils/predict/blend.py)
stay outside it, as the card's `windows` describe them.
"""
import json
import os
import subprocess
import sys

import numpy as np

from nets import dae as dae_net
from utils.data.labels import class_names
from utils.data.samples import image_channels
from utils.errors import CheckpointError, first_line
from utils.geo.classes import ClassMap
from utils.model import heads
from utils.model.weights import Contract

OPSET = 17          # ONNX opset: ONNX Runtime 1.12+ and QGIS' bundled runtimes run it
INPUT = 'image'     # the graph's input: [batch, rows, cols, bands] float32
SIGNATURE = 'serving_default'
CARD_KEY = 'model_card'     # ONNX metadata_props key of the card (JSON)
CARD_FORMAT = 'dsmnet-model-card/1'
UNIT_ROUNDOFF = 2.0 ** -24      # float32
LAMBDA = 10     # height_tolerance's multiple of the rounding errors' scale: exceeded
                # with probability 2 exp(-50) ~ 4e-22 per output
ELEMENTWISE = 4     # roundings of a layer's elementwise work: bias, activation, scale and
                    # shift, each within an ulp or two (vectorised exp, sqrt)


def exported_heads(cfg):
    """The heads an export returns: those predict.py can write that cfg's
    networks have (the height first)."""
    return [h for h in heads.from_config(cfg) if h.output]


def serving_function(mtl, dae, channels):
    """tf.function(image [n, rows, cols, channels] float32) -> {head name:
    float32 maps}: 'height' [n, rows, cols] (refined by `dae` when given),
    the other heads [n, rows, cols, channels]."""
    import tensorflow as tf
    height = heads.HEIGHT.name

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32,
                                                name=INPUT)])
    def serve(image):
        out = mtl(image, training=False)
        maps = {name: tf.cast(value, tf.float32) for name, value in out.items()
                if heads.by_name(name) is not None and heads.by_name(name).output}
        if dae is not None:
            maps[height] = dae_net.refine(dae, out, image)
        maps[height] = maps[height][..., 0]
        return maps
    return serve


def height_tolerance(models, magnitude):
    """How far two float32 engines' heights may differ, for heights of
    largest absolute value `magnitude`:

        LAMBDA * u * sqrt(sum over layers l of K_l) * magnitude

    with u = 2^-24 and K_l the roundings feeding one output of layer l
    (_roundings). Why: a sum of K float32 products errs by at most K u
    relative in the worst case, but its roundings fall up as often as down,
    so its error grows like sqrt(K) u; modelled as independent and bounded
    by u, they exceed LAMBDA sqrt(K) u with probability at most
    2 exp(-LAMBDA^2 / 2) (Hoeffding's inequality, as Higham and Mary, SIAM
    J. Sci. Comput. 41, 2019). With terms of either sign the partial sums
    are of the size of the result, so that is relative to the result.
    BatchNormalization keeps activations near unit scale, so a layer passes
    its input's relative error on about unchanged, and the layers'
    independent errors add in quadrature: sqrt(sum_l K_l), relative to the
    heights' own magnitude (no floor: a net of small heights has small
    errors). The worst case, sum_l K_l u times max(magnitude, 1), allowed
    1.6% of the largest height for the published MTL + DAE; this bound
    (0.030% there: README, Export) lets a 0.1% error through only for
    networks of more than (1e-3 / (LAMBDA u))^2 = 2.8e6 roundings. Engines
    differ in summation order, fused operations and vectorised exp/sqrt,
    all within it."""
    roundings = sum(_roundings(layer) for model in models for layer in _leaf_layers(model))
    return LAMBDA * UNIT_ROUNDOFF * float(np.sqrt(roundings)) * float(magnitude)


def _roundings(layer):
    """Rounding steps feeding one output value of `layer`: its products and
    sums (a convolution's or dense layer's fan-in: kernel rows x cols x
    input channels; a transposed convolution of stride s reaches each
    output with ceil(k / s) of its k taps per axis, of every input
    channel; an average pool its window), plus ELEMENTWISE for the bias,
    activation, or scale and shift every layer may apply."""
    import keras
    kernel = getattr(layer, 'kernel', None)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        rows, cols, _, inputs = kernel.shape     # Keras: (rows, cols, filters, inputs)
        taps = int(np.prod([-(-k // s) for k, s in zip((rows, cols), layer.strides)])) * inputs
    elif kernel is not None:                    # (rows, cols, inputs, filters), (inputs, units)
        taps = int(np.prod(kernel.shape[:-1]))
    elif isinstance(layer, keras.layers.AveragePooling2D):
        taps = int(np.prod(layer.pool_size))
    else:
        taps = 0
    return taps + ELEMENTWISE


def _leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, 'layers'):
            yield from _leaf_layers(layer)
        else:
            yield layer


def model_card(cfg, *, contract=None, correction, weights, gsd=None, version='unknown'):
    """The card: every fact a user of the files needs, as JSON-ready dicts.
    contract: the MTL weights' input Contract (model/weights.py; None: the
    settings' own, without band statistics); weights: {'mtl': path, 'dae':
    path or None}."""
    classes_of = ClassMap(cfg.label_codes)
    channels = image_channels(cfg)
    contract = contract or Contract(cfg.cropSize, list(range(1, channels + 1)),
                                    cfg.image_scale)
    bands = contract.bands
    names = ['red', 'green', 'blue'] + (['SAR'] if cfg.sar_mode else [])
    outputs = {}
    for head in exported_heads(cfg):
        if head is heads.HEIGHT:
            outputs[head.name] = dict(
                shape=['batch', 'rows', 'cols'], units='metres',
                meaning='height above ground (nDSM)' + (', refined by the DAE'
                                                       if correction else ''))
        elif head.is_classes:
            outputs[head.name] = dict(
                shape=['batch', 'rows', 'cols', len(cfg.label_codes)], units='probability',
                meaning='class probabilities (softmax) in the order of `classes`; '
                        'the class is their argmax')
        else:
            outputs[head.name] = dict(
                shape=['batch', 'rows', 'cols', head.channels],
                units='unit normal (x along cols, y along rows, z up) stored as '
                      + ('(n + 1) / 2' if cfg.normalize_flag else '255 (n + 1) / 2'),
                meaning='surface normals')
    scale = cfg.image_scale
    scale_rule = {
        'auto': 'integer images divided by the maximum of their bit depth (uint8: 255, '
                'uint16: 65535 unless the file declares fewer bits); float images '
                'already in [0, 1] kept, others min-max scaled per image',
        'minmax': 'min-max scaled per image to [0, 1]'}.get(
        scale, f'divided by {scale}') if isinstance(scale, str) else f'divided by {scale}'
    return {
        'format': CARD_FORMAT,
        'network': 'MTL + DAE' if correction else 'MTL',
        'dataset': cfg.dataset_name,
        'classes': [dict(index=i, value=int(v), name=name,
                         code=c if isinstance(c, int) else list(c),
                         colour=[int(x) for x in classes_of.colours[i]])
                    for i, (v, c, name) in enumerate(zip(classes_of.values, cfg.label_codes,
                                                         class_names(cfg)))],
        'input': dict(
            name=INPUT, shape=['batch', 'rows', 'cols', channels], dtype='float32',
            bands=[f"{names[i]} (band {b} of the source image)"
                   for i, b in enumerate(bands)],
            band_order=bands, image_scale=scale, scale_rule=scale_rule,
            value_range=[0.0, 1.0], multiple_of=cfg.CROP_MULTIPLE,
            **{k: getattr(contract, k) for k in ('band_mean', 'band_spread')
               if getattr(contract, k) is not None}),
        'ground_sampling_distance_m': gsd,
        'windows': dict(size=cfg.cropSize, stride=cfg.predict_stride,
                        blending=cfg.predict_window, flips=cfg.predict_flips,
                        note='windows of `size` px every `stride` px, the last one '
                             'at the border; overlaps blended with the `blending` '
                             'weight (README, Predict)'),
        'outputs': outputs,
        'onnx_opset': OPSET,
        'saved_model_signature': SIGNATURE,
        'dtype': 'float32',
        'weights': {k: os.path.basename(v) for k, v in weights.items() if v},
        'version': version,
    }


def write_saved_model(serve, models, card_path, folder):
    """A SavedModel of `serve` (signature SIGNATURE) in `folder`, the card
    among its assets (assets/model_card.json)."""
    import tensorflow as tf
    module = tf.Module()
    module.networks = list(models)
    module.serve = serve
    module.model_card = tf.saved_model.Asset(card_path)
    tf.saved_model.save(module, folder, signatures={SIGNATURE: serve})


def write_onnx(saved_model, card, path):
    """Convert the SavedModel to ONNX (tf2onnx, opset OPSET) at `path`, name
    its dimensions as the card does and put the card in its metadata."""
    import onnx
    tmp = path + '.tmp'
    proc = subprocess.run([sys.executable, '-m', 'tf2onnx.convert', '--saved-model',
                           saved_model, '--signature_def', SIGNATURE, '--opset', str(OPSET),
                           '--output', tmp], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ['no message'])[-1]
        raise RuntimeError(f"tf2onnx could not convert {saved_model}: {last}")
    model = onnx.load(tmp)
    dims = {INPUT: card['input']['shape']} | {k: v['shape'] for k, v in card['outputs'].items()}
    for value in list(model.graph.input) + list(model.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, dims.get(value.name, ())):
            if isinstance(name, str):
                dim.dim_param = name
    model.doc_string = (f"DSMNet {card['network']} trained on {card['dataset']}: "
                        f"{INPUT} [batch, rows, cols, bands] scaled to [0, 1] -> height "
                        f"(metres) and class probabilities; see metadata '{CARD_KEY}'")
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, json.dumps(card)
    onnx.save(model, path)
    os.remove(tmp)


def onnx_session(path_or_bytes, threads=0):
    """An ONNX Runtime CPU session (threads 0: every core)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes, options, providers=['CPUExecutionProvider'])


def check_onnx(path, expect=None):
    """The card of the exported ONNX file `path` after checking it is one:
    an input INPUT [batch, rows, cols, bands] and a 'height' output, a card
    in its metadata that fits them, and (expect: {card key: value}) the
    facts a caller relies on. CheckpointError naming the file and the
    mismatch otherwise."""
    import onnxruntime as ort
    try:
        session = onnx_session(path, threads=1)
    except (ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, OSError) as err:
        raise CheckpointError(f"{path}: not an ONNX model ONNX Runtime reads "
                              f"({first_line(err)}); export one with export.py") from err
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if list(inputs) != [INPUT] or len(inputs[INPUT].shape) != 4 or \
            inputs[INPUT].type != 'tensor(float)' or heads.HEIGHT.name not in outputs:
        found = ', '.join(f"{i.name} {i.shape} {i.type}" for i in inputs.values())
        raise CheckpointError(
            f"{path}: inputs {found}, outputs {', '.join(sorted(outputs))}; an exported "
            f"height model has one input {INPUT} [batch, rows, cols, bands] float and a "
            f"{heads.HEIGHT.name} output: export one with export.py")
    meta = session.get_modelmeta().custom_metadata_map
    if CARD_KEY not in meta:
        raise CheckpointError(f"{path}: no model card (metadata {CARD_KEY!r}); without it "
                              f"bands, scale and window size are unknown: export the "
                              f"model again with export.py")
    card = json.loads(meta[CARD_KEY])
    bands = inputs[INPUT].shape[3]
    if isinstance(bands, int) and bands != card['input']['shape'][3]:
        raise CheckpointError(f"{path}: its input has {bands} bands but its model card "
                              f"says {card['input']['shape'][3]}: export it again")
    for key, value in (expect or {}).items():
        if card.get(key) != value:
            raise CheckpointError(f"{path}: its model card has {key} = {card.get(key)!r}, "
                                  f"expected {value!r}")
    return card


def check(found, expected, tolerance):
    """CheckpointError unless the heights each exported file gave, {path:
    heights}, are the Keras networks' `expected` within `tolerance`
    (height_tolerance): the export check before anything is replaced.
    Returns {path: largest difference}."""
    worst = {}
    for path, heights in found.items():
        worst[path] = float(np.abs(heights - expected).max())
        if not worst[path] <= tolerance:
            raise CheckpointError(f"{path}: heights differ from the Keras networks' by up to "
                                  f"{worst[path]:.3g} m (tolerance {tolerance:.3g}); the "
                                  f"conversion is faulty, nothing was replaced")
    return worst


def convert(mtl, dae, cfg, card, folder):
    """The networks as `folder`/model_card.json (the card), saved_model/ and
    model.onnx; returns the serving function they were made from."""
    serve = serving_function(mtl, dae, image_channels(cfg))
    card_path = os.path.join(folder, 'model_card.json')
    with open(card_path, 'w') as f:
        json.dump(card, f, indent=2)
    write_saved_model(serve, [m for m in (mtl, dae) if m is not None], card_path,
                      os.path.join(folder, 'saved_model'))
    write_onnx(os.path.join(folder, 'saved_model'), card, os.path.join(folder, 'model.onnx'))
    return serve
