"""config.py's settings at run time: `--set NAME=VALUE`, the one check of
every setting against its rule, and how the user scripts read their command
line and end.

A setting's rule is the annotation after its name in config.py. The check
runs once, right after --set is applied (parse_args) or, for a script that
does not parse a command line, before the strategy is built. Overrides
change config's attributes in memory; config.py itself is never written.
"""
import argparse
import ast
import contextlib
import difflib
import os
import re
import sys
import tempfile
import warnings

import config
from utils.errors import ImageryWarning, SettingError, UserError

# TensorFlow's C++ start-up chatter buries our output. Its log level applies
# only once absl logging is set up, after the lines of the import itself and
# of the device search: start_tensorflow() holds those to the level too, and
# hides 'failed call to cuInit' (every machine without a GPU says it) unless
# TF_CPP_MIN_LOG_LEVEL=0 asks for everything.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_ABSL_BANNER = 'WARNING: All log messages before absl::InitializeLog() is called'
_NO_GPU = re.compile(r'E\d{4} .*failed call to cuInit')
_formatwarning = warnings.formatwarning


def _format_warning(message, category, *args, **kwargs):
    """Our warnings about the user's files read as one line, like our errors."""
    if issubclass(category, ImageryWarning):
        return f"warning: {' '.join(str(message).splitlines())}\n"
    return _formatwarning(message, category, *args, **kwargs)


warnings.formatwarning = _format_warning

_checked = False    # every rule held at the last check, and nothing changed since


def names():
    """Every user setting of config.py, in the order it declares them."""
    return list(config.__annotations__)


def rule(name):
    """The rule config.py declares for a setting (its annotation)."""
    found = eval(config.__annotations__[name], vars(config))   # text of our own config.py
    return config.TYPES.get(found, found)


def check():
    """Check every setting, and the environment variables config.py reads,
    against its rule; the first that breaks it raises a one-line SettingError
    naming it, its value and what is allowed."""
    global _checked
    values = [(name, getattr(config, name), rule(name)) for name in names()]
    values += [(var, os.environ.get(var), r) for var, r in config.ENVIRONMENT.items()]
    for name, value, r in values:
        try:
            ok = r.test(value)
        except (TypeError, ValueError):   # compared with a setting of the wrong type
            ok = False
        if not ok:
            raise SettingError(f"{name} = {value!r}: use {r.allowed}")
    _checked = True


def check_once():
    """check(), unless nothing was overridden since the last one passed."""
    if not _checked:
        check()


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
    global _checked
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ''
        raise SettingError(f"unknown setting {name!r} in --set.{hint} "
                           f"The settings are the names in config.py.")
    if name in config.declared:
        config.declared[name] = value
    setattr(config, name, value)
    config.resolve()
    _checked = False


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


def _start_up_line(line):
    """Whether TensorFlow's log level hides this line of its C++ start-up."""
    try:
        level = int(os.environ.get('TF_CPP_MIN_LOG_LEVEL', 0))
    except ValueError:
        level = 0
    if line.startswith(_ABSL_BANNER) or _NO_GPU.match(line):
        return level >= 1
    severity = re.match(r'([IWEF])\d{4} ', line)
    return severity is not None and 'IWEF'.index(severity.group(1)) < level


@contextlib.contextmanager
def _start_up_lines_hidden():
    """Run the block with the process's stderr (fd 2) caught, then pass on
    every caught line TensorFlow's log level does not hide."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors='replace').splitlines(True):
                if not _start_up_line(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def start_tensorflow():
    """Import TensorFlow and let it find its devices, without the start-up
    lines its log level hides (see above); once per process."""
    if 'tensorflow' in sys.modules:
        return
    with _start_up_lines_hidden():
        import tensorflow as tf
        tf.config.list_physical_devices()


def run_main(main, *args, tensorflow=True):
    """Run a user script's main(*args) and return the script's exit code: 0;
    1 after one `error: <message>` line on stderr for the user's mistakes
    (utils.errors.UserError: a setting, a file, a checkpoint); 130 after
    Ctrl-C. Anything else is a bug and keeps its traceback. Every script
    ends with sys.exit(settings.run_main(...)), after parse_args; TensorFlow
    is started first (start_tensorflow) unless `tensorflow` is False."""
    try:
        if tensorflow:
            start_tensorflow()
        main(*args)
    except UserError as err:
        print('error: ' + ' '.join(str(err).splitlines()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0
