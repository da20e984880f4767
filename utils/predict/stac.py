"""The export as a STAC Item with the Machine Learning Model extension
(MLM), the form model catalogues and the tools searching them read: what
the network takes (bands, shape, dimension order, value scaling; the
training images' band statistics with the bands), what it returns (units,
classes), and assets linking its files: the SavedModel and ONNX model (the
same interface, role mlm:model), the Deepness models, the model card, and
the weights with the settings beside them (role mlm:weights), copied next
to the item so that the folder is whole wherever it goes and predict.py
--model runs from it (utils/model/weights.from_stac_item).

Fields as the extension's specification (stac-extensions/mlm) defines them;
model.stac.json validates with the stac-model package (tests).
"""
import json
import os
import shutil

from utils.model.weights import STAC_ASSETS, recorded_settings
from utils.predict import deepness, export

ITEM = 'model.stac.json'
STAC_VERSION = '1.1.0'      # its `bands` carry the statistics and are what mlm:input names
MLM_SCHEMA = 'https://stac-extensions.github.io/mlm/v1.6.0/schema.json'
ONNX_TYPE = 'application/octet-stream; framework=onnx; profile=onnx'


def weights_name(stage):
    """The weights' file name beside the item."""
    return f'{stage}.weights.h5'


def copy_weights(files, folder, cfg):
    """Copy the WeightsFiles `files` ({stage: file}) and the .json beside
    them into `folder`; weights without one get the settings `cfg` built
    their network with, so the copy builds it again. The names written."""
    names = []
    for stage, found in files.items():
        name = weights_name(stage)
        shutil.copyfile(found.path, os.path.join(folder, name))
        if os.path.exists(found.path + '.json'):
            shutil.copyfile(found.path + '.json', os.path.join(folder, name + '.json'))
        else:
            with open(os.path.join(folder, name + '.json'), 'w') as f:
                json.dump({'kind': stage, 'settings': recorded_settings(cfg, stage)}, f, indent=2)
        names += [name, name + '.json']
    return names


def _value_scaling(card):
    scale = card['input']['image_scale']
    if isinstance(scale, str):      # of each file or each image, as utils/geo/image.py scales
        return [dict(type='processing', format='python',
                     expression='utils.geo.image:Image.to_unit',
                     description=f"image_scale {scale!r}: {card['input']['scale_rule']}")]
    return [dict(type='scale', value=scale)]


def _outputs(card, tile):
    outputs = []
    for name, out in card['outputs'].items():
        if out['units'] == 'probability':
            outputs.append({
                'name': name, 'description': out['meaning'],
                'tasks': ['semantic-segmentation'],
                'result': dict(shape=[-1, tile, tile, len(card['classes'])],
                               dim_order=['batch', 'height', 'width', 'class'],
                               data_type='float32'),
                'classification:classes': [
                    dict(value=c['index'], name=c['name'],
                         description=f"{c['name'].replace('_', ' ')} (label code {c['code']})",
                         color_hint='%02X%02X%02X' % tuple(c['colour']))
                    for c in card['classes']]})
        else:
            extra = out['shape'][3:]
            outputs.append({
                'name': name, 'description': f"{out['meaning']}, in {out['units']}",
                'tasks': ['regression'],
                'result': dict(shape=[-1, tile, tile] + extra,
                               dim_order=['batch', 'height', 'width'] + ['channel'] * len(extra),
                               data_type='float32'),
                # STAC's common `unit` (UDUNITS), where the output has one
                **({'unit': 'm'} if out['units'] == 'metres' else {})})
    return outputs


def _assets(card, names, bands):
    # STAC 1.1 allows the Item's `bands` only where an asset has some: the
    # models name theirs.
    named = [dict(name=b['name']) for b in bands]
    onnx = dict(type=ONNX_TYPE, roles=['mlm:model', 'model'], bands=named, **{
        'mlm:artifact_type': 'onnx', 'mlm:framework': 'ONNX'})
    known = {
        'saved_model': ('saved_model', dict(
            title='TensorFlow SavedModel', roles=['mlm:model', 'model'],
            description=f"signature {card['saved_model_signature']!r}", bands=named,
            **{'mlm:artifact_type': 'tf.saved_model.save'})),
        'model.onnx': ('onnx', dict(
            title=f"ONNX model (opset {card['onnx_opset']})",
            description='the model card in its metadata under model_card', **onnx)),
        'model_card.json': ('model_card', dict(
            title='DSMNet model card', type='application/json', roles=['metadata'])),
    }
    for kind, name in deepness.FILES.items():
        known[name] = (f'deepness_{kind}', dict(
            title=f'QGIS Deepness {deepness.MODEL_TYPES[kind]} ({kind})', type=ONNX_TYPE,
            roles=['model'], bands=named,
            description='input [1, bands, tile, tile] of the layer / 255; settings in its '
                        'ONNX metadata (README, Export)'))
    for stage, key in STAC_ASSETS.items():
        known[weights_name(stage)] = (key, dict(
            title=f'{stage.upper()} weights (Keras save_weights)', type='application/x-hdf5',
            roles=['mlm:weights', 'weights'],
            **{'mlm:artifact_type': 'tf.keras.Model.save_weights'}))
        known[weights_name(stage) + '.json'] = (key + '_settings', dict(
            title=f'settings the {stage.upper()} was built with', type='application/json',
            roles=['metadata']))
    return {known[n][0]: dict(href='./' + n, **known[n][1]) for n in names if n in known}


def item(card, names, *, total_parameters, framework_version, created, batch_size):
    """The STAC Item (a dict) of the export `card` whose files `names` lie
    beside it; created: the export's ISO 8601 UTC time."""
    tile = card['windows']['size']
    stats = zip(card['input'].get('band_mean') or [], card['input'].get('band_spread') or [])
    bands = [dict(name=b.split(' ')[0].lower(), description=b) for b in card['input']['bands']]
    for band, (mean, spread) in zip(bands, stats):
        band['statistics'] = dict(mean=mean, stddev=spread)
        band['description'] += (", statistics of the training images' values scaled "
                                "to [0, 1]")
    tasks = sorted({task for out in _outputs(card, tile) for task in out['tasks']})
    properties = {
        'datetime': created,
        'title': f"DSMNet {card['network']} ({card['dataset']})",
        'description': 'Height above ground (nDSM) and classes from aerial RGB imagery: '
                       'the multi-task network' + (', refined by the denoising '
                                                   'autoencoder' if 'DAE' in card['network']
                                                   else ''),
        'bands': bands,
        'mlm:name': f"DSMNet {card['network']} {card['dataset']}",
        'mlm:architecture': 'DenseNet121 encoder, multi-task decoder'
                            + (', U-Net denoising autoencoder' if 'DAE' in card['network']
                               else ''),
        'mlm:tasks': tasks,
        'mlm:framework': 'TensorFlow',
        'mlm:framework_version': framework_version,
        'mlm:total_parameters': int(total_parameters),
        'mlm:accelerator': None,
        'mlm:accelerator_constrained': False,
        'mlm:accelerator_summary': 'CPU or NVIDIA GPUs through TensorFlow, CPU through ONNX '
                                   'Runtime',
        'mlm:batch_size_suggestion': int(batch_size),
        'mlm:input': [{
            'name': export.INPUT,
            'description': f"windows of {tile} px (any multiple of "
                           f"{card['input']['multiple_of']} works) of source bands "
                           f"{card['input']['band_order']}, scaled to [0, 1]",
            'bands': [b['name'] for b in bands],
            'input': dict(shape=[-1, tile, tile, len(bands)],
                          dim_order=['batch', 'height', 'width', 'bands'], data_type='float32'),
            'value_scaling': _value_scaling(card),
            'resize_type': None,
        }],
        'mlm:output': _outputs(card, tile),
        'mlm:hyperparameters': {
            'window_stride': card['windows']['stride'],
            'window_blending': card['windows']['blending'],
            'test_time_flips': card['windows']['flips']},
    }
    if card['ground_sampling_distance_m'] is not None:
        properties['gsd'] = card['ground_sampling_distance_m']
    return {
        'type': 'Feature', 'stac_version': STAC_VERSION, 'stac_extensions': [MLM_SCHEMA],
        'id': f"dsmnet-{card['dataset']}-{card['network']}".lower().replace(' + ', '-'),
        'geometry': None, 'properties': properties, 'links': [],
        'assets': _assets(card, names, bands),
    }


def write(path, stac_item):
    with open(path, 'w') as f:
        json.dump(stac_item, f, indent=2)
