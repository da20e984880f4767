"""A weights file: the Keras weights at <path> and, beside them, <path>.json
holding the settings that shape the network (ARCHITECTURE), the input
contract (window size, image scale, band order, the training images' band
statistics) and what training recorded (epoch, metrics).

WeightsFile reads the .json once; check() compares its architecture with
the run's settings (a wrong flag named, not a shape error deep inside
Keras) and load_into() fills a network. save() writes both files under a
temporary name and renames them, so an interrupted write never replaces a
good file; store() adds an entry later (test_dsm.py's uncertainty
calibration). predict.py, test_dsm.py and export.py take their weights with
the same options (add_options, from_options), also from the STAC item
export.py writes (--model: its weights assets, STAC_ASSETS); fine-tuning
starts from one (utils/train/finetune.py).
"""
import dataclasses
import hashlib
import json
import os

from utils.data.samples import image_channels
from utils.errors import CheckpointError, SettingError, first_line
from utils.model import heads

STAGES = ('mtl', 'dae')
# The settings that change the layers of each network (the head switches first).
ARCHITECTURE = {
    'mtl': heads.FLAGS + ('mtl_head_mode', 'mtl_decoder_scale', 'sar_mode', 'label_codes'),
    'dae': heads.FLAGS + ('dae_width_scale', 'sar_mode', 'label_codes'),
}
# Settings recorded beside the weights that the networks' users take unless
# set on the command line: the window size and how image values were scaled.
ADOPTED = ('cropSize', 'image_scale')
# The setting naming each stage's trained weights, and the script writing them.
SETTING_OF_PATH = {'mtl': 'predCheckPointPath', 'dae': 'corrCheckPointPath'}
TRAINED_BY = {'mtl': 'train_mtl.py', 'dae': 'train_dae.py'}
# The assets of export.py's STAC item (model.stac.json) holding each stage's
# weights, the .json beside them in the asset named <key>_settings.
STAC_ASSETS = {'mtl': 'mtl_weights', 'dae': 'dae_weights'}


def recorded_settings(cfg, stage):
    """What a weights file of `stage` records of the settings `cfg`."""
    return {k: getattr(cfg, k) for k in ARCHITECTURE[stage] + ADOPTED} | {
        'dataset_name': cfg.dataset_name}


def as_recorded(cfg, stage):
    """recorded_settings as the .json reads back (tuples become lists)."""
    return json.loads(json.dumps(recorded_settings(cfg, stage)))


def save(model, path, stage, cfg, extra=None, imagery=None):
    """Write the weights of `model` and the settings `cfg` atomically;
    `extra` (e.g. metrics) goes in the JSON, `imagery` (the training
    images' band statistics, data/checks.SplitSummary.imagery()) with the
    band order."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path[:-len('.weights.h5')] + '.tmp.weights.h5'
    model.save_weights(tmp)
    bands = list(range(1, image_channels(cfg) + 1))
    with open(path + '.json.tmp', 'w') as f:
        json.dump({'kind': stage, 'settings': recorded_settings(cfg, stage),
                   'imagery': {'bands': bands, **(imagery or {})},
                   **(extra or {})}, f, indent=2, default=float)
    os.replace(tmp, path)
    os.replace(path + '.json.tmp', path + '.json')


@dataclasses.dataclass(frozen=True)
class Contract:
    """What a network expects of its input: windows of `crop` px of the
    source bands `bands` (1-based, in the network's order) scaled by
    `image_scale`; the training images' `band_mean` and `band_spread` in
    [0, 1] units (None where the weights do not record them)."""
    crop: int
    bands: list
    image_scale: object
    band_mean: list = None
    band_spread: list = None


class WeightsFile:
    """The weights of `stage` ('mtl' or 'dae') at `path`, named by `source`
    (the setting or option an error names; default the stage's setting)."""

    def __init__(self, path, stage, source=None):
        if stage not in STAGES:
            raise ValueError(f"stage = {stage!r}: use 'mtl' or 'dae'")
        self.path, self.stage = str(path), stage
        self.source = source or SETTING_OF_PATH[stage]
        self.record = {}
        if os.path.exists(self.path + '.json'):
            with open(self.path + '.json') as f:
                self.record = json.load(f)
        self._sha256 = None

    @property
    def settings(self):
        """The settings the .json records ({} without one)."""
        return self.record.get('settings', {})

    @property
    def imagery(self):
        """How the training images were fed: 'bands', 'band_mean', 'band_spread'."""
        return self.record.get('imagery', {})

    def adopted(self, keep=()):
        """The recorded settings a network is rebuilt with: the architecture,
        cropSize and image_scale, except the names in `keep` (set by the
        user, so check() reports a mismatch instead)."""
        return {key: self.settings[key] for key in ARCHITECTURE[self.stage] + ADOPTED
                if key in self.settings and key not in keep}

    def contract(self, cfg):
        """The input Contract, with the settings `cfg` the network was built with."""
        found = self.imagery
        return Contract(cfg.cropSize, list(found.get('bands', range(1, image_channels(cfg) + 1))),
                        cfg.image_scale, found.get('band_mean'), found.get('band_spread'))

    def missing(self):
        """The error for weights that are not there."""
        return CheckpointError(
            f"{self.source} = {self.path!r}: no such file. Fix: train {self.stage.upper()} "
            f"weights with `python {TRAINED_BY[self.stage]}` (same --set options), or point "
            f"{self.source} at a weights file it wrote.")

    def check(self, cfg, skip=()):
        """CheckpointError unless the file exists and the architecture
        settings it records (but those in `skip`) are those of `cfg`."""
        if not os.path.exists(self.path):
            raise self.missing()
        current = as_recorded(cfg, self.stage)
        for key in ARCHITECTURE[self.stage]:
            if key not in skip and key in self.settings and self.settings[key] != current[key]:
                raise CheckpointError(
                    f"{self.source} = {self.path!r} was trained with {key}="
                    f"{self.settings[key]!r} but the settings have {key}={current[key]!r}. "
                    f"Fix: --set {key}={self.settings[key]!r} (dataset "
                    f"{self.settings.get('dataset_name')!r}), or other weights.")

    def store(self, key, value):
        """Add or replace one entry of the .json (e.g. test_dsm.py's
        uncertainty calibration), written whole under a temporary name and
        renamed, as save() writes it."""
        self.record[key] = value
        with open(self.path + '.json.tmp', 'w') as f:
            json.dump(self.record, f, indent=2, default=float)
        os.replace(self.path + '.json.tmp', self.path + '.json')

    def load_into(self, model):
        """Fill `model` with the weights (check() first)."""
        try:
            model.load_weights(self.path)
        except Exception as err:   # a file from another network or a truncated file
            raise CheckpointError(
                f"{self.source} = {self.path!r} does not fit the configured "
                f"{self.stage.upper()} ({first_line(err)[:160]}). Fix: use the weights "
                f"trained with these settings, or their settings (the .json written "
                f"beside the weights).") from err

    @property
    def sha256(self):
        """The file's checksum, as the outputs record it."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            with open(self.path, 'rb') as f:
                while chunk := f.read(2 ** 22):
                    digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256


def adopt(cfg, files, keep=()):
    """`cfg` with the settings the weights `files` (WeightsFiles, the MTL's
    first) record adopted (WeightsFile.adopted), resolved and checked again."""
    adopted = {}
    for found in files:
        if found is not None:
            adopted.update(found.adopted(keep))
    return cfg.replace(**adopted)


def add_options(parser):
    """The weights options predict.py, test_dsm.py and export.py share."""
    parser.add_argument('--correction', action='store_true',
                        help='refine the MTL height with the DAE (also: --set correction=True)')
    parser.add_argument('--mtl-weights', help='MTL weights file (default: predCheckPointPath)')
    parser.add_argument('--dae-weights', help='DAE weights file (default: corrCheckPointPath)')
    parser.add_argument('--model', metavar='ITEM',
                        help='a model.stac.json export.py wrote: the weights its assets name '
                             '(the MTL, and the DAE after it where the item has one)')


def from_options(args, cfg):
    """(MTL WeightsFile, DAE WeightsFile or None without correction) that
    the options (add_options) and the settings `cfg` name; with --model,
    those of the STAC item (from_stac_item)."""
    if getattr(args, 'model', None):
        if args.mtl_weights or args.dae_weights:
            raise SettingError(f"--model {args.model} names the weights itself: leave out "
                               f"--mtl-weights and --dae-weights, or --model")
        mtl, dae = from_stac_item(args.model)
        if dae is None and (args.correction or cfg.correction):
            raise SettingError(f"--correction: {args.model} names no DAE weights (exported "
                               f"without --correction); leave out --correction, or export "
                               f"again with it")
        return mtl, dae
    mtl = WeightsFile(args.mtl_weights, 'mtl', '--mtl-weights') if args.mtl_weights else \
        WeightsFile(cfg.predCheckPointPath, 'mtl')
    if not (args.correction or cfg.correction):
        return mtl, None
    dae = WeightsFile(args.dae_weights, 'dae', '--dae-weights') if args.dae_weights else \
        WeightsFile(cfg.corrCheckPointPath, 'dae')
    return mtl, dae


def from_stac_item(path):
    """(MTL WeightsFile, DAE WeightsFile or None) that the STAC item at
    `path` names in its assets STAC_ASSETS, their hrefs relative to it;
    CheckpointError naming the item and the asset when one is missing."""
    try:
        with open(path) as f:
            item = json.load(f)
        assets = item['assets']
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"--model {path}: not a STAC item with assets "
                              f"({first_line(err)}); give the model.stac.json export.py "
                              f"wrote") from err
    folder = os.path.dirname(os.path.abspath(path))
    found = {}
    for stage, key in STAC_ASSETS.items():
        if key not in assets:
            if stage == 'mtl':
                raise CheckpointError(f"--model {path}: no asset {key!r} (the MTL weights); "
                                      f"give the model.stac.json export.py wrote, or export "
                                      f"again")
            continue
        weights = os.path.normpath(os.path.join(folder, assets[key].get('href', '')))
        # the network's settings are read beside the weights (WeightsFile)
        for name, full in ((key, weights), (key + '_settings', weights + '.json')):
            if not os.path.isfile(full):
                raise CheckpointError(
                    f"--model {path}: its asset {name!r} is missing ({full}: no such file); "
                    f"keep the files export.py wrote beside the item together, or export "
                    f"again")
        found[stage] = WeightsFile(weights, stage, f"--model {path} ({key})")
    return found['mtl'], found.get('dae')
