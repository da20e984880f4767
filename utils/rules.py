"""config.py's rules, applied to a settings module.

A setting's rule is the annotation after its name in config.py, evaluated
in that module's namespace. Everything here takes the module as an
argument: config.py calls check() on itself before it builds the strategy
for a script that star-imports it, and utils/settings.py calls it after
--set, so neither needs the other.
"""
import os

from utils.errors import SettingError


def names(cfg):
    """Every user setting of the module, in the order it declares them."""
    return list(cfg.__annotations__)


def rule(cfg, name):
    """The rule the module declares for a setting (its annotation)."""
    found = eval(cfg.__annotations__[name], vars(cfg))   # text of our own config.py
    return cfg.TYPES.get(found, found)


def check(cfg):
    """Check every setting, and the environment variables the module reads,
    against its rule; the first that breaks it raises a one-line SettingError
    naming it, its value and what is allowed."""
    values = [(name, getattr(cfg, name), rule(cfg, name)) for name in names(cfg)]
    values += [(var, os.environ.get(var), r) for var, r in cfg.ENVIRONMENT.items()]
    for name, value, r in values:
        try:
            ok = r.test(value)
        except (TypeError, ValueError):   # compared with a setting of the wrong type
            ok = False
        if not ok:
            raise SettingError(f"{name} = {value!r}: use {r.allowed}")
