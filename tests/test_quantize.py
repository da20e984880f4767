"""predict_precision = 'int8': calibration windows cut from the training
images where the grid puts them, the quantized conversion running int8
kernels and cached once beside the weights, and one-line errors for a
dataset it cannot calibrate on or NNCF missing."""
import collections
import os
import shutil
import sys
import types

import numpy as np
import pytest
import rasterio

import predict
from tests.conftest import restore_config
from tests.stand_in import small_encoder
from utils import settings
from utils.data.layouts import find_split
from utils.errors import SettingError
from utils.predict import conversion, engines, quantize


def test_calibration_windows_are_the_grid_crops_of_every_training_image(synthetic_root):
    cfg = settings.current().replace(shortcut_path=synthetic_root, cropSize=32)
    samples = find_split(cfg, 'train')
    windows = quantize.calibration_windows(cfg, count=3 * len(samples))
    assert len(windows) == 3 * len(samples)
    # 128 px images, 32 px crops: a 4 x 4 grid of corners; three evenly
    # spaced of its 16 are numbers 0, round(7.5) = 8 and 15, i.e. rows and
    # columns (0, 0), (64, 0), (96, 96) in pixels
    for first, sample in zip(range(0, len(windows), 3), samples):
        with rasterio.open(sample.image) as src:
            image = np.moveaxis(src.read(), 0, -1) / np.float32(255)   # uint8 RGB
        assert image.shape[:2] == (128, 128)
        for window, (y, x) in zip(windows[first:first + 3], [(0, 0), (64, 0), (96, 96)]):
            np.testing.assert_array_equal(window, image[y:y + 32, x:x + 32])


def test_a_dataset_it_cannot_calibrate_on_is_one_line_naming_the_setting(
        synthetic_root, tmp_path):
    cfg = settings.current().replace(shortcut_path=str(tmp_path), dataset_name='Vaihingen')
    with pytest.raises(SettingError) as err:
        quantize.calibration_windows(cfg)
    assert '\n' not in str(err.value)
    assert str(err.value).startswith("predict_precision = 'int8' calibrates on the training "
                                     "images of dataset_name = 'Vaihingen', which cannot be read")
    assert str(err.value).endswith("or predict_precision=float32")
    cfg = settings.current().replace(shortcut_path=synthetic_root, cropSize=256)
    with pytest.raises(SettingError, match="has no image of at least cropSize = 256 px"):
        quantize.calibration_windows(cfg)


def test_nncf_not_installed_is_one_line_naming_the_setting(monkeypatch):
    one = types.SimpleNamespace(num_replicas_in_sync=1)
    monkeypatch.setitem(sys.modules, 'nncf', None)      # import fails as if absent
    with pytest.raises(SettingError) as err:
        engines.choose_engine('auto', one, 'int8')
    assert str(err.value) == ("predict_precision = 'int8' quantizes the networks with nncf, "
                              "which is not installed: pip install nncf (an option: not in "
                              "requirements.txt), or predict_precision=float32")


def test_the_convolutions_of_stacked_inputs_are_found_and_only_those():
    import openvino as ov
    import openvino.opset13 as ops
    image = ops.parameter([1, 3, 8, 8], np.float32, name='image')
    kernel = ops.constant(np.ones((4, 3, 1, 1), np.float32))
    on_image = ops.convolution(image, kernel, [1, 1], [0, 0], [0, 0], [1, 1])
    on_image.set_friendly_name('encoder_first')
    stacked = ops.concat([ops.relu(on_image), ops.transpose(
        ops.transpose(image, ops.constant([0, 2, 3, 1])), ops.constant([0, 3, 1, 2]))], 1)
    refine = ops.convolution(stacked, ops.constant(np.ones((1, 7, 1, 1), np.float32)),
                             [1, 1], [0, 0], [0, 0], [1, 1])
    refine.set_friendly_name('dae_first')
    inner = ops.concat([refine, ops.relu(refine)], 1)     # a stack without the image
    later = ops.convolution(inner, ops.constant(np.ones((1, 2, 1, 1), np.float32)),
                            [1, 1], [0, 0], [0, 0], [1, 1])
    model = ov.Model([later], [image])
    assert quantize.stacked_input_convolutions(model) == ['dae_first']


def _convolution_precisions(path, cfg):
    """How many convolutions of the OpenVINO model at `path`, compiled as
    predict.py compiles it, run in each precision."""
    compiled = engines.openvino_model(path, batch_size=2, crop=cfg.cropSize, channels=3,
                                      precision=cfg.predict_precision)
    return collections.Counter(
        op.get_rt_info()['runtimePrecision'].astype(str)
        for op in compiled.get_runtime_model().get_ops()
        if op.get_rt_info()['layerType'].astype(str) == 'Convolution')


@pytest.mark.slow
@pytest.mark.xdist_group('tiny_trained')
def test_int8_runs_quantized_convolutions_from_one_cached_conversion(
        tiny_trained, synthetic_root, tmp_path, monkeypatch):
    folder = tmp_path / 'weights'
    (folder / 'dae').mkdir(parents=True)
    for path, into in ((tiny_trained.mtl_weights, folder), (tiny_trained.dae_weights,
                                                            folder / 'dae')):
        for name in (path, path + '.json'):
            shutil.copy(name, into)
    mtl = str(folder / os.path.basename(tiny_trained.mtl_weights))
    dae = str(folder / 'dae' / os.path.basename(tiny_trained.dae_weights))
    image = os.path.join(synthetic_root, 'synthetic', 'test', 'rgb', 'test_0000.tif')
    heights = {}

    def run(precision, out):
        try:
            with small_encoder():
                predict.main([image, '--ungeoreferenced', '--out', str(tmp_path / out),
                              '--correction', '--mtl-weights', mtl, '--dae-weights', dae,
                              '--outputs', 'height']
                             + sum((['--set', s] for s in tiny_trained.sets), [])
                             + ['--set', f'predict_precision={precision}'])
            with rasterio.open(tmp_path / out / 'test_0000_height.tif') as src:
                heights[out] = src.read(1)
            return settings.current()
        finally:
            restore_config()

    cfg = run('int8', 'int8')
    run('float32', 'float32')
    found = {kind: sorted(f for f in os.listdir(folder) if f.endswith(suffix))
             for kind, suffix in conversion.SUFFIX.items() if kind != 'onnx'}
    int8_xml = [f for f in found['openvino_int8']]
    float32_xml = [f for f in found['openvino'] if f not in int8_xml]
    assert len(int8_xml) == len(float32_xml) == 1, found
    # the int8 file runs every convolution in 8-bit integers but the DAE's
    # first (its input stacks the MTL's maps and the image: quantize.py), the
    # float32 one none
    int8_convolutions = _convolution_precisions(str(folder / int8_xml[0]), cfg)
    assert int8_convolutions['f32'] == 1
    assert set(int8_convolutions) - {'f32'} <= {'u8', 'i8'}
    assert sum(int8_convolutions.values()) > 2
    float32_convolutions = _convolution_precisions(
        str(folder / float32_xml[0]), cfg.replace(predict_precision='float32'))
    assert set(float32_convolutions) == {'f32'}
    # quantization changes the heights, and they still follow the float32
    # network's: closer to its heights than their own mean is
    error = heights['int8'] - heights['float32']
    assert np.abs(error).max() > 0
    assert np.sqrt(np.mean(error ** 2)) < np.std(heights['float32'])
    # a second run reads the cached file: no calibration, the same heights
    monkeypatch.setattr(quantize, 'quantized', _no_second_quantization)
    run('int8', 'int8_again')
    np.testing.assert_array_equal(heights['int8_again'], heights['int8'])


def _no_second_quantization(*args):
    raise AssertionError('the cached int8 conversion was quantized again')
