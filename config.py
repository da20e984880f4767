"""Every setting of DSMNet training and testing, in one place.

Edit the values below, or override any of them for one run with
`--set NAME=VALUE` on every script (nothing ever rewrites this file).
Settings marked "None: from the dataset" take the published value for
`dataset_name` from the DATASETS table at the bottom.

`strategy` and the `*global_batch_size` names are computed on first use,
after any `--set` overrides, from the distribution settings.
"""

# ----------------------------------------------------------------- devices
multi_gpu_enabled = False   # True: MirroredStrategy over every GPU in gpu_devices
gpu_devices = "0"           # comma-separated GPU ids, e.g. "0,1"
cpu_replicas = 0            # >1 with no GPU: split the CPU into that many replicas
distribution = 'auto'       # 'auto' | 'default' | 'mirrored' | 'multi_worker'
                            # 'auto': multi_worker when TF_CONFIG is set, else
                            # mirrored when multi_gpu_enabled, else default
mixed_precision = 'float32' # 'float32' | 'mixed_bfloat16' | 'mixed_float16'
jit_compile = False         # XLA-compile the train and inference steps
steps_per_execution = 1     # train steps run inside one tf.function call
sync_batchnorm = False      # BatchNormalization statistics over the global batch
seed = 42
deterministic = False       # TensorFlow op determinism (slower)

# ----------------------------------------------------------------- data
dataset_name = 'synthetic'  # see DATASETS below
shortcut_path = './datasets/'   # root holding datasets/<dataset_name>/
cropSize = None             # None: from the dataset
batch_size = None           # per replica; None: from the dataset
label_codes = None          # None: from the dataset
sar_mode = False            # DFC2023: stack the SAR channel as a 4th input
normalize_flag = True       # normals stored in [0, 1] (False: [0, 255])
augment = False             # random flips and 90-degree rotations
train_valid_flag = True     # False: merge the valid split into train
roof_height_threshold = None    # edge map: threshold on 0..255 heights; None: from
                            # the dataset (50 as published)
canny_lt = 50               # edge map: Canny thresholds
canny_ht = 150

# ----------------------------------------------------------------- network
backbone_weights = 'auto'   # 'imagenet' | None (random init) | an .h5 path;
                            # 'auto': from the dataset (None for synthetic)
mtl_decoder_scale = None    # multiplies decoder widths (1.0 = paper); None: from the dataset
mtl_head_mode = 'dsm'       # 'dsm' (paper) | 'full'
sem_flag = True
norm_flag = True
edge_flag = False
dae_width_scale = None      # multiplies DAE widths (1.0 = paper); None: from the dataset
dropout_rate = None         # None: from the dataset (0.5 as published)
bn_momentum = None          # BatchNormalization moving-average momentum; None: from
                            # the dataset (Keras' 0.99 as published)

# ----------------------------------------------------------------- losses
w1 = None                   # height weight; None: from the dataset
w2 = None                   # semantics
w3 = None                   # normals
w4 = None                   # edges
reg_loss = 'mse'            # 'mse' | 'huber'
huber_delta = 1.0

# ----------------------------------------------------------------- MTL training
mtl_lr = 2e-4
mtl_beta_1 = 0.9
adam_epsilon = 1e-7         # Keras' default, as published (both stages)
mtl_lr_decay = False        # halve the learning rate after every epoch
mtl_batchSize = None        # per replica; None: batch_size
mtl_numEpochs = None        # None: from the dataset
mtl_training_samples = None # samples per epoch on large-tile datasets; None: 10000
mtl_preload = True          # patch datasets: decode once, keep in memory (tiles always are)
mtl_bb_freeze = False       # freeze the DenseNet encoder

# ----------------------------------------------------------------- DAE training
dae_lr = 2e-4
dae_beta_1 = 0.9
dae_lr_decay = False
dae_batchSize = None        # per replica; None: batch_size
dae_numEpochs = None        # None: from the dataset
dae_training_samples = None
dae_preload = True
preload_max_gb = 4.0        # patch datasets: cache decoded patches in memory (with
                            # *_preload) only up to this size; tiles are always cached

# ----------------------------------------------------------------- run control
early_stop_flag = True
early_stop_patience = 10
early_stop_delta = 1e-2
eval_metric = 'rmse'        # validation metric that picks the best weights
checkpoint_every = 500      # steps between training checkpoints
resume = True               # continue an interrupted run from its checkpoint
max_steps = 0               # >0: stop after this many steps (smoke runs)
plot_train_error = True
plot_metrics = True
checkpoint_root = './checkpoints/'
output_root = './output/'
predCheckPointPath = None   # None: <checkpoint_root>/<dataset>/mtl/best.weights.h5
corrCheckPointPath = None   # None: <checkpoint_root>/<dataset>/dae/best.weights.h5

# ----------------------------------------------------------------- testing
correction = False          # refine the MTL height with the DAE
test_stride = None          # sliding-window step; None: cropSize // 6
valid_stride = None         # the same for validation during training, which only
                            # picks the best weights; None: cropSize // 2
test_batch_size = 8         # windows per inference call (global)
test_plot_images = 3        # PNG figures for the first N test images

# Published settings per dataset (dsmnet.md). A dataset_name not listed
# takes the longest entry it starts with; a name ending in '_bin' has the
# binary label codes (0, 1).
VAIHINGEN_CODES = [(255, 255, 255), (0, 0, 255), (0, 255, 255),
                   (0, 255, 0), (255, 255, 0), (255, 0, 0)]
DATASETS = {
    'Vaihingen': dict(layout='vaihingen', cropSize=320, batch_size=4,
                      label_codes=VAIHINGEN_CODES, w1=1e-4, w2=1e-1, w3=1e-5, w4=1e-3),
    'Vaihingen_crp256': dict(layout='split_folders', cropSize=256, batch_size=10,
                             label_codes=VAIHINGEN_CODES,
                             w1=1e-4, w2=1e-1, w3=1e-5, w4=1e-3),
    'DFC2018': dict(layout='dfc2018', cropSize=320, batch_size=4,
                    label_codes=list(range(1, 21)), w1=100, w2=1, w3=10, w4=100),
    'DFC2019_crp256': dict(layout='dfc2019', cropSize=256, batch_size=10,
                           label_codes=[2, 5, 6, 9, 17, 65],
                           w1=1e-2, w2=1e-1, w3=1e-5, w4=100),
    'DFC2019_crp512': dict(layout='dfc2019', cropSize=512, batch_size=2,
                           label_codes=[2, 5, 6, 9, 17, 65],
                           w1=1e-2, w2=1e-1, w3=1e-5, w4=100),
    'DFC2023': dict(layout='split_folders', cropSize=512, batch_size=2,
                    label_codes=[0, 1], w1=1e-3, w2=1.0, w3=1e-5, w4=1e-3),
    # Built in, generated on first use: trains and tests offline on a CPU.
    'synthetic': dict(layout='split_folders', cropSize=96, batch_size=8,
                      label_codes=[0, 1, 2, 3, 4, 5], w1=1.0, w2=1.0, w3=0.1, w4=0.1,
                      backbone_weights=None, mtl_decoder_scale=0.25, dae_width_scale=0.25,
                      roof_height_threshold=2,   # its heights are metres, 0-27
                      bn_momentum=0.9,   # a short run: inference statistics must catch up
                      dropout_rate=0.1,  # 0.5 starves its 8- and 16-channel decoder layers
                      # minutes on a 2-core CPU; validation tiles coarser (valid_stride)
                      mtl_numEpochs=12, dae_numEpochs=2),
}
# What an entry does not name, and a dataset_name matching no entry.
PUBLISHED = dict(layout='split_folders', cropSize=256, batch_size=2,
                 label_codes=[0, 1], w1=1.0, w2=1.0, w3=1.0, w4=1.0,
                 backbone_weights='imagenet', mtl_decoder_scale=1.0, dae_width_scale=1.0,
                 roof_height_threshold=50, bn_momentum=0.99, dropout_rate=0.5,
                 mtl_numEpochs=20, dae_numEpochs=20,
                 mtl_training_samples=10000, dae_training_samples=10000)


def dataset_settings(name):
    """The published entry for a dataset name (longest matching prefix)."""
    matches = [k for k in DATASETS if name.startswith(k)]
    entry = dict(PUBLISHED, **(DATASETS[max(matches, key=len)] if matches else {}))
    if name.endswith('_bin'):
        entry['label_codes'] = [0, 1]
    return entry


def __getattr__(name):
    # Computed on first use so that --set overrides are applied first.
    from utils import distribute
    if name == 'strategy':
        return distribute.get_strategy()
    per_replica = {'global_batch_size': 'batch_size',
                   'mtl_global_batch_size': 'mtl_batchSize',
                   'dae_global_batch_size': 'dae_batchSize'}.get(name)
    if per_replica:
        return globals()[per_replica] * distribute.get_strategy().num_replicas_in_sync
    raise AttributeError(f"config has no setting {name!r}")


import sys as _sys  # noqa: E402
from utils import settings as _settings  # noqa: E402
_settings.resolve(_sys.modules[__name__])   # fill the None settings
