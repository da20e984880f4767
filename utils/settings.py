"""config.py's settings at run time: `--set NAME=VALUE`, the one check of
every setting against its rule, the frozen Settings a script hands down, and
how the user scripts read their command line and end.

A setting's rule is the annotation after its name in config.py. The check
runs once, right after --set is applied (parse_args); config.py runs it for
a script that star-imports it and parses no command line. Overrides
change config's attributes in memory (what a star import of config then
gives); config.py itself is never written. A script then takes one
Settings (current()) and hands it to every room below it, which read no
other settings.
"""
import argparse
import ast
import copy
import difflib
import sys
import warnings

import config
from utils import distribute, rules
from utils.errors import DeviceWarning, ImageryWarning, SettingError, UserError

_formatwarning = warnings.formatwarning


def _format_warning(message, category, *args, **kwargs):
    """Our warnings about the user's files and devices read as one line, like our errors."""
    if issubclass(category, (ImageryWarning, DeviceWarning)):
        return f"warning: {' '.join(str(message).splitlines())}\n"
    return _formatwarning(message, category, *args, **kwargs)


warnings.formatwarning = _format_warning

class Settings:
    """One run's settings, frozen: every setting of config.py as resolved
    (after --set), the dataset's facts (config.DATASET_FACTS), and the constants
    of config.py the rooms read. replace(**changes) gives other settings,
    resolved and checked again; nothing changes this one."""
    CONSTANTS = ('CROP_MULTIPLE', 'BEST_WEIGHTS', 'LAST_WEIGHTS')

    def __init__(self, values, declared):
        # values: every name resolved; declared: every setting as declared
        # (None / 'auto' where it asks the dataset or other settings).
        object.__setattr__(self, '_values', copy.deepcopy(values))
        object.__setattr__(self, '_declared', copy.deepcopy(declared))

    def __getattr__(self, name):
        try:
            return self.__dict__['_values'][name]
        except KeyError:
            raise AttributeError(f"no setting {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError(f"settings are frozen: use .replace({name}=...)")

    def __repr__(self):
        return f"Settings(dataset_name={self.dataset_name!r}, ...)"

    def replace(self, **changes):
        """These settings with `changes` ({setting: value as config.py would
        declare it}), resolved again (a new dataset_name brings its own
        defaults) and checked against the rules."""
        for name in changes:
            if name not in names():
                raise SettingError(f"unknown setting {name!r}")
        declared = {**self._declared, **changes}
        values = config.resolved(declared)
        values.update({k: getattr(config, k) for k in self.CONSTANTS})
        new = Settings(values, declared)
        rules.check(config, new)
        return new

    def as_dict(self):
        """{setting: value} of every setting config.py declares."""
        return {name: self._values[name] for name in names()}


def current():
    """The settings config holds now (config.py after --set), frozen."""
    values = {name: getattr(config, name)
              for name in (*names(), *config.DATASET_FACTS, *Settings.CONSTANTS)}
    declared = {name: config.declared[name] if name in config.FROM_DATASET or
                name in config.DERIVED else getattr(config, name) for name in names()}
    return Settings(values, declared)


def names():
    """Every user setting of config.py, in the order it declares them."""
    return rules.names(config)


def rule(name):
    """The rule config.py declares for a setting (its annotation)."""
    return rules.rule(config, name)


def check():
    """Check every setting against its rule (utils/rules.check): the first
    that breaks it raises a one-line SettingError."""
    rules.check(config)


def parse_value(name, text):
    """`text` read as the kind of value the setting's rule takes."""
    if text.strip().lower() == 'none':
        return None
    kind = rule(name).kind
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ('1', 'true', 'yes', 'on'):
            return True
        if lowered in ('0', 'false', 'no', 'off'):
            return False
        raise SettingError(f"--set {name}={text}: expected True or False")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise SettingError(f"--set {name}={text}: expected {rule(name).allowed}") from None
    if kind == 'number_or_word':
        for number in (int, float):
            try:
                return number(text)
            except ValueError:
                pass
        return text.strip()
    if kind == 'literal':
        if text.strip().isidentifier():     # a word ('auto'): text, for the rule to judge
            return text.strip()
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise SettingError(f"--set {name}={text}: expected a Python value "
                               f"({rule(name).allowed})") from None
    return text


def override(name, value):
    """Set one setting (already parsed) and re-derive what depends on it."""
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ''
        raise SettingError(f"unknown setting {name!r} in --set.{hint} "
                           f"The settings are the names in config.py.")
    if name in config.declared:
        config.declared[name] = value
    setattr(config, name, value)
    config.resolve()


def apply(pairs):
    """Apply a list of 'NAME=VALUE' strings, in order (checked later, by check())."""
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
    """Parse the command line, apply --set and check every setting. Ends the
    process with one `error: ...` line on stderr: exit code 2 for a malformed
    command line (argparse's own errors, a --set that is not NAME=VALUE,
    names no setting or is not of its type), 1 for a setting that breaks its
    rule (the same as when config.py itself holds the value)."""
    args = p.parse_args(argv)
    try:
        apply(args.set)
    except SettingError as err:
        p.exit(2, f"error: {err}\n")
    try:
        check()
    except SettingError as err:
        p.exit(1, f"error: {err}\n")
    return args


def run_main(main, *args, tensorflow=True):
    """Run a user script's main(*args) and return the script's exit code: 0;
    1 after one `error: <message>` line on stderr for the user's mistakes
    (utils.errors.UserError: a setting, a file, a checkpoint); 130 after
    Ctrl-C. Anything else is a bug and keeps its traceback. Every script
    ends with sys.exit(settings.run_main(...)), after parse_args; TensorFlow
    is started first (distribute.start_tensorflow) unless `tensorflow` is False."""
    try:
        if tensorflow:
            distribute.start_tensorflow()
        main(*args)
    except UserError as err:
        print('error: ' + ' '.join(str(err).splitlines()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0
