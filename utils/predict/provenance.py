"""What shaped an output, recorded in it (GDAL_METADATA): the weights'
checksums, the prediction settings, the input and the code version; and
whether a rerun may keep an image's outputs (stale)."""
import json
import os
import subprocess

from utils.geo.files import is_remote, metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def project_version():
    """`git describe` of this checkout, or 'unknown' outside one."""
    try:
        proc = subprocess.run(['git', 'describe', '--always', '--dirty', '--tags'],
                              cwd=ROOT, capture_output=True, text=True, timeout=10)
        return proc.stdout.strip() or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def provenance(mtl, dae, bands, cfg, calibration=None):
    """The record every output of a run carries: the weights files' SHA-256
    (`mtl`, `dae`: WeightsFiles, dae None without correction), the
    prediction settings, the uncertainty's `calibration` where one is
    written (a refit redoes the images) and the project version. Everything
    but the version must match for a rerun to keep an image's outputs."""
    shaping = dict(crop=cfg.cropSize, stride=cfg.predict_stride,
                   window=cfg.predict_window, flips=cfg.predict_flips,
                   bands=[b + 1 for b in bands], image_scale=cfg.image_scale,
                   correction=dae is not None)
    # only when not float32: outputs of runs before the setting existed stay valid
    if cfg.predict_precision != 'float32':
        shaping['precision'] = cfg.predict_precision
    return {'DSMNET_MTL_SHA256': mtl.sha256,
            'DSMNET_DAE_SHA256': dae.sha256 if dae is not None else 'none',
            'DSMNET_PREDICTION': json.dumps(shaping, sort_keys=True),
            'DSMNET_VERSION': project_version()} | (
        {} if calibration is None else
        {'DSMNET_UNCERTAINTY': json.dumps(calibration.record(), sort_keys=True)})


def input_record(path):
    """The input file as the outputs record it: a changed file is redone (an
    address: recorded as it is)."""
    if is_remote(path):
        return json.dumps({'address': path})
    stat = os.stat(path)
    return json.dumps({'file': os.path.basename(path), 'bytes': stat.st_size,
                       'modified_ns': stat.st_mtime_ns}, sort_keys=True)


def stale_outputs(paths, record):
    """None when every output exists and records `record` (the version
    aside), else why the image must be predicted again (an unreadable
    output records nothing: redone)."""
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        return f"{os.path.basename(missing[0])} is missing"
    for key, path in paths.items():
        if key == 'preview':
            continue
        found = metadata(path)
        differ = [k for k in record if k != 'DSMNET_VERSION' and found.get(k) != record[k]]
        if differ:
            return (f"{os.path.basename(path)} was made with other "
                    f"{', '.join(k.replace('DSMNET_', '').lower() for k in differ)}")
    return None
