"""The user's mistakes, by kind: one home, importing nothing of ours.

Every script ends a run that raises one of these with `error: <message>` and
exit code 1 (see utils/settings.run_main); the message names the setting or
file and the fix. Anything else is a bug and keeps its traceback. The
warnings below are printed as one line `warning: ...` (utils/settings.py).
"""
import warnings


class UserError(Exception):
    """A problem the user can fix; the message says how."""


class SettingError(UserError, ValueError):
    """A setting with a value that cannot work; the message names it."""


class DeviceConfigError(SettingError):
    """A device setting that cannot be satisfied; the message names it."""


class DatasetError(UserError, ValueError):
    """A dataset file or folder that is missing, unreadable or inconsistent."""


class CheckpointError(UserError, RuntimeError):
    """A weights file or training state that is missing, damaged or does not fit."""


class BackboneWeightsError(UserError, RuntimeError):
    """The encoder's pretrained weights could not be loaded."""


class TrainingDiverged(UserError, RuntimeError):
    """A loss became NaN or Inf; the message names the term and the step."""


class WorkerLost(UserError, RuntimeError):
    """A worker of a multi-worker run stopped; the message says where to resume."""


class ImageryWarning(UserWarning):
    """An input read one way where another was possible (an undeclared bit
    depth, an impossible nodata value, statistics unlike the training
    images'): the message names the file and the setting that decides it."""


class DeviceWarning(UserWarning):
    """A device setting this machine cannot give as asked (two replicas
    where one device is visible): the message names the setting."""


def imagery_warning(message):
    """Warn of an input read one way where another was possible (ImageryWarning)."""
    warnings.warn(message, ImageryWarning, stacklevel=3)


def first_line(err):
    """The first line of an exception's message (its type's name without one)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
