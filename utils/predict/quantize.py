"""int8 networks for predict_precision = 'int8': OpenVINO's float32
conversion quantized after training by NNCF (weights and activations to
8 bits, scales from the activations seen on calibration windows), with
NNCF's defaults: symmetric quantizers, bias correction.

The calibration windows are cut from the training images of dataset_name
(the images the weights learnt from, as the network sees them: scaled and
banded as predict.py scales them), CALIBRATION_WINDOWS of them spread over
every image, on the grid of non-overlapping crops. The dataset is read at
conversion time only; the cached int8 file (utils/predict/conversion.py)
is used afterwards without it.
"""
import math

import numpy as np

from utils.errors import DatasetError, SettingError, first_line

CALIBRATION_WINDOWS = 300   # NNCF's default subset size
# How the networks are quantized, part of the cached file's key: a change
# here converts them again.
RECIPE = 'nncf.quantize defaults; convolutions of stacked inputs in float32'


def calibration_windows(cfg, count=CALIBRATION_WINDOWS):
    """Up to `count` float32 crop x crop x C windows of the training
    split's images: an equal share from each image, evenly spaced over its
    grid of non-overlapping crops. SettingError naming dataset_name when
    the split cannot be read or holds no image as large as a window."""
    from utils.data.layouts import find_split
    from utils.data.samples import load_sample
    from utils.geo.grid import starts
    crop = cfg.cropSize
    try:
        samples = find_split(cfg, 'train')
    except DatasetError as err:
        raise SettingError(f"predict_precision = 'int8' calibrates on the training images of "
                           f"dataset_name = {cfg.dataset_name!r}, which cannot be read "
                           f"({first_line(err)}): set dataset_name and shortcut_path to the "
                           f"dataset the weights were trained on, or predict_precision="
                           f"float32") from err
    share = math.ceil(count / max(len(samples), 1))
    windows = []
    for sample in samples:
        image = load_sample(cfg, sample).image
        if image.shape[0] < crop or image.shape[1] < crop:
            continue
        corners = [(y, x) for y in starts(image.shape[0], crop, crop)
                   for x in starts(image.shape[1], crop, crop)]
        picked = np.unique(np.linspace(0, len(corners) - 1, min(share, len(corners)))
                           .round().astype(int))
        windows += [np.ascontiguousarray(image[y:y + crop, x:x + crop], np.float32)
                    for y, x in (corners[i] for i in picked)]
        if len(windows) >= count:
            break
    if not windows:
        raise SettingError(f"predict_precision = 'int8': the training split of dataset_name = "
                           f"{cfg.dataset_name!r} has no image of at least cropSize = {crop} "
                           f"px to calibrate on: set predict_precision=float32")
    return windows[:count]


def quantized(model, windows):
    """The OpenVINO `model` (float32) quantized to int8 by NNCF, calibrated
    on `windows` (one window per calibration batch), but the convolutions
    that stacked_input_convolutions finds, left in float32."""
    import nncf
    data = nncf.Dataset(windows, lambda window: window[None])
    keep = stacked_input_convolutions(model)
    return nncf.quantize(model, data, subset_size=len(windows),
                         ignored_scope=nncf.IgnoredScope(names=keep) if keep else None)


def stacked_input_convolutions(model):
    """Names of the convolutions of the OpenVINO `model` whose input stacks
    the network's input image with other maps: the DAE's first layer,
    whose input is the MTL's height (metres), class probabilities, normals
    and the image. NNCF quantizes a stack with one scale for all its
    inputs, from the largest range: measured on the synthetic main job,
    the image kept 8 of its 256 levels, heights were clipped at 15 m, and
    the refined RMSE grew 4.5% where the MTL's own grew 0.3%."""
    def source(node):   # through the layout changes the conversion inserts
        while node.get_type_name() in ('Transpose', 'Convert', 'Reshape'):
            node = node.input_value(0).get_node()
        return node

    found = []
    for op in model.get_ops():
        if op.get_type_name() != 'Convolution':
            continue
        stack = source(op.input_value(0).get_node())
        if stack.get_type_name() == 'Concat' and any(
                source(stack.input_value(i).get_node()).get_type_name() == 'Parameter'
                for i in range(stack.get_input_size())):
            found.append(op.get_friendly_name())
    return found
