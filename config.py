"""Every setting of DSMNet training and testing, in one place.

Edit the values below, or override any of them for one run with
`--set NAME=VALUE` on every script (nothing ever rewrites this file).
Settings marked "None: from the dataset" take the published value for
`dataset_name` from the DATASETS table at the bottom.

The annotation after each name is what the setting may be (its rule: a
type, the strings a Literal lists, or a rule of utils/rules.py). Every rule
is checked once, right after `--set` and before TensorFlow starts; a value
that breaks one stops the run with one line naming the setting, its value
and what is allowed.

`strategy` and the `*global_batch_size` names are computed on first use,
after any `--set` overrides, from the distribution settings; `from config
import *` gives them too. Until then this file imports only utils/rules.py
of the project's, so `import config` alone never starts TensorFlow.
"""
import json
import os
import sys
import types
from typing import Literal

from utils.rules import (CROP_MULTIPLE, Rule, class_codes, encoder_weights, folder_name, gpu_ids,
                         label_value, number, radiometric_scale, tf_config,
                         validation_metric, weights_file, whole)


# ----------------------------------------------------------------- devices
multi_gpu_enabled: bool = False     # True: MirroredStrategy over every GPU in gpu_devices
gpu_devices: gpu_ids = "0"          # comma-separated GPU ids, e.g. "0,1"
cpu_replicas: whole(at_least=0) = 0  # >1, mirrored: that many CPU replicas, GPUs hidden
distribution: Literal['auto', 'default', 'mirrored', 'multi_worker'] = 'auto'
                            # 'auto': multi_worker when the TF_CONFIG environment
                            # variable is set, else mirrored when multi_gpu_enabled,
                            # else default; TF_CONFIG's rule: ENVIRONMENT below
mixed_precision: Literal['float32', 'mixed_bfloat16', 'mixed_float16'] = 'float32'
jit_compile: bool = False           # XLA-compile the train and inference steps
steps_per_execution: whole(at_least=1) = 1  # train steps run inside one tf.function call
sync_batchnorm: bool = False        # BatchNormalization statistics over the global batch
seed: whole(at_least=0) = 42
deterministic: bool = False         # TensorFlow op determinism (slower)

# ----------------------------------------------------------------- data
dataset_name: folder_name = 'synthetic'  # see DATASETS below
shortcut_path: str = './datasets/'  # root holding datasets/<dataset_name>/
cropSize: whole(at_least=CROP_MULTIPLE, multiple_of=CROP_MULTIPLE) = None   # None: from
                            # the dataset; the MTL's encoder halves the side 5 times
batch_size: whole(at_least=1) = None    # per replica; None: from the dataset
label_codes: class_codes = None     # None: from the dataset
unlabelled_code: label_value = 'auto'   # the label value of unlabelled pixels, left out
                            # of the semantic loss and metrics: None (every value must
                            # be a class), or a value like label_codes that is none of
                            # them; 'auto': from the dataset (DFC2018 0, Vaihingen black)
sar_mode: bool = False              # DFC2023: stack the SAR channel as a 4th input
image_scale: radiometric_scale = 'auto'     # image values -> [0, 1]: 'auto' divides
                            # integers by their declared bit depth's maximum (uint8:
                            # 255, uint16: 65535 unless the file declares e.g. 12
                            # bits) and min-max scales floats outside [0, 1];
                            # 'minmax' per image; a number N divides by N (e.g. 4095
                            # for 12-bit imagery stored in uint16 without saying so)
normalize_flag: bool = True         # normals stored in [0, 1] (False: [0, 255])
augment: bool = False               # random flips and 90-degree rotations
train_valid_flag: bool = True       # False: merge the valid split into train
roof_height_threshold: number(at_least=0) = None    # edge map: threshold on 0..255
                            # heights; None: from the dataset (50 as published)
canny_lt: whole(at_least=0) = 50    # edge map: Canny thresholds
canny_ht: whole(at_least=0) = 150

# ----------------------------------------------------------------- network
backbone_weights: encoder_weights = 'auto'  # 'imagenet' | None (random init) | an .h5
                            # path; 'auto': from the dataset (None for synthetic)
mtl_decoder_scale: number(above=0) = None   # multiplies decoder widths (1.0 = paper);
                            # None: from the dataset
mtl_head_mode: Literal['dsm', 'full'] = 'dsm'    # 'dsm' (paper) | 'full'
sem_flag: bool = None              # the semantics head; None: from the dataset (True;
                            # False for a region prepared without labels)
norm_flag: bool = True
edge_flag: bool = False
dae_width_scale: number(above=0) = None     # multiplies DAE widths (1.0 = paper);
                            # None: from the dataset
dropout_rate: number(at_least=0, below=1) = None    # None: from the dataset (0.5 as published)
bn_momentum: number(at_least=0, at_most=1) = None   # BatchNormalization moving-average
                            # momentum; None: from the dataset (Keras' 0.99 as published)

# ----------------------------------------------------------------- losses
w1: number(at_least=0) = None       # height weight; None: from the dataset
w2: number(at_least=0) = None       # semantics
w3: number(at_least=0) = None       # normals
w4: number(at_least=0) = None       # edges
reg_loss: Literal['mse', 'huber'] = 'mse'
huber_delta: number(above=0) = 1.0

# ----------------------------------------------------------------- MTL training
mtl_lr: number(above=0) = 2e-4
mtl_beta_1: number(at_least=0, below=1) = 0.9
adam_epsilon: number(above=0) = 1e-7    # Keras' default, as published (both stages)
mtl_lr_decay: bool = False          # halve the learning rate after every epoch
mtl_batchSize: whole(at_least=1) = None     # per replica; None: batch_size
mtl_numEpochs: whole(at_least=1) = None     # None: from the dataset
mtl_training_samples: whole(at_least=1) = None  # samples per epoch on large-tile
                            # datasets; None: 10000
mtl_preload: bool = True            # patch datasets: decode once, keep in memory
                            # (tiles always are)
mtl_bb_freeze: bool = False         # freeze the DenseNet encoder
mtl_init_weights: weights_file = None   # fine-tuning: start from this best-weights file
                            # (train_mtl.py's); the settings that shape the network must
                            # be those in its .json, except label_codes: another class
                            # list re-initialises the semantic head

# ----------------------------------------------------------------- DAE training
dae_lr: number(above=0) = 2e-4
dae_beta_1: number(at_least=0, below=1) = 0.9
dae_lr_decay: bool = False
dae_batchSize: whole(at_least=1) = None     # per replica; None: batch_size
dae_numEpochs: whole(at_least=1) = None     # None: from the dataset
dae_training_samples: whole(at_least=1) = None
dae_preload: bool = True
dae_init_weights: weights_file = None   # the same for the DAE (train_dae.py's file);
                            # another class list re-initialises the input channels of
                            # the semantic probabilities
preload_max_gb: number(at_least=0) = 4.0    # patch datasets: cache decoded patches in
                            # memory (with *_preload) only up to this size; tiles are
                            # always cached

# ----------------------------------------------------------------- run control
early_stop_flag: bool = True
early_stop_patience: whole(at_least=1) = 10
early_stop_delta: number(at_least=0) = 1e-2
eval_metric: validation_metric = 'rmse'     # validation metric that picks the best weights
checkpoint_every: whole(at_least=1) = 500   # steps between training checkpoints
resume: bool = True                 # continue an interrupted run from its checkpoint
max_steps: whole(at_least=0) = 0    # >0: stop after this many steps (smoke runs)
plot_train_error: bool = True
plot_metrics: bool = True
checkpoint_root: str = './checkpoints/'
output_root: str = './output/'
predCheckPointPath: str = None      # None: <checkpoint_root>/<dataset>/mtl/, its
                            # best.weights.h5 (by validation) or last.weights.h5 (a run
                            # without validation), whichever was written last
corrCheckPointPath: str = None      # None: the same in <checkpoint_root>/<dataset>/dae/

# ----------------------------------------------------------------- testing
correction: bool = False            # refine the MTL height with the DAE
test_stride: whole(at_least=1, at_most='cropSize') = None   # sliding-window step;
                            # None: cropSize // 6
valid_stride: whole(at_least=1, at_most='cropSize') = None  # the same for validation
                            # during training, which only picks the best weights;
                            # None: cropSize // 2
test_batch_size: whole(at_least=1) = 8  # windows per inference call (global)
# predict.py's windows (test_dsm.py keeps the published test_stride, Gaussian,
# no flips): chosen from bench/predict_quality.py's table (README, Predict).
predict_stride: whole(at_least=1, at_most='cropSize') = None   # None: cropSize // 3
predict_window: Literal['gaussian', 'hann', 'triangle', 'trapezoid', 'flat'] = 'trapezoid'
                            # blending weight: 'gaussian' as published, or the outer
                            # product of a sin^2 / triangular / trapezoidal / flat
                            # profile
predict_flips: whole(at_least=1, at_most=8) = 1     # test-time D4 transforms averaged
                            # per window: 1 none, 2 + left-right mirror, 4 every
                            # flip, 8 flips and transposes (costs that many times)
predict_precision: Literal['float32', 'bfloat16', 'int8'] = 'float32'   # what
                            # predict.py computes in, on --engine openvino only:
                            # bfloat16 on CPUs with AVX-512 BF16 or AMX; int8 quantized
                            # by NNCF, calibrated on dataset_name's training images
predict_uncertainty: Literal['off', 'windows'] = 'windows'  # a height uncertainty
                            # (sigma, m) per pixel: 'windows', the spread of the
                            # overlapping windows' heights in the blending pass (no
                            # extra network call), calibrated on the valid split by
                            # test_dsm.py and written by predict.py --outputs
                            # ...,uncertainty (README, Uncertainty); 'off': none
test_plot_images: whole(at_least=0) = 3 # PNG figures for the first N test images

# Published settings per dataset (DSMNet paper and its code). A dataset_name
# not listed takes the longest entry it starts with; a name ending in '_bin'
# has the binary label codes (0, 1), class 1 its buildings. `layout` names a
# row of LAYOUTS in utils/data/layouts.py; `folders` ({modality: folder} in
# each split) replaces the layout's own folder names; `building_codes` are
# the label codes of buildings (test_dsm.py's errors per building,
# buildings.py's traced footprints); `class_names` name the label codes in
# their order, as the benchmarks' documentation does (exported models show
# them: export.py).
VAIHINGEN_CODES = [(255, 255, 255), (0, 0, 255), (0, 255, 255),
                   (0, 255, 0), (255, 255, 0), (255, 0, 0)]
VAIHINGEN_NAMES = ['impervious_surfaces', 'building', 'low_vegetation', 'tree', 'car',
                   'clutter']
DFC2019_NAMES = ['ground', 'high_vegetation', 'building', 'water', 'bridge_deck',
                 'unlabelled']
DATASETS = {
    # unlabelled_code: the boundary band of the "eroded" ISPRS reference is black.
    'Vaihingen': dict(layout='vaihingen', cropSize=320, batch_size=4,
                      label_codes=VAIHINGEN_CODES, unlabelled_code=(0, 0, 0),
                      class_names=VAIHINGEN_NAMES,
                      building_codes=[(0, 0, 255)], w1=1e-4, w2=1e-1, w3=1e-5, w4=1e-3),
    'Vaihingen_crp256': dict(layout='split_folders', cropSize=256, batch_size=10,
                             folders=dict(image='rgb', height='ndsm', labels='sem', sar=None),
                             label_codes=VAIHINGEN_CODES, unlabelled_code=(0, 0, 0),
                             class_names=VAIHINGEN_NAMES,
                             building_codes=[(0, 0, 255)], w1=1e-4, w2=1e-1, w3=1e-5,
                             w4=1e-3),
    # unlabelled_code: the DFC2018 ground truth marks unclassified pixels 0.
    'DFC2018': dict(layout='dfc2018', cropSize=320, batch_size=4,
                    label_codes=list(range(1, 21)), unlabelled_code=0, building_codes=[8, 9],
                    class_names=['healthy_grass', 'stressed_grass', 'artificial_turf',
                                 'evergreen_trees', 'deciduous_trees', 'bare_earth', 'water',
                                 'residential_buildings', 'non_residential_buildings',
                                 'roads', 'sidewalks', 'crosswalks', 'major_thoroughfares',
                                 'highways', 'railways', 'paved_parking_lots',
                                 'unpaved_parking_lots', 'cars', 'trains', 'stadium_seats'],
                    w1=100, w2=1, w3=10, w4=100),
    # DFC2019's code 65 means unlabelled, but the published code trains it as a class.
    'DFC2019_crp256': dict(layout='dfc2019', cropSize=256, batch_size=10,
                           label_codes=[2, 5, 6, 9, 17, 65], building_codes=[6],
                           class_names=DFC2019_NAMES,
                           w1=1e-2, w2=1e-1, w3=1e-5, w4=100),
    'DFC2019_crp512': dict(layout='dfc2019', cropSize=512, batch_size=2,
                           label_codes=[2, 5, 6, 9, 17, 65], building_codes=[6],
                           class_names=DFC2019_NAMES,
                           w1=1e-2, w2=1e-1, w3=1e-5, w4=100),
    'DFC2023': dict(layout='split_folders', cropSize=512, batch_size=2,
                    label_codes=[0, 1], building_codes=[1], w1=1e-3, w2=1.0, w3=1e-5,
                    w4=1e-3, class_names=['background', 'building']),
    # Built in, generated on first use: trains and tests offline on a CPU.
    'synthetic': dict(layout='split_folders', cropSize=96, batch_size=8,
                      folders=dict(image='rgb', height='dsm', labels='sem', sar=None),
                      label_codes=[0, 1, 2, 3, 4, 5], building_codes=[1],
                      class_names=['impervious', 'building', 'low_vegetation', 'tree', 'car',
                                   'clutter'],
                      w1=1.0, w2=1.0, w3=0.1, w4=0.1,
                      backbone_weights=None, mtl_decoder_scale=0.25, dae_width_scale=0.25,
                      roof_height_threshold=2,   # its heights are metres, 0-27
                      bn_momentum=0.9,   # a short run: inference statistics must catch up
                      dropout_rate=0.1,  # 0.5 starves its 8- and 16-channel decoder layers
                      # minutes on a 2-core CPU; validation tiles coarser (valid_stride)
                      mtl_numEpochs=12, dae_numEpochs=2),
}
# What an entry does not name, and a dataset_name matching no entry.
PUBLISHED = dict(layout='split_folders', folders=None, cropSize=256, batch_size=2,
                 label_codes=[0, 1], unlabelled_code=None, building_codes=[], class_names=None,
                 sem_flag=True,
                 w1=1.0, w2=1.0, w3=1.0, w4=1.0,
                 backbone_weights='imagenet', mtl_decoder_scale=1.0, dae_width_scale=1.0,
                 roof_height_threshold=50, bn_momentum=0.99, dropout_rate=0.5,
                 mtl_numEpochs=20, dae_numEpochs=20,
                 mtl_training_samples=10000, dae_training_samples=10000)
# What a dataset's entry says that is no setting: the settings carry them too.
DATASET_FACTS = ('layout', 'folders', 'building_codes', 'class_names')


def prepared_settings(name, root=None):
    """The settings prepare_dataset.py recorded in <root>/<name>/dataset.json
    (those PUBLISHED names), or None when the dataset has no such file.
    root: the datasets root, default shortcut_path."""
    root = shortcut_path if root is None else root
    path = os.path.join(root, name, 'dataset.json') \
        if isinstance(root, str) and name else None
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            recorded = json.load(f).get('settings', {})
        except ValueError as err:
            raise ValueError(f"{path} is damaged ({err}): run prepare_dataset.py again")
    return {k: v for k, v in recorded.items() if k in PUBLISHED}


def published_name(name):
    """The DATASETS entry a dataset name takes its settings from: the longest
    that it starts with; None for a name of one's own."""
    matches = [k for k in DATASETS if name.startswith(k)]
    return max(matches, key=len) if matches else None


def dataset_settings(name, root=None):
    """The settings of a dataset name: those its dataset.json under `root`
    (default shortcut_path) records (a dataset prepare_dataset.py made), else
    the published entry (longest matching prefix)."""
    prepared = prepared_settings(name, root)
    if prepared is not None:
        return dict(PUBLISHED, **prepared)
    published = published_name(name)
    entry = dict(PUBLISHED, **(DATASETS[published] if published else {}))
    if name.endswith('_bin'):   # 0/1 masks: the full labels' unlabelled value is not in them
        entry.update(label_codes=[0, 1], unlabelled_code=None, building_codes=[1],
                     class_names=['other', 'building'])
    return entry


# ----------------------------------------------------------------- resolution
# The settings that take the dataset's published value, and the value that
# asks for it: None, except for backbone_weights and unlabelled_code, whose
# None is a value of their own (random initial weights; no unlabelled value)
# and which ask with 'auto'.
FROM_DATASET = dict.fromkeys(
    ('cropSize', 'batch_size', 'label_codes', 'sem_flag', 'w1', 'w2', 'w3', 'w4',
     'mtl_decoder_scale', 'dae_width_scale', 'mtl_numEpochs', 'dae_numEpochs',
     'mtl_training_samples', 'dae_training_samples', 'roof_height_threshold', 'bn_momentum',
     'dropout_rate'),
    None)
FROM_DATASET['backbone_weights'] = 'auto'
FROM_DATASET['unlabelled_code'] = 'auto'    # None: no unlabelled value, on any dataset
# The settings whose None is worked out from the other settings `s`, and how.
DERIVED = {
    'mtl_batchSize': lambda s: s['batch_size'],
    'dae_batchSize': lambda s: s['batch_size'],
    'test_stride': lambda s: max(1, s['cropSize'] // 6),
    'valid_stride': lambda s: max(1, s['cropSize'] // 2),
    'predict_stride': lambda s: max(1, s['cropSize'] // 3),
    'predCheckPointPath': lambda s: trained_weights('mtl', s),
    'corrCheckPointPath': lambda s: trained_weights('dae', s),
}
# What a training run keeps in its folder: the best weights by validation, or
# without validation (train_valid_flag = False) the weights of its last
# epoch; each named for what it is.
BEST_WEIGHTS, LAST_WEIGHTS = 'best.weights.h5', 'last.weights.h5'


def trained_weights(stage, s=None):
    """The weights file a stage's run in its default folder kept: of
    best.weights.h5 and last.weights.h5 the one written last (best when
    neither exists, so the error about it names the usual file).
    s: the settings, as a dict (default: this module's)."""
    s = globals() if s is None else s
    run = os.path.join(s['checkpoint_root'], s['dataset_name'], stage)
    files = [os.path.join(run, name) for name in (BEST_WEIGHTS, LAST_WEIGHTS)]
    found = [f for f in files if os.path.exists(f)]
    return max(found, key=os.path.getmtime) if found else files[0]


def resolved(values):
    """The settings `values` ({name: value as declared or set}, every setting)
    with those left to the dataset or to other settings filled in, and the
    dataset's DATASET_FACTS (`layout`, `folders`, `building_codes`,
    `class_names`). A value
    of the wrong type is left for its rule to name, never an error here."""
    s = dict(values)
    name = s['dataset_name']
    entry = dataset_settings(name if isinstance(name, str) else '', s['shortcut_path'])
    for key, ask in FROM_DATASET.items():
        if s[key] == ask:
            s[key] = entry[key]
    s.update({fact: entry[fact] for fact in DATASET_FACTS})
    if isinstance(s['label_codes'], (list, tuple)):   # colours may be written as lists
        s['label_codes'] = [tuple(c) if isinstance(c, (list, tuple)) else c
                            for c in s['label_codes']]
    if isinstance(s['unlabelled_code'], list):
        s['unlabelled_code'] = tuple(s['unlabelled_code'])
    s['building_codes'] = [tuple(c) if isinstance(c, list) else c for c in s['building_codes']]
    for key, derive in DERIVED.items():
        try:
            s[key] = derive(s) if s[key] is None else s[key]
        except TypeError:
            s[key] = None
    return s


def resolve():
    """Fill this module's settings that are left to the dataset or to other
    settings, from what this file (or --set) declares for them in `declared`.
    utils/settings.override runs it again after every change."""
    asked = (*FROM_DATASET, *DERIVED)
    globals().update(resolved({**{key: globals()[key] for key in __annotations__},
                               **{key: declared[key] for key in asked}}))


# Environment variables read with the settings, checked with them.
ENVIRONMENT = {'TF_CONFIG': tf_config}


# ----------------------------------------------------------------- computed
# Worked out on first use, after --set (PEP 562), for scripts that
# star-import this file: every rule is checked (utils/rules.py), then
# utils/distribute.py builds the strategy, importing TensorFlow only then.
# `from config import *` asks for every name in __all__, so it builds the
# strategy. Neither module imports this one: they take it as an argument.
PER_REPLICA = {'global_batch_size': 'batch_size', 'mtl_global_batch_size': 'mtl_batchSize',
               'dae_global_batch_size': 'dae_batchSize'}


def __getattr__(attr):
    if attr not in COMPUTED:
        raise AttributeError(f"config has no setting {attr!r}")
    from utils import distribute, rules
    this = sys.modules[__name__]
    if not distribute.built():
        rules.check(this)
    strategy = distribute.get_strategy(this)
    if attr == 'strategy':
        return strategy
    return globals()[PER_REPLICA[attr]] * strategy.num_replicas_in_sync


COMPUTED = ('strategy', *PER_REPLICA)
declared = {key: globals()[key] for key in (*FROM_DATASET, *DERIVED)}
resolve()
# What `from config import *` gives (the seed's style): every name a script
# can read here, the settings, the dataset's facts, the tables and
# functions, and the computed names; not what this file imports.
__all__ = [name for name, value in list(globals().items())
           if not name.startswith('_') and not isinstance(value, (types.ModuleType, Rule))
           and (not callable(value) or getattr(value, '__module__', None) == __name__)
           ] + list(COMPUTED)
