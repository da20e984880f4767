"""The networks converted to ONNX for the CPU engines other than TensorFlow
(ONNX Runtime, OpenVINO), cached beside the MTL weights as

    <MTL weights>.<key[:12]>.onnx

so that a second run reads the file instead of running tf2onnx again
(minutes for the published networks). The key is a SHA-256 over everything
the graph depends on: the weights files' checksums (the DAE's too with
correction), the settings that shape the layers, the compute dtype, the
bands and the ONNX opset; weights retrained into the same file get a new
key, so a conversion of other weights is never found under it. The key is
also in the file's metadata, so a file copied or renamed onto the name is
refused in one line instead of giving another network's heights.
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
from utils.predict import export

KEY = 'dsmnet_conversion_key'   # ONNX metadata_props key holding the full key


def key(mtl_file, dae_file, cfg):
    """The cache key of the networks built from the WeightsFiles `mtl_file`
    and `dae_file` (None without correction) with the settings `cfg`."""
    files = [f for f in (mtl_file, dae_file) if f is not None]
    facts = dict(
        weights=[f.sha256 for f in files],
        settings={f.stage: {k: getattr(cfg, k) for k in weights.ARCHITECTURE[f.stage]}
                  for f in files},
        dtype=cfg.mixed_precision, channels=image_channels(cfg), opset=export.OPSET)
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def cached_path(mtl_file, full_key):
    return f"{mtl_file.path}.{full_key[:12]}.onnx"


def onnx_model(mtl_file, dae_file, mtl, dae, cfg):
    """The path of the ONNX conversion of the networks `mtl` and `dae`
    (built from `mtl_file`, `dae_file`): the cached file when there is one,
    else converted as export.py converts them and cached."""
    full_key = key(mtl_file, dae_file, cfg)
    path = cached_path(mtl_file, full_key)
    if os.path.exists(path):
        _check(path, full_key, mtl_file)
        print(f"conversion {path} reused (same weights and settings)")
        return path
    if importlib.util.find_spec('tf2onnx') is None:
        raise SettingError("the ONNX engines convert the networks with tf2onnx, which is not "
                           "installed: pip install tf2onnx (requirements.txt), or --engine "
                           "tensorflow")
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
        print(f"converting the networks to ONNX (tf2onnx, once for these weights) -> {path}")
        card = export.model_card(cfg, correction=dae is not None, weights={})
        export.convert(mtl, dae, cfg, card, tmp)
        converted = os.path.join(tmp, 'model.onnx')
        _write_key(converted, full_key)
        os.replace(converted, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _write_key(path, full_key):
    import onnx
    model = onnx.load(path)
    entry = model.metadata_props.add()
    entry.key, entry.value = KEY, full_key
    onnx.save(model, path)


def _check(path, full_key, mtl_file):
    """CheckpointError unless the file at `path` records `full_key`."""
    import onnx
    try:
        found = {p.key: p.value for p in onnx.load(path).metadata_props}.get(KEY)
    except Exception as err:    # truncated or not ONNX: onnx raises its own kinds
        found = f"nothing readable ({first_line(err)[:80]})"
    if found != full_key:
        raise CheckpointError(
            f"{path}: not the conversion of {mtl_file.source} = {mtl_file.path!r} with these "
            f"settings (it records key {str(found)[:12]}, they have {full_key[:12]}): delete "
            f"it and the next run converts the weights again")
