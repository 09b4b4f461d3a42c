"""The one base class of every error about an input that no stage may use.

Each subclass's message names the file, the row, the id or the key, with what was expected and what was found, and,
where a stage output is broken, what to run. The stage entry points turn these into a one-line exit, never a traceback.
"""


class InputError(ValueError):
    """An input (params, metadata, audio, split file, model, Fisher, checkpoint) that cannot be used as it is."""


REBUILD = "run `dvc repro` to rebuild it (DVC sees the changed output and re-runs the stage that writes it)"
