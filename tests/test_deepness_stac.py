"""export.py --deepness and model.stac.json: the Deepness models read the
way the QGIS plugin's model loader reads them (PUTvision/qgis-plugin-deepness
0.6.5, src/deepness/processing/models/) give the heights predict.py's
engine gives for a window; the STAC item validates with stac-model offline
and predict.py --model runs from it; bad input is refused in one line."""
import json
import os
import shutil
import socket

import numpy as np
import pytest

import config
import export
import predict
from tests.stand_in import small_encoder
from tests.test_export import TINY, _geotiff, _weights
from utils import settings
from utils.errors import CheckpointError, SettingError
from utils.model import weights as weights_files
from utils.predict import deepness, stac

SETS = sum((['--set', s] for s in TINY), [])
GSD = 0.09


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """An export with --correction --deepness of tiny networks on the
    stand-in encoder (tests/stand_in.py), and the weights it came from."""
    folder = tmp_path_factory.mktemp('deepness')
    with small_encoder():
        paths = _weights(folder)
        export.main(['--out', str(folder / 'out'), '--correction', '--mtl-weights', paths['mtl'],
                     '--dae-weights', paths['dae'], '--gsd', str(GSD), '--deepness'] + SETS)
    return folder / 'out', paths


class PluginModel:
    """An ONNX model as Deepness's ModelBase loads and runs it: one input,
    its shape [batch, channels, rows, cols] read from the session, every
    metadata value through json.loads, tiles (N, H, W, C) of the layer's
    values limited to the model's channels, divided by 255, standardised
    with the metadata's mean and std (0 and 1 without them), transposed to
    NCHW."""

    def __init__(self, path):
        import onnxruntime as ort
        self.session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        inputs = self.session.get_inputs()
        assert len(inputs) == 1                     # the plugin refuses more
        self.input = inputs[0]
        self.outputs = self.session.get_outputs()
        self.raw = self.session.get_modelmeta().custom_metadata_map
        self.meta = {k: json.loads(v) for k, v in self.raw.items()}
        channels = self.input.shape[-3]
        self.mean = np.float32(self.meta.get('standardization_mean', [0.0] * channels))
        self.std = np.float32(self.meta.get('standardization_std', [1.0] * channels))

    @property
    def model_type(self):
        return str(self.meta['model_type']).capitalize()

    def class_names(self):
        """Per output, the names by consecutive integer keys, as the plugin sorts them."""
        names = self.meta['class_names']
        names = [names] if isinstance(names, dict) else names
        ordered = [sorted(n.items(), key=lambda kv: int(kv[0])) for n in names]
        assert all([int(k) for k, _ in o] == list(range(len(o))) for o in ordered)
        return [[v for _, v in o] for o in ordered]

    def process(self, tiles):
        x = tiles[:, :, :, :self.input.shape[-3]]
        x = np.float32(x * 1. / 255.)
        x = (x - self.mean) / self.std
        x = np.transpose(x, (0, 3, 1, 2))
        return self.session.run(None, {self.input.name: x})


def _engine(folder):
    """predict.py's engine path on the exported weights: tensorflow_fn of
    the networks the export's own weights files build."""
    import tensorflow as tf
    from utils.model import networks
    from utils.predict import engines
    settings.apply(TINY)
    cfg = settings.current()
    strategy = tf.distribute.get_strategy()
    with small_encoder():
        mtl, dae = (networks.trained(weights_files.WeightsFile(str(folder / f'{s}.weights.h5'), s),
                                     cfg, strategy) for s in ('mtl', 'dae'))
    return engines.tensorflow_fn(mtl, dae, cfg=cfg, strategy=strategy, outputs=['sem']), mtl, dae


@pytest.mark.slow
def test_deepness_models_read_as_the_plugin_reads_them_give_predict_pys_heights(exported):
    from utils.predict.export import height_tolerance
    folder, _ = exported
    card = json.loads((folder / 'model_card.json').read_text())
    window, stride = card['windows']['size'], card['windows']['stride']
    height = PluginModel(folder / deepness.FILES['height'])
    classes = PluginModel(folder / deepness.FILES['classes'])
    for model in (height, classes):
        # as ModelBase reads them: a fixed square tile of 3 bands, batch 1
        assert model.input.shape == [1, 3, window, window] and model.input.type == 'tensor(float)'
        assert isinstance(model.meta['model_type'], str)
        assert isinstance(model.meta['tile_size'], int) and model.meta['tile_size'] == window
        assert isinstance(model.meta['tiles_overlap'], int)
        # ProcessingOverlap.get_overlap_px: the overlap our stride leaves
        assert int(window * model.meta['tiles_overlap'] / 100 * 2) // 2 == window - stride
        assert float(model.meta['resolution']) == pytest.approx(GSD * 100, rel=1e-12)
        # the networks standardise nothing: the plugin's default mean 0, std 1
        assert not {'standardization_mean', 'standardization_std'} & set(model.meta)
    assert height.model_type == 'Regressor' and classes.model_type == 'Segmentor'
    # Regressor.check_loaded_model_outputs: 4 dimensions, one channel, square
    assert [o.shape for o in height.outputs] == [[1, 1, window, window]]
    assert float(height.meta['reg_output_scaling']) == 1.0     # metres as the network gives them
    assert [o.shape for o in classes.outputs] == [[1, len(card['classes']), window, window]]
    assert classes.class_names() == [[c['name'].replace('_', ' ') for c in card['classes']]]
    assert classes.class_names()[0] == [n.replace('_', ' ') for n in config.class_names]
    assert float(classes.meta['seg_thresh']) == 0.0            # argmax, as predict.py

    # One tile of an 8-bit RGB layer, as the plugin cuts it, with a 4th band it drops.
    tile = np.random.default_rng(7).integers(0, 256, (1, window, window, 4)).astype(np.uint8)
    predict_fn, mtl, dae = _engine(folder)
    expected = predict_fn(np.float32(tile[..., :3] * 1. / 255.))   # the plugin's values
    tolerance = height_tolerance([mtl, dae], np.abs(expected['height']).max())
    got = height.process(tile)[0][:, 0] * float(height.meta['reg_output_scaling'])
    np.testing.assert_allclose(got, expected['height'], rtol=0, atol=tolerance)
    np.testing.assert_allclose(classes.process(tile)[0],
                               np.transpose(expected['sem'], (0, 3, 1, 2)),
                               rtol=0, atol=height_tolerance([mtl], 1.0))
    # The same tile in BGR, the band order read wrongly: not the heights.
    wrong = height.process(tile[..., [2, 1, 0, 3]])[0][:, 0]
    assert np.abs(wrong - expected['height']).max() > tolerance


def _valid_item(item):
    """What stac-model and pystac check offline: the Item against STAC 1.1's
    own schemas (pystac ships them; no network is reached), the MLM fields
    with stac-model's pydantic models; and the MLM schema's rules those do
    not hold: a model asset with mlm:artifact_type, input bands that the
    Item's bands define and a 'bands' dimension orders."""
    from pystac import STACObjectType
    from pystac.validation.stac_validator import JsonSchemaSTACValidator
    from stac_model.schema import MLModelExtension, MLModelProperties
    item = json.loads(json.dumps(item))
    JsonSchemaSTACValidator().validate_core(item, STACObjectType.ITEM, item['stac_version'])
    properties = MLModelProperties.model_validate(item['properties'])
    assert MLModelExtension.get_schema_uri() in item['stac_extensions']
    models = [a for a in item['assets'].values() if 'mlm:model' in a['roles']]
    assert models and all(a.get('mlm:artifact_type') for a in models)
    names = [b['name'] for b in item['properties']['bands']]
    for given in item['properties']['mlm:input']:
        assert set(given['bands']) <= set(names) and 'bands' in given['input']['dim_order']
    return properties


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError('the tests reach no network')
    monkeypatch.setattr(socket.socket, 'connect', refuse)


def test_the_stac_item_validates_offline_and_says_what_the_network_takes(monkeypatch):
    from pydantic import ValidationError
    from utils.model.weights import Contract
    from utils.predict import export as exporting
    _no_network(monkeypatch)
    settings.apply(TINY)
    cfg = settings.current()
    contract = Contract(32, [1, 2, 3], 'auto', [0.4, 0.5, 0.6], [0.1, 0.2, 0.3])
    card = exporting.model_card(cfg, contract=contract, correction=True,
                                weights={'mtl': 'a.weights.h5', 'dae': 'b.weights.h5'}, gsd=GSD)
    names = list(export.FILES) + list(deepness.FILES.values()) + [
        n for s in ('mtl', 'dae') for n in (f'{s}.weights.h5', f'{s}.weights.h5.json')]
    item = stac.item(card, names, total_parameters=10, framework_version='2', batch_size=4,
                     created='2026-01-01T00:00:00Z')
    found = _valid_item(item)
    assert found.tasks == {'regression', 'semantic-segmentation'}
    given = found.input[0]
    assert given.input.shape == [-1, 32, 32, 3] and list(given.bands) == ['red', 'green', 'blue']
    assert [b['statistics'] for b in item['properties']['bands']] == [
        dict(mean=m, stddev=s) for m, s in zip(contract.band_mean, contract.band_spread)]
    assert given.value_scaling[0].type == 'processing'      # 'auto': by each file's bit depth
    outputs = {o.name: o for o in found.output}
    assert item['properties']['mlm:output'][0]['unit'] == 'm' and \
        outputs['height'].result.shape == [-1, 32, 32]
    assert [c.name for c in outputs['sem'].classes] == config.class_names
    roles = {k: a['roles'] for k, a in item['assets'].items()}
    assert roles['mtl_weights'] == roles['dae_weights'] == ['mlm:weights', 'weights']
    assert {k for k, r in roles.items() if 'mlm:model' in r} == {'saved_model', 'onnx'}
    assert item['assets']['deepness_height']['href'] == './' + deepness.FILES['height']
    assert item['properties']['gsd'] == GSD
    numeric = stac.item(dict(card, input=dict(card['input'], image_scale=4095)), names,
                        total_parameters=10, framework_version='2', batch_size=4,
                        created='2026-01-01T00:00:00Z')
    assert _valid_item(numeric).input[0].value_scaling[0].value == 4095
    # the validation can fail: a task the extension has no name for
    wrong = json.loads(json.dumps(item))
    wrong['properties']['mlm:tasks'] = ['height-estimation']
    with pytest.raises(ValidationError):
        _valid_item(wrong)


@pytest.mark.slow
def test_the_exported_item_validates_and_predict_py_runs_from_it(exported, tmp_path, monkeypatch):
    import rasterio
    folder, paths = exported
    item = json.loads((folder / stac.ITEM).read_text())
    _no_network(monkeypatch)
    _valid_item(item)
    monkeypatch.undo()
    for asset in item['assets'].values():
        assert os.path.exists(folder / asset['href'])
    _geotiff(tmp_path / 'area.tif', (45, 70, 3))
    read = {}
    for name, options in (('item', ['--model', str(folder / stac.ITEM)]),
                          ('weights', ['--correction', '--mtl-weights', paths['mtl'],
                                       '--dae-weights', paths['dae']])):
        settings.apply(TINY)
        with small_encoder():
            predict.main([str(tmp_path / 'area.tif'), '--out', str(tmp_path / name),
                          '--engine', 'tensorflow'] + options + SETS)
        for output in ('height', 'sem'):
            with rasterio.open(tmp_path / name / f'area_{output}.tif') as src:
                read[name, output] = src.read()
    for output in ('height', 'sem'):    # the same weights, the same code: the same maps
        np.testing.assert_array_equal(read['item', output], read['weights', output])


def _fake_weights(folder, **recorded):
    """A weights file the options name (never loaded: the errors come first)
    with a .json recording `recorded` (None: no .json)."""
    path = folder / 'mtl.weights.h5'
    path.write_bytes(b'')
    if recorded:
        (folder / 'mtl.weights.h5.json').write_text(json.dumps(
            {'kind': 'mtl', 'settings': recorded}))
    return str(path)


def _one_line(err, *words):
    message = str(err.value)
    assert '\n' not in message
    for word in words:
        assert word in message
    return message


def test_deepness_bad_input_is_refused_in_one_line_naming_it(tmp_path):
    bare = _fake_weights(tmp_path)
    out = str(tmp_path / 'out')
    with pytest.raises(SettingError) as err:        # no .json: the window is not known
        export.main(['--out', out, '--mtl-weights', bare, '--deepness', '--gsd', '0.09'])
    _one_line(err, bare + '.json', 'cropSize', '--set cropSize=N')
    without_sem = tmp_path / 'no_sem'
    without_sem.mkdir()
    path = _fake_weights(without_sem, cropSize=32, sem_flag=False)
    with pytest.raises(SettingError) as err:
        export.main(['--out', out, '--mtl-weights', path, '--deepness', 'classes',
                     '--gsd', '0.09'])
    _one_line(err, path, 'no semantics head', '--deepness height')
    with pytest.raises(SettingError) as err:        # Deepness resamples to --gsd
        export.main(['--out', out, '--mtl-weights', path, '--deepness'])
    _one_line(err, '--gsd')
    with pytest.raises(SettingError) as err:        # per-image scaling, not per tile
        export.main(['--out', out, '--mtl-weights', path, '--deepness', '--gsd', '0.09',
                     '--set', 'image_scale=minmax'])
    _one_line(err, "image_scale = 'minmax'")
    assert not os.path.exists(out)                  # nothing written


def test_an_item_whose_assets_are_missing_is_refused_in_one_line_naming_it(tmp_path):
    settings.apply(TINY)
    item_path = tmp_path / stac.ITEM
    weights_path = _fake_weights(tmp_path, cropSize=32)
    (tmp_path / 'dae.weights.h5').write_bytes(b'')      # its .json missing
    names = ['mtl.weights.h5', 'mtl.weights.h5.json', 'dae.weights.h5', 'dae.weights.h5.json']
    from utils.predict import export as exporting
    card = exporting.model_card(settings.current(), correction=True, weights={})
    stac.write(item_path, stac.item(card, names, total_parameters=1, framework_version='2',
                                    batch_size=1, created='2026-01-01T00:00:00Z'))
    image = tmp_path / 'area.tif'
    _geotiff(image, (40, 40, 3))
    with pytest.raises(CheckpointError) as err:
        predict.main([str(image), '--model', str(item_path)] + SETS)
    _one_line(err, str(item_path), "'dae_weights_settings'", 'dae.weights.h5.json',
              'export again')
    os.remove(weights_path)
    with pytest.raises(CheckpointError) as err:
        predict.main([str(image), '--model', str(item_path)] + SETS)
    _one_line(err, str(item_path), "'mtl_weights'", weights_path)
    with pytest.raises(SettingError) as err:
        predict.main([str(image), '--model', str(item_path), '--mtl-weights', weights_path])
    _one_line(err, '--model', '--mtl-weights')
    shutil.copyfile(image, item_path)                   # not a STAC item at all
    with pytest.raises(CheckpointError) as err:
        predict.main([str(image), '--model', str(item_path)] + SETS)
    _one_line(err, str(item_path), 'not a STAC item')


def test_the_overlap_the_plugin_makes_of_the_percent_is_the_nearest_it_can_make():
    for tile in (32, 96, 256, 320, 448, 512):
        for stride in range(1, tile + 1, 7):
            percent = deepness.overlap_percent(tile, stride)
            # ProcessingOverlap.get_overlap_px, as the plugin writes it
            made = {p: int(tile * p / 100 * 2) // 2 for p in range(100)}
            best = min(abs(px - (tile - stride)) for px in made.values())
            assert abs(made[percent] - (tile - stride)) == best
            if tile <= 100:                 # every overlap is some whole percent away
                assert made[percent] == tile - stride


def test_every_dataset_names_each_of_its_classes():
    from utils.data import synthetic
    from utils.data.labels import class_names
    for name in list(config.DATASETS) + ['DFC2018_bin']:
        entry = config.dataset_settings(name)
        assert len(entry['class_names']) == len(entry['label_codes']), name
    assert config.dataset_settings('synthetic')['class_names'] == list(synthetic.CLASSES)
    # codes of one's own: named from what is known of them (synthetic's buildings are 1)
    settings.apply(['label_codes=[0,1,9]'])
    assert class_names(settings.current()) == ['class_0', 'building', 'class_9']


def test_weights_without_their_json_are_copied_with_the_settings_that_built_them(tmp_path):
    settings.apply(TINY)
    cfg = settings.current()
    bare = _fake_weights(tmp_path)
    (tmp_path / 'copy').mkdir()
    names = stac.copy_weights({'mtl': weights_files.WeightsFile(bare, 'mtl')},
                              str(tmp_path / 'copy'), cfg)
    assert names == ['mtl.weights.h5', 'mtl.weights.h5.json']
    copied = weights_files.WeightsFile(str(tmp_path / 'copy' / names[0]), 'mtl')
    assert copied.settings == weights_files.as_recorded(cfg, 'mtl')
    assert copied.adopted()['cropSize'] == 32          # what --deepness needs fixed
    # an item of these weights alone refuses --correction in one line
    from utils.predict import export as exporting
    item_path = tmp_path / 'copy' / stac.ITEM
    stac.write(item_path, stac.item(exporting.model_card(cfg, correction=False, weights={}),
                                    names, total_parameters=1, framework_version='2',
                                    batch_size=1, created='2026-01-01T00:00:00Z'))
    image = tmp_path / 'area.tif'
    _geotiff(image, (40, 40, 3))
    with pytest.raises(SettingError) as err:
        predict.main([str(image), '--model', str(item_path), '--correction'] + SETS)
    _one_line(err, '--correction', str(item_path), 'no DAE weights')


def test_the_plugin_layout_around_a_network_scales_transposes_and_keeps_one_output(tmp_path):
    """On a stand-in for model.onnx (height: the bands' sum, sem: their
    softmax, norm: dropped), in ONNX Runtime: the Deepness model on the
    plugin's values is the network on the values times the factor (here
    image_scale 4095), bit for bit, as the same kernels run on the same
    float32 values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from utils.predict.export import onnx_session
    shape = ['batch', 'rows', 'cols', 3]
    graph = helper.make_graph(
        [helper.make_node('ReduceSum', ['image', 'bands_axis'], ['height'], keepdims=0),
         helper.make_node('Softmax', ['image'], ['sem'], axis=-1),
         helper.make_node('Relu', ['image'], ['norm'])], 'stand_in',
        [helper.make_tensor_value_info('image', TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info('height', TensorProto.FLOAT, shape[:3]),
         helper.make_tensor_value_info('sem', TensorProto.FLOAT, shape),
         helper.make_tensor_value_info('norm', TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(np.array([3], np.int64), 'bands_axis')])
    source = str(tmp_path / 'model.onnx')
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), source)
    card = dict(network='MTL', dataset='synthetic', input=dict(shape=shape),
                windows=dict(stride=5), outputs=dict(height={}, sem={}, norm={}),
                classes=[dict(index=i, name=f'class_{i}') for i in range(3)])
    factor = deepness.PLUGIN_SCALE / 4095
    values = np.random.default_rng(3).random((2, 8, 8, 3), np.float32)   # layer / 255
    reference = onnx_session(source, threads=1).run(
        ['height', 'sem'], {'image': values * np.float32(factor)})
    paths = {kind: str(tmp_path / deepness.FILES[kind]) for kind in deepness.KINDS}
    for kind, path in paths.items():
        deepness.write(source, path, kind, card, tile=8, factor=factor, gsd=GSD)
        model = onnx.load(path)
        assert [o.name for o in model.graph.output] == [
            {'height': 'height', 'classes': 'sem'}[kind]]
        assert 'Relu' not in {n.op_type for n in model.graph.node}      # norm's node gone
    maps = dict(height=reference[0], sem=reference[1])
    for kind, path in paths.items():
        np.testing.assert_array_equal(deepness.run(path, values), deepness.plugin_maps(kind, maps))
    # without the factor the layer's values are not the network's
    deepness.write(source, paths['height'], 'height', card, tile=8, factor=1.0, gsd=GSD)
    assert not np.allclose(deepness.run(paths['height'], values), maps['height'][:, None])
