"""The project's error types: bad input whose message is the whole story.

Every error that `ctr` or `experiments` raises on purpose for something the
user got wrong (a config key, a file name, a metric, a seed list) derives from
CTRError, so the command line can print its message on one line and let any
other exception (a bug) keep its traceback.

    try:
        create_model("nope", schema, config)
    except CTRError as exc:
        print(exc)  # expected a model name in ['attention_deepfm', ...], got 'nope'

CTRError is a ValueError, so code that caught ValueError before still does.
Subclasses that were another built-in error (FileNotFoundError, RuntimeError)
list that built-in as a second base and stay one.
"""

from __future__ import annotations


class CTRError(ValueError):
    """Bad input: the message says what was got and, where known, the fix.

    Raised directly where no narrower type fits (an unknown model name, a
    device that is not available, a malformed data file).
    """


class MissingFileError(CTRError, FileNotFoundError):
    """A file or directory the user named (a checkpoint, a results JSON, a README)
    does not exist."""


class TrainingDivergedError(CTRError, FloatingPointError):
    """The training loss stopped being finite; the message names the settings to
    change (learning rate, gradient clipping)."""


__all__ = ["CTRError", "MissingFileError", "TrainingDivergedError"]
