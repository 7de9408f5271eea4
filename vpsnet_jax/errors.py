"""The project's error for a bad configuration or input.

`ConfigError` is raised before any compile for what the person running the
experiment can fix: an unknown or invalid config field, a missing or
malformed dataset folder, a checkpoint that does not fit. `main.py` prints
such errors as one line `error: <message>` and exits with status 2 (the
traceback only with `--verbosity=1`).
"""


class ConfigError(ValueError):
  """A configuration or input error (see the module docstring)."""
