"""export.py and predict.py --engine: the exported SavedModel and ONNX model
give the Keras networks' heights in processes without our code, the export
check refuses a conversion 0.1% off, the three engines give predict.py the
same outputs from one conversion cached beside the weights, and files that
are not an export (or a conversion of other weights) are refused in one
line naming them."""
import json
import os
import re
import shutil
import sys
import textwrap
import types

import numpy as np
import pytest
import tifffile

import config
import export
import predict
from tests.conftest import run_python
from tests.stand_in import small_encoder
from utils import settings
from utils.geo.classes import ClassMap
from utils.model import weights as weights_files
from utils.predict import conversion, engines, export as exporting
from utils.errors import CheckpointError, SettingError

# Tiny networks (1/16 widths) on 32 px windows.
TINY = ['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
        'backbone_weights=None', 'dropout_rate=0', 'predict_stride=10', 'test_batch_size=4']


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """Tiny MTL and DAE weights trained (saved) under mixed_bfloat16, as
    train_*.py saves them, with their .json."""
    return _weights(tmp_path_factory.mktemp('weights'))


@pytest.fixture(scope='module')
def stand_in_weights(tmp_path_factory):
    """The same with the MTL on tests/stand_in.py's encoder."""
    with small_encoder():
        return _weights(tmp_path_factory.mktemp('stand_in_weights'))


def _weights(folder):
    import keras
    from utils.model import networks
    settings.apply(TINY)
    keras.utils.set_random_seed(5)
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
    try:
        mtl, dae = networks.build_mtl(config, pretrained=False), networks.build_dae(config)
        paths = {'mtl': str(folder / 'mtl.weights.h5'), 'dae': str(folder / 'dae.weights.h5')}
        weights_files.save(mtl, paths['mtl'], 'mtl', config)
        weights_files.save(dae, paths['dae'], 'dae', config)
    finally:
        keras.mixed_precision.set_global_policy('float32')
    return paths


def _keras(weights):
    """The networks in float32 from the weights, as predict.py builds them."""
    import tensorflow as tf
    from utils.model import networks
    settings.apply(TINY)
    strategy = tf.distribute.get_strategy()
    return (networks.trained(weights_files.WeightsFile(weights['mtl'], 'mtl'), config, strategy),
            networks.trained(weights_files.WeightsFile(weights['dae'], 'dae'), config, strategy))


# Run with nothing of ours importable (cwd: the export, no sys.path entry):
# what a serving stack or QGIS plugin does with the files.
OUTSIDE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnx, onnxruntime as ort, tensorflow as tf
    folder = sys.argv[1]
    windows = np.load('windows.npy')
    sm = tf.saved_model.load(folder + '/saved_model')
    out = sm.signatures['serving_default'](image=tf.constant(windows))
    session = ort.InferenceSession(folder + '/model.onnx', providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    onnx_out = dict(zip(names, session.run(names, {'image': windows})))
    proto = onnx.load(folder + '/model.onnx')
    np.savez('outside.npz', sm_height=out['height'].numpy(), sm_sem=out['sem'].numpy(),
             onnx_height=onnx_out['height'], onnx_sem=onnx_out['sem'])
    json.dump(dict(
        card=session.get_modelmeta().custom_metadata_map['model_card'],
        asset=open(folder + '/saved_model/assets/model_card.json').read(),
        inputs=[(i.name, i.shape, i.type) for i in session.get_inputs()],
        outputs=[(o.name, o.shape, o.type) for o in session.get_outputs()],
        opset=[o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')],
        sm_outputs=sorted(out)), open('outside.json', 'w'))
    print('modules of ours:', [m for m in sys.modules if m.split('.')[0] in
                               ('config', 'utils', 'nets', 'predict', 'export')])
""")


@pytest.mark.slow
def test_export_gives_the_keras_heights_outside_the_project(weights, tmp_path):
    out = tmp_path / 'exported'
    proc = run_python(['export.py', '--out', str(out), '--correction', '--mtl-weights',
                       weights['mtl'], '--dae-weights', weights['dae'], '--gsd', '0.09',
                       '--set', 'mixed_precision=mixed_bfloat16', '--set', 'predict_stride=10'],
                      timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == [
        'dae.weights.h5', 'dae.weights.h5.json', 'model.onnx', 'model.stac.json',
        'model_card.json', 'mtl.weights.h5', 'mtl.weights.h5.json', 'saved_model']

    rng = np.random.default_rng(1)
    windows = rng.random((3, 64, 96, 3), np.float32)    # any multiple of 32, not only the crop
    np.save(tmp_path / 'windows.npy', windows)
    (tmp_path / 'outside.py').write_text(OUTSIDE)
    proc = run_python([str(tmp_path / 'outside.py'), str(out)], cwd=str(tmp_path),
                      env={'PYTHONPATH': ''})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'modules of ours: []' in proc.stdout
    got = dict(np.load(tmp_path / 'outside.npz'))
    facts = json.loads((tmp_path / 'outside.json').read_text())

    mtl, dae = _keras(weights)
    from nets import dae as dae_net
    keras_out = mtl(windows, training=False)
    expected = (np.asarray(keras_out['height'])
                - np.asarray(dae(dae_net.assemble_input(keras_out, windows), training=False))
                )[..., 0]
    tolerance = exporting.height_tolerance([mtl, dae], np.abs(expected).max())
    assert tolerance < 0.05 * np.abs(expected).max()   # the bound still says something
    for engine in ('sm', 'onnx'):
        assert got[f'{engine}_height'].dtype == np.float32
        np.testing.assert_allclose(got[f'{engine}_height'], expected, rtol=0, atol=tolerance)
        # probabilities in [0, 1]: the same bound, with magnitude 1
        np.testing.assert_allclose(got[f'{engine}_sem'], np.asarray(keras_out['sem']),
                                   rtol=0, atol=exporting.height_tolerance([mtl], 1.0))

    card = json.loads((out / 'model_card.json').read_text())
    assert json.loads(facts['card']) == card == json.loads(facts['asset'])
    assert facts['inputs'] == [['image', ['batch', 'rows', 'cols', 3], 'tensor(float)']]
    assert sorted(o[0] for o in facts['outputs']) == ['height', 'norm', 'sem']
    assert all(o[2] == 'tensor(float)' for o in facts['outputs'])   # float32, not bfloat16
    assert facts['sm_outputs'] == ['height', 'norm', 'sem']
    assert facts['opset'] == [card['onnx_opset']] == [exporting.OPSET]
    classes_of = ClassMap(config.label_codes)
    assert [c['colour'] for c in card['classes']] == classes_of.colours.tolist()
    assert [c['code'] for c in card['classes']] == list(config.label_codes)
    assert card['network'] == 'MTL + DAE' and card['dataset'] == config.dataset_name
    assert card['input']['band_order'] == [1, 2, 3] and card['input']['multiple_of'] == 32
    assert card['input']['image_scale'] == config.image_scale
    assert card['ground_sampling_distance_m'] == 0.09
    assert card['windows']['size'] == 32 and card['windows']['stride'] == 10
    assert card['windows']['blending'] == config.predict_window
    assert card['outputs']['height']['units'] == 'metres'


def _geotiff(path, shape):
    rng = np.random.RandomState(0)
    image = (rng.rand(*shape) * 250).astype(np.uint8)
    tags = [(33550, 'd', 3, (0.5, 0.5, 0.0), True),
            (33922, 'd', 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
            (34735, 'H', 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632),
             True)]
    tifffile.imwrite(path, image, photometric='rgb', extratags=tags)


@pytest.mark.slow
def test_the_engines_give_predict_py_the_same_outputs_from_conversions_cached_once(
        stand_in_weights, tmp_path, monkeypatch):
    """On the stand-in encoder: the engine switch is under test (the export
    of DenseNet121 itself, in the test above)."""
    with small_encoder():
        engines_agree(stand_in_weights, tmp_path, monkeypatch)


def engines_agree(weights, tmp_path, monkeypatch):
    import rasterio
    _geotiff(tmp_path / 'area.tif', (45, 70, 3))
    read = {}

    def run(engine, out):
        settings.apply(TINY)
        predict.main([str(tmp_path / 'area.tif'), '--out', str(tmp_path / out),
                      '--engine', engine, '--correction', '--mtl-weights', weights['mtl'],
                      '--dae-weights', weights['dae']] + sum((['--set', s] for s in TINY), []))
        with rasterio.open(tmp_path / out / 'area_height.tif') as src:
            read[out] = (src.read(1), src.transform, src.crs)
        with rasterio.open(tmp_path / out / 'area_sem.tif') as src:
            read[out + '_sem'] = src.read(1)

    for engine in ('tensorflow', 'onnxruntime', 'openvino'):
        run(engine, engine)
    # each conversion made once and cached: a second run converts nothing
    cached = {kind: _cached(weights, kind) for kind in ('onnx', 'openvino')}
    made = {kind: os.stat(path).st_mtime_ns for kind, path in cached.items()}
    monkeypatch.setattr(exporting, 'write_onnx', _no_second_conversion)
    monkeypatch.setattr(conversion, '_convert_openvino', _no_second_conversion)
    for engine in ('onnxruntime', 'openvino'):
        run(engine, engine + '_again')
        np.testing.assert_array_equal(read[engine + '_again'][0], read[engine][0])
    assert {kind: os.stat(path).st_mtime_ns for kind, path in cached.items()} == made
    tf_h, tf_transform, tf_crs = read['tensorflow']
    mtl, dae = _keras(weights)
    # blending averages windows with weights summing to 1: no larger than one window's
    tolerance = exporting.height_tolerance([mtl, dae], np.abs(tf_h).max())
    # Classes may differ only at near-ties: each blended probability of two
    # engines differs by at most t (height_tolerance at magnitude 1; the
    # window weights sum to 1), so where they pick different classes i and
    # j, TensorFlow's p_i - p_j <= (p_i - q_i) + (q_j - p_j) <= 2t.
    import tensorflow as tf
    from utils.geo.image import Image, parse_bands
    from utils.predict.blend import predict_tile
    cfg = settings.current()
    with Image(str(tmp_path / 'area.tif'), parse_bands('1,2,3'), 3, cfg.image_scale) as image:
        pixels, _ = image.rows(0, image.height)
    probabilities = predict_tile(
        engines.tensorflow_fn(mtl, dae, cfg=cfg, strategy=tf.distribute.get_strategy(),
                              outputs=('sem',)),
        pixels, cfg.cropSize, cfg.predict_stride, window=cfg.predict_window)['sem']
    top = np.sort(probabilities, axis=-1)
    margin = top[..., -1] - top[..., -2]
    tie = 2 * exporting.height_tolerance([mtl], 1.0)
    # The briefly trained stand-in is nearly undecided (median margin 3e-5),
    # so few pixels are beyond a tie; a flip at those is caught.
    assert (margin > tie).any()
    for engine in ('onnxruntime', 'openvino'):
        heights, transform, crs = read[engine]
        assert transform == tf_transform and crs == tf_crs
        np.testing.assert_allclose(heights, tf_h, rtol=0, atol=tolerance)
        differ = read['tensorflow_sem'] != read[engine + '_sem']
        assert (margin[differ] <= tie).all(), (engine, margin[differ].max())
    # the bound is tight enough to see a conversion 0.1% off
    assert not np.abs(1.001 * read['openvino'][0] - tf_h).max() <= tolerance


def _cached(weights, kind):
    """The one conversion of `kind` (conversion.SUFFIX) cached beside the MTL weights."""
    folder = os.path.dirname(weights['mtl'])
    suffix = conversion.SUFFIX[kind]
    found = [f for f in os.listdir(folder) if f.endswith(suffix)]
    assert len(found) == 1 and re.fullmatch(r'mtl\.weights\.h5\.[0-9a-f]{12}' + re.escape(suffix),
                                            found[0]), found
    if kind == 'openvino':      # its weights beside it
        assert os.path.isfile(os.path.join(folder, found[0][:-len('.xml')] + '.bin'))
    return os.path.join(folder, found[0])


def _no_second_conversion(*args):
    raise AssertionError('a cached conversion was made again')


def _scaled_height(source, path, factor):
    """A copy of the ONNX model at `source` whose height output is multiplied
    by `factor`: a conversion off by that much."""
    import onnx
    from onnx import helper
    model = onnx.load(source)
    for node in model.graph.node:
        node.output[:] = ['height_exact' if o == 'height' else o for o in node.output]
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(np.float32(factor), 'height_factor'))
    model.graph.node.append(helper.make_node('Mul', ['height_exact', 'height_factor'],
                                             ['height']))
    onnx.save(model, path)


@pytest.mark.slow
def test_the_export_check_refuses_a_conversion_off_by_a_tenth_of_a_percent(
        stand_in_weights, tmp_path, monkeypatch):
    """export.py converts the stand-in networks; a conversion that scales the
    heights by 1.001 stops it before anything is written, and the same
    conversion unscaled passes the same check."""
    write = exporting.write_onnx
    exact = str(tmp_path / 'exact.onnx')

    def off_by_a_tenth_of_a_percent(saved_model, card, path):
        write(saved_model, card, path)
        shutil.copy(path, exact)
        _scaled_height(exact, path, 1.001)
    monkeypatch.setattr(exporting, 'write_onnx', off_by_a_tenth_of_a_percent)
    out = tmp_path / 'exported'
    with small_encoder(), pytest.raises(CheckpointError) as err:
        export.main(['--out', str(out), '--correction', '--mtl-weights', stand_in_weights['mtl'],
                     '--dae-weights', stand_in_weights['dae']]
                    + sum((['--set', s] for s in TINY), []))
    message = str(err.value)
    assert '\n' not in message and message.startswith(f"{out}/model.onnx: heights differ")
    assert os.listdir(out) == []    # nothing of the export written, no temporary folder left
    with small_encoder():
        mtl, dae = _keras(stand_in_weights)
    windows = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    expected = exporting.serving_function(mtl, dae, 3)(windows)['height'].numpy()
    tolerance = exporting.height_tolerance([mtl, dae], np.abs(expected).max())
    heights = exporting.onnx_session(exact).run(['height'], {exporting.INPUT: windows})[0]
    assert exporting.check({exact: heights}, expected, tolerance)[exact] <= tolerance


def _onnx_file(path, inputs, card=None):
    """An ONNX model of one Identity from the first input, written by onnx."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node('Identity', [inputs[0][0]], ['height'])], 'other',
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info('height', TensorProto.FLOAT, inputs[0][1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    if card is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = exporting.CARD_KEY, json.dumps(card)
    onnx.save(model, str(path))
    return str(path)


def test_an_onnx_file_of_another_model_is_refused_naming_it(tmp_path):
    path = _onnx_file(tmp_path / 'classifier.onnx', [('input', [1, 3, 224, 224])])
    with pytest.raises(CheckpointError) as err:
        exporting.check_onnx(path)
    message = str(err.value)
    assert '\n' not in message and path in message
    assert "inputs input [1, 3, 224, 224]" in message and 'export.py' in message


def test_an_onnx_file_without_its_model_card_is_refused_naming_it(tmp_path):
    shape = ['batch', 'rows', 'cols', 3]
    path = _onnx_file(tmp_path / 'bare.onnx', [('image', shape)])
    with pytest.raises(CheckpointError) as err:
        exporting.check_onnx(path)
    assert '\n' not in str(err.value) and path in str(err.value)
    assert 'no model card' in str(err.value)
    carded = _onnx_file(tmp_path / 'carded.onnx', [('image', shape)],
                        card={'input': {'shape': shape}, 'dataset': 'synthetic'})
    assert exporting.check_onnx(carded, expect={'dataset': 'synthetic'})['dataset'] == 'synthetic'
    with pytest.raises(CheckpointError, match=r"carded.onnx: its model card has dataset"):
        exporting.check_onnx(carded, expect={'dataset': 'Vaihingen'})


def test_weights_of_another_network_are_refused_naming_the_file(weights, tmp_path):
    # the DAE's weights where the MTL's belong
    with pytest.raises(CheckpointError) as err:
        export.main(['--out', str(tmp_path / 'out'), '--mtl-weights', weights['dae']]
                    + sum((['--set', s] for s in TINY), []))
    assert '\n' not in str(err.value) and weights['dae'] in str(err.value)
    assert 'does not fit the configured MTL' in str(err.value)
    assert not os.path.exists(tmp_path / 'out')      # nothing written


def test_a_conversion_of_other_weights_is_never_used(weights, stand_in_weights, tmp_path):
    settings.apply(TINY)
    cfg = settings.current()
    files = {name: (weights_files.WeightsFile(w['mtl'], 'mtl'),
                    weights_files.WeightsFile(w['dae'], 'dae'))
             for name, w in (('densenet', weights), ('stand_in', stand_in_weights))}
    keys = {name: conversion.key(*pair, cfg) for name, pair in files.items()}
    # other weights, the MTL alone, other settings: each its own file
    assert len({keys['densenet'], keys['stand_in'],
                conversion.key(files['densenet'][0], None, cfg),
                conversion.key(*files['densenet'], cfg.replace(sem_flag=False))}) == 4
    # the weights retrained into the same file: another key
    retrained = tmp_path / 'mtl.weights.h5'
    shutil.copy(stand_in_weights['mtl'], retrained)
    shutil.copy(stand_in_weights['mtl'] + '.json', str(retrained) + '.json')
    mtl_file = weights_files.WeightsFile(str(retrained), 'mtl', '--mtl-weights')
    assert conversion.key(mtl_file, files['stand_in'][1], cfg) == keys['stand_in']
    shutil.copy(weights['mtl'], retrained)
    mtl_file = weights_files.WeightsFile(str(retrained), 'mtl', '--mtl-weights')
    full_key = conversion.key(mtl_file, None, cfg)
    assert full_key == conversion.key(files['densenet'][0], None, cfg) != keys['stand_in']
    # a file put under the name by hand (another key, or none) is refused, not run
    path = conversion.cached_path(mtl_file, full_key)
    for found in (keys['stand_in'], None):
        _onnx_file(path, [('image', ['batch', 'rows', 'cols', 3])])
        if found:
            _write_key(path, found)
        with pytest.raises(CheckpointError) as err:
            conversion.onnx_model(mtl_file, None, None, None, cfg)
        message = str(err.value)
        assert '\n' not in message and message.startswith(f"{path}: not the conversion of "
                                                           f"--mtl-weights = '{retrained}'")
        assert 'delete it' in message
    _write_key(path, full_key)      # its own key: reused, nothing converted
    assert conversion.onnx_model(mtl_file, None, None, None, cfg) == path
    # the same for OpenVINO's files, whose key is in their runtime info
    path = conversion.cached_path(mtl_file, full_key, 'openvino')
    for found in (keys['stand_in'], None, full_key):
        _openvino_file(path, found)
        if found == full_key:
            assert conversion.openvino_model(mtl_file, None, None, None, cfg) == path
            continue
        with pytest.raises(CheckpointError) as err:
            conversion.openvino_model(mtl_file, None, None, None, cfg)
        assert '\n' not in str(err.value) and str(err.value).startswith(
            f"{path}: not the conversion of --mtl-weights = '{retrained}'")


def _openvino_file(path, full_key):
    """A one-layer OpenVINO model at `path` (.xml and .bin) recording `full_key`."""
    import openvino as ov
    from openvino import opset13
    image = opset13.parameter([1, 32, 32, 3], np.float32, name='image')
    model = ov.Model([opset13.relu(image)], [image], 'other')
    if full_key:
        model.set_rt_info(full_key, conversion.RUNTIME_INFO)
    ov.save_model(model, path, compress_to_fp16=False)


def _write_key(path, full_key):
    import onnx
    model = onnx.load(path)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = conversion.KEY, full_key
    onnx.save(model, path)


def test_engine_choice_follows_the_measurement_the_devices_and_the_precision(monkeypatch):
    one, two = (types.SimpleNamespace(num_replicas_in_sync=n) for n in (1, 2))
    # no GPU here: one CPU replica takes the measured CPU engine (bench/RESULTS.md)
    assert engines.CPU_ENGINE in engines.ENGINES
    assert engines.choose_engine('auto', one) == engines.CPU_ENGINE
    # several replicas: only TensorFlow runs them, whichever engine CPU_ENGINE names
    monkeypatch.setattr(engines, 'CPU_ENGINE', 'onnxruntime')
    assert engines.choose_engine('auto', one) == 'onnxruntime'
    assert engines.choose_engine('auto', two) == 'tensorflow'
    for engine in ('onnxruntime', 'openvino'):
        assert engines.choose_engine(engine, one) == engine
        with pytest.raises(SettingError, match=f'--engine {engine} runs on one CPU device'):
            engines.choose_engine(engine, two)
    with pytest.raises(SettingError) as err:
        engines.choose_engine('tensorflow', one, 'bfloat16')
    assert '\n' not in str(err.value) and str(err.value).startswith(
        "predict_precision = 'bfloat16' runs on --engine openvino")
    # bfloat16 where the CPU has it: OpenVINO, the engine that runs it
    monkeypatch.setattr(engines, 'check_precision', lambda precision: None)
    assert engines.choose_engine('auto', one, 'bfloat16') == 'openvino'
    with pytest.raises(SettingError, match="predict_precision = 'bfloat16' runs on"):
        engines.choose_engine('auto', two, 'bfloat16')


def test_a_precision_the_cpu_lacks_is_one_line_naming_the_setting():
    def core(*capabilities):
        return types.SimpleNamespace(get_property=lambda device, name: (
            list(capabilities) if (device, name) == ('CPU', 'OPTIMIZATION_CAPABILITIES')
            else None))
    engines.check_precision('bfloat16', core('FP32', 'BF16', 'INT8'))
    with pytest.raises(SettingError) as err:
        engines.check_precision('bfloat16', core('FP32', 'INT8'))
    assert str(err.value) == ("predict_precision = 'bfloat16': this CPU cannot compute in "
                              "bfloat16 (OpenVINO finds FP32, INT8; bfloat16 needs AVX-512 "
                              "BF16 or AMX): set predict_precision=float32")
    engines.check_precision('float32')      # this machine's own CPU, by OpenVINO


def test_an_engine_not_installed_is_one_line_naming_it_and_the_fix(monkeypatch, capsys):
    one = types.SimpleNamespace(num_replicas_in_sync=1)
    for engine in ('onnxruntime', 'openvino'):
        monkeypatch.setitem(sys.modules, engine, None)      # import fails as if absent
        with pytest.raises(SettingError) as err:
            engines.choose_engine(engine, one)
        assert '\n' not in str(err.value)
        assert str(err.value).startswith(f"--engine {engine}: the {engine} package is not "
                                         f"installed")
        assert f"pip install {engine} (requirements.txt), or --engine tensorflow" in str(err.value)
    # asked for no engine, one without the measured engine runs TensorFlow, and is told
    capsys.readouterr()
    assert engines.choose_engine('auto', one) == 'tensorflow'
    assert capsys.readouterr().out.startswith(
        f"warning: {engines.CPU_ENGINE} is not installed, so --engine auto runs TensorFlow")
