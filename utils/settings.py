"""config.py's dataset-dependent settings, `--set NAME=VALUE`, and the scripts'
command line.

A setting left at None (or 'auto' for backbone_weights) in config.py takes
the published value of the current dataset. Overrides change the module's
attributes in memory; config.py itself is never written.
"""
import argparse
import ast
import difflib
import os
import sys
import types

from utils.errors import SettingError, UserError

# TensorFlow's C++ start-up chatter buries our output; TF_CPP_MIN_LOG_LEVEL=0
# in the environment brings it back.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


# Settings whose None means "the dataset's published value" (resolved again
# whenever dataset_name or one of them is overridden).
_FROM_DATASET = ('cropSize', 'batch_size', 'label_codes', 'w1', 'w2', 'w3', 'w4',
                 'backbone_weights', 'mtl_decoder_scale', 'dae_width_scale', 'mtl_numEpochs',
                 'dae_numEpochs', 'mtl_training_samples', 'dae_training_samples',
                 'roof_height_threshold', 'bn_momentum', 'dropout_rate')
# Settings whose None is derived from other settings.
_DERIVED = ('mtl_batchSize', 'dae_batchSize', 'test_stride', 'valid_stride',
            'predCheckPointPath', 'corrCheckPointPath')
_declared = {}


def names():
    """Every user setting of config.py."""
    import config
    return sorted(k for k, v in vars(config).items()
                  if not k.startswith('_') and not k.isupper()
                  and not isinstance(v, (types.ModuleType, types.FunctionType)))


def resolve(config):
    """Fill the None settings of the config module from the dataset table and
    from each other (config.py calls this while it is still being imported)."""
    if not _declared:
        _declared.update({k: getattr(config, k) for k in _FROM_DATASET + _DERIVED})
    entry = config.dataset_settings(config.dataset_name)
    for key in _FROM_DATASET:
        value = _declared[key]
        is_auto = value is None or (key == 'backbone_weights' and value == 'auto')
        setattr(config, key, entry[key] if is_auto else value)
    config.layout = entry['layout']
    config.label_codes = [tuple(c) if isinstance(c, (list, tuple)) else c
                          for c in config.label_codes]
    derived = {
        'mtl_batchSize': config.batch_size,
        'dae_batchSize': config.batch_size,
        'test_stride': max(1, config.cropSize // 6),
        'valid_stride': max(1, config.cropSize // 2),
        'predCheckPointPath': os.path.join(config.checkpoint_root, config.dataset_name,
                                           'mtl', 'best.weights.h5'),
        'corrCheckPointPath': os.path.join(config.checkpoint_root, config.dataset_name,
                                           'dae', 'best.weights.h5'),
    }
    for key in _DERIVED:
        setattr(config, key, derived[key] if _declared[key] is None else _declared[key])


def parse_value(name, text):
    """Parse `text` to the type of the setting's declared value."""
    import config
    default = _declared.get(name, getattr(config, name))
    if default is None or (name == 'backbone_weights'):
        default = config.dataset_settings(config.dataset_name).get(name, default)
    if text.strip().lower() == 'none':
        return None
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ('1', 'true', 'yes', 'on'):
            return True
        if lowered in ('0', 'false', 'no', 'off'):
            return False
        raise SettingError(f"--set {name}={text}: expected True or False")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            number = float(text)
        except ValueError:
            raise SettingError(f"--set {name}={text}: expected a number "
                             f"like {default!r}") from None
        if isinstance(default, int) and number.is_integer() and '.' not in text \
                and 'e' not in text.lower():
            return int(number)
        return number
    if isinstance(default, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override(name, value):
    """Set one setting (already parsed) and re-derive what depends on it."""
    import config
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ''
        raise SettingError(f"unknown setting {name!r} in --set.{hint} "
                         f"The settings are the names in config.py.")
    if name in _declared:
        _declared[name] = value
    setattr(config, name, value)
    resolve(config)


def apply(pairs):
    """Apply a list of 'NAME=VALUE' strings, in order."""
    for pair in pairs or []:
        if '=' not in pair:
            raise SettingError(f"--set expects NAME=VALUE, got {pair!r}")
        name, text = pair.split('=', 1)
        name = name.strip()
        if name not in names():
            override(name, None)    # raises with suggestions
        override(name, parse_value(name, text))


def parser(description):
    """An ArgumentParser with the --set option every script shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                   help='override a config.py setting for this run (repeatable)')
    return p


def parse_args(p, argv=None):
    """Parse the command line and apply --set; a bad --set exits with its message."""
    args = p.parse_args(argv)
    try:
        apply(args.set)
    except ValueError as err:
        p.exit(2, f"error: {err}\n")
    return args


def run_main(main):
    """Run a script's main(); a user error ends it with its message, exit code 1."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
