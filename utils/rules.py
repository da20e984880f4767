"""The words of config.py's rules, and their check.

A setting's rule is the annotation after its name in config.py: a type
(bool, str), a `Literal[...]` of the strings allowed, or one of the rules
below (`whole(...)`, `number(...)`, `gpu_ids`, ...), all evaluated when
config.py is imported. A rule that depends on another setting (a bound
naming cropSize, unlabelled_code against label_codes) reads it from the
settings it is checked with. Everything here takes those settings as an
argument (the config module or a utils.settings.Settings): config.py calls
check() on itself before it builds the strategy for a script that
star-imports it, and utils/settings.py calls it after --set, so neither
needs the other.
"""
import json
import os
import typing

from utils.errors import SettingError

# cropSize's rule (the MTL's encoder halves the side 5 times); the window
# side of prediction (utils/predict/blend.py) and the crop fit
# (utils/geo/grid.py) follow it too.
CROP_MULTIPLE = 32


class Rule:
    """What a setting may be: `allowed`, in the words an error shows;
    `test(value, settings)`, true for a value that works (`settings`: the
    other settings, for the rules that read them); `kind`, how `--set` reads
    its text (bool, int, float, str, 'literal' for a Python value, or
    'number_or_word': a number if the text is one, else the text)."""

    def __init__(self, allowed, test, kind):
        self.allowed, self._test, self.kind = allowed, test, kind

    def test(self, value, settings=None):
        return self._test(value, settings)


def _is(value, kind):
    return isinstance(value, kind) and not isinstance(value, bool)


def _bounds(**bounds):
    """(words, test) for bounds; a bound given as a string names another setting."""
    ops = {'at_least': ('>=', lambda a, b: a >= b), 'above': ('>', lambda a, b: a > b),
           'below': ('<', lambda a, b: a < b), 'at_most': ('<=', lambda a, b: a <= b)}
    given = [(key, bound) for key, bound in bounds.items() if bound is not None]
    words = ' and '.join(f'{ops[key][0]} {bound}' for key, bound in given)

    def test(value, settings):
        return all(ops[key][1](value, getattr(settings, bound) if isinstance(bound, str)
                               else bound)
                   for key, bound in given)
    return (' ' + words if words else ''), test


def _either(choices):
    shown = [repr(c) for c in choices]
    return ', '.join(shown[:-1]) + ' or ' + shown[-1] if len(shown) > 1 else shown[0]


def whole(at_least=None, at_most=None, multiple_of=None):
    """A whole number within the bounds, and a multiple of `multiple_of`."""
    words, within = _bounds(at_least=at_least, at_most=at_most)
    kind = f'a multiple of {multiple_of}' if multiple_of else 'a whole number'
    return Rule(kind + words, lambda v, s: _is(v, int) and within(v, s) and
                (not multiple_of or v % multiple_of == 0), int)


def number(at_least=None, above=None, below=None, at_most=None):
    """A number (whole or not) within the bounds."""
    words, within = _bounds(at_least=at_least, above=above, below=below, at_most=at_most)
    return Rule('a number' + words,
                lambda v, s: _is(v, (int, float)) and v == v and within(v, s), float)


def one_of(*choices):
    """One of the strings `choices` (what `Literal[...]` in config.py means)."""
    return Rule(_either(choices), lambda v, s: isinstance(v, str) and v in choices, str)


def _gpu_ids(value, settings):
    if not _is(value, (str, int)):
        return False
    parts = [p.strip() for p in str(value).split(',')]
    return all(p.isascii() and p.isdigit() for p in parts) and \
        len({int(p) for p in parts}) == len(parts)


def _colour(c):
    return isinstance(c, tuple) and len(c) == 3 and all(_is(x, int) and 0 <= x <= 255
                                                        for x in c)


def _class_codes(codes, settings):
    return isinstance(codes, (list, tuple)) and len(codes) > 0 and \
        len(set(codes)) == len(codes) and \
        (all(_is(c, int) for c in codes) or all(_colour(c) for c in codes))


def _label_value(value, settings):
    """None, or a value of the kind of label_codes that no class has."""
    if value is None:
        return True
    codes = settings.label_codes
    colours = all(_colour(c) for c in codes)
    return (_colour(value) if colours else _is(value, int)) and value not in codes


def _tf_config(text, settings):
    if not text:
        return settings.distribution != 'multi_worker'
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


HEIGHT_METRICS = ('rmse', 'mae', 'mse', 'delta1', 'delta2', 'delta3')
SEGMENTATION_METRICS = ('miou', 'oa', 'fwiou', 'mean_f1')
TYPES = {bool: Rule('True or False', lambda v, s: isinstance(v, bool), bool),
         str: Rule('a string', lambda v, s: isinstance(v, str), str)}
folder_name = Rule('a non-empty string (a DATASETS key, or your dataset folder name)',
                   lambda v, s: isinstance(v, str) and v.strip() != '', str)
gpu_ids = Rule('distinct GPU ids (whole numbers >= 0) separated by commas, e.g. "0,1"',
               _gpu_ids, str)
class_codes = Rule('a list of distinct class codes: whole numbers, or (r, g, b) colours '
                   'of 0..255', _class_codes, 'literal')
radiometric_scale = Rule(
    "'auto' (the file's declared bit depth), 'minmax' (per image) or a number > 0 "
    "(the value that becomes 1, e.g. 4095 for 12-bit imagery)",
    lambda v, s: v in ('auto', 'minmax') or (_is(v, (int, float)) and v > 0), 'number_or_word')
label_value = Rule("None, or a label value that is none of label_codes and of their kind "
                   "(a whole number, or an (r, g, b) colour of 0..255); 'auto': the "
                   "dataset's", _label_value, 'literal')
encoder_weights = Rule("'auto', 'imagenet', None (random initial weights) or the path of "
                       "an .h5 file", lambda v, s: v in (None, 'auto', 'imagenet') or
                       (isinstance(v, str) and v.endswith('.h5')), str)
weights_file = Rule("None, or the path of a .weights.h5 file (the best weights a training "
                    "wrote)", lambda v, s: v is None or (isinstance(v, str) and
                                                        v.endswith('.weights.h5')), str)
validation_metric = Rule(
    f"{_either(HEIGHT_METRICS)}, or with sem_flag = True {_either(SEGMENTATION_METRICS)}",
    lambda v, s: v in HEIGHT_METRICS or (s.sem_flag and v in SEGMENTATION_METRICS), str)
tf_config = Rule(
    'unset, or a JSON object like {"cluster": {"worker": ["hostA:12345", "hostB:12345"]}, '
    '"task": {"type": "worker", "index": 0}} (README, Several machines); '
    "distribution = 'multi_worker' needs it set", _tf_config, str)


def names(cfg):
    """Every user setting of the module, in the order it declares them."""
    return list(cfg.__annotations__)


def rule(cfg, name):
    """The rule the module declares for a setting (its annotation)."""
    found = cfg.__annotations__[name]
    if typing.get_origin(found) is typing.Literal:
        return one_of(*typing.get_args(found))
    return TYPES.get(found, found)


def check(cfg, settings=None):
    """Check every setting of the module `cfg`, and the environment variables
    it reads, against its rule; the first that breaks it raises a one-line
    SettingError naming it, its value and what is allowed. `settings`: the
    values to check, if not the module's own (a utils.settings.Settings)."""
    settings = cfg if settings is None else settings
    values = [(name, getattr(settings, name), rule(cfg, name)) for name in names(cfg)]
    values += [(var, os.environ.get(var), r) for var, r in cfg.ENVIRONMENT.items()]
    for name, value, r in values:
        try:
            ok = r.test(value, settings)
        except (TypeError, ValueError):   # compared with a setting of the wrong type
            ok = False
        if not ok:
            raise SettingError(f"{name} = {value!r}: use {r.allowed}")
