"""The project's error for a bad configuration or input.

`ConfigError` is raised before any compile for what the person running the
experiment can fix: an unknown or invalid config field, a missing or
malformed dataset folder, a checkpoint that does not fit. `main.py` prints
such errors as one line `error: <message>` and exits with status 2 (the
traceback only with `--verbosity=1`).
"""


class ConfigError(ValueError):
  """A configuration or input error (see the module docstring)."""


# Exit status of a configuration or input error (as for bad flags).
USAGE_EXIT_CODE = 2


def run_command(main_fn, argv) -> None:
  """`main_fn(argv)` for a command line: a `ConfigError` becomes one
  `error: <message>` line on stderr and exit status `USAGE_EXIT_CODE`."""
  import sys  # pylint: disable=g-import-not-at-top
  try:
    main_fn(argv)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)
