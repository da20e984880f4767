"""The networks converted for the CPU engines other than TensorFlow, cached
beside the MTL weights so that a second run reads the file instead of
converting again:

    <MTL weights>.<key[:12]>.onnx            ONNX Runtime (tf2onnx: minutes for
                                             the published networks)
    <MTL weights>.<key[:12]>.openvino.xml    OpenVINO's own format, with its
                  .openvino.bin              .bin (OpenVINO reads the traced
                                             TensorFlow graph itself: seconds)
    <MTL weights>.<key[:12]>.int8.openvino.xml   that, quantized to int8
                  .int8.openvino.bin         (utils/predict/quantize.py)

The key is a SHA-256 over everything the graph depends on: the weights
files' checksums (the DAE's too with correction), the settings that shape
the layers, the compute dtype, the bands and the ONNX opset (int8's also
its calibration's size and dataset and the quantization recipe); weights
retrained into the same file get a new key, so a conversion of other
weights is never found under it. The key is also inside the file (ONNX
metadata, OpenVINO runtime info), so a file copied or renamed onto the
name is refused in one line instead of giving another network's heights.
"""
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile

from utils.data.samples import image_channels
from utils.errors import CheckpointError, SettingError, first_line
from utils.model import weights
from utils.predict import export, quantize

KEY = 'dsmnet_conversion_key'   # ONNX metadata_props key holding the full key


def key(mtl_file, dae_file, cfg, kind='onnx'):
    """The cache key of the networks built from the WeightsFiles `mtl_file`
    and `dae_file` (None without correction) with the settings `cfg`, as
    converted for `kind` (SUFFIX)."""
    files = [f for f in (mtl_file, dae_file) if f is not None]
    facts = dict(
        weights=[f.sha256 for f in files],
        settings={f.stage: {k: getattr(cfg, k) for k in weights.ARCHITECTURE[f.stage]}
                  for f in files},
        dtype=cfg.mixed_precision, channels=image_channels(cfg), opset=export.OPSET)
    if kind == 'openvino_int8':
        facts['int8'] = dict(calibration_windows=quantize.CALIBRATION_WINDOWS,
                             dataset=cfg.dataset_name, recipe=quantize.RECIPE)
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


SUFFIX = {'onnx': '.onnx', 'openvino': '.openvino.xml',
          'openvino_int8': '.int8.openvino.xml'}
RUNTIME_INFO = ['dsmnet', 'conversion_key']     # where an OpenVINO file keeps the key


def cached_path(mtl_file, full_key, kind='onnx'):
    return f"{mtl_file.path}.{full_key[:12]}{SUFFIX[kind]}"


def onnx_model(mtl_file, dae_file, mtl, dae, cfg):
    """The path of the ONNX conversion of the networks `mtl` and `dae`
    (built from `mtl_file`, `dae_file`): the cached file when there is one,
    else converted as export.py converts them and cached."""
    return _cached('onnx', mtl_file, dae_file, mtl, dae, cfg)


def openvino_model(mtl_file, dae_file, mtl, dae, cfg, precision='float32'):
    """The path (.xml) of the networks' OpenVINO conversion, cached like
    onnx_model's; converted from the same serving function as the export.
    precision 'int8': that conversion quantized (utils/predict/quantize.py)."""
    kind = 'openvino_int8' if precision == 'int8' else 'openvino'
    return _cached(kind, mtl_file, dae_file, mtl, dae, cfg)


CONVERTER = {'onnx': 'tf2onnx', 'openvino': 'openvino', 'openvino_int8': 'nncf'}


def _cached(kind, mtl_file, dae_file, mtl, dae, cfg):
    full_key = key(mtl_file, dae_file, cfg, kind)
    path = cached_path(mtl_file, full_key, kind)
    if os.path.exists(path):
        _check(kind, path, full_key, mtl_file)
        print(f"conversion {path} reused (same weights and settings)")
        return path
    converter = CONVERTER[kind]
    if importlib.util.find_spec(converter) is None:
        raise SettingError(missing(kind))
    if kind == 'openvino_int8':    # the float32 conversion first (or its cache)
        float32 = _cached('openvino', mtl_file, dae_file, mtl, dae, cfg)
        windows = quantize.calibration_windows(cfg)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        # In the weights' folder, so the finished file is renamed into place:
        # a process reading the cache never sees half a file.
        tmp = tempfile.mkdtemp(prefix='.dsmnet_conversion_', dir=folder)
    except OSError as err:
        raise SettingError(f"{mtl_file.source} = {mtl_file.path!r}: the conversion cannot be "
                           f"cached in {folder} ({err.strerror}): copy the weights with their "
                           f".json into a folder you can write, or --engine tensorflow") from err
    try:
        print(f"converting the networks ({converter}, once for these weights) -> {path}")
        if kind == 'onnx':
            card = export.model_card(cfg, correction=dae is not None, weights={})
            export.convert(mtl, dae, cfg, card, tmp)
            converted = os.path.join(tmp, 'model.onnx')
            _write_key(converted, full_key)
        else:
            if kind == 'openvino':
                model = _convert_openvino(mtl, dae, cfg)
            else:
                import openvino as ov
                print(f"  calibrating on {len(windows)} windows of {cfg.dataset_name}'s "
                      f"training images")
                model = quantize.quantized(ov.Core().read_model(float32), windows)
            converted = _save_openvino(model, full_key, tmp)
            # the weights first: a reader finds the .xml only once its .bin is there
            os.replace(converted[:-len('.xml')] + '.bin', path[:-len('.xml')] + '.bin')
        os.replace(converted, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def missing(kind):
    """The one-line error for `kind`'s converter not installed."""
    converter = CONVERTER[kind]
    if kind == 'openvino_int8':
        return ("predict_precision = 'int8' quantizes the networks with nncf, which is not "
                "installed: pip install nncf (an option: not in requirements.txt), or "
                "predict_precision=float32")
    return (f"--engine {'onnxruntime' if kind == 'onnx' else 'openvino'} converts the "
            f"networks with {converter}, which is not installed: pip install {converter} "
            f"(requirements.txt), or --engine tensorflow")


def _convert_openvino(mtl, dae, cfg):
    import openvino as ov
    serve = export.serving_function(mtl, dae, image_channels(cfg))
    return ov.convert_model(serve.get_concrete_function())


def _save_openvino(model, full_key, folder):
    import openvino as ov
    model.set_rt_info(full_key, RUNTIME_INFO)
    path = os.path.join(folder, 'model.xml')
    ov.save_model(model, path, compress_to_fp16=False)    # float32 weights, as trained
    return path


def _write_key(path, full_key):
    import onnx
    model = onnx.load(path)
    entry = model.metadata_props.add()
    entry.key, entry.value = KEY, full_key
    onnx.save(model, path)


def _check(kind, path, full_key, mtl_file):
    """CheckpointError unless the file at `path` records `full_key`."""
    try:
        if kind == 'onnx':
            import onnx
            found = {p.key: p.value for p in onnx.load(path).metadata_props}.get(KEY)
        else:
            import openvino as ov
            model = ov.Core().read_model(path)
            found = model.get_rt_info(RUNTIME_INFO).astype(str) \
                if model.has_rt_info(RUNTIME_INFO) else None
    except Exception as err:    # truncated or not a model: onnx and OpenVINO raise their own
        found = f"nothing readable ({first_line(err)[:80]})"
    if found != full_key:
        raise CheckpointError(
            f"{path}: not the conversion of {mtl_file.source} = {mtl_file.path!r} with these "
            f"settings (it records key {str(found)[:12]}, they have {full_key[:12]}): delete "
            f"it and the next run converts the weights again")
