"""Errors for mistakes in user input; the CLI prints their message (naming the key, file or line).

The rule, one class per kind of mistake:

- a configuration key or value that is wrong on its own, whatever the data (an unknown key or class name, a
  value of the wrong type or range, a choice that does not exist, keys that contradict each other) ->
  :class:`ConfigError`, whose message names the key;
- a mistake that shows only against the data (a dataset or file that is missing, empty or malformed, too
  little data for the protocol, a key this dataset cannot take, such as noise on benchmark windows) ->
  :class:`DatasetError`, or :class:`AtomicFileError` for the contents of a RecBole atomic file; the message
  names the file or dataset (and the line and field where there is one).

Both derive from :class:`UserInputError`, which the CLI prints as one line (exit code 2). A key that the
resolved config lacks although a property file declares it is no user mistake but a packaging or
programming one (``denoisers/settings.py`` raises :class:`LookupError` for it).
"""


class UserInputError(ValueError):
    """Base of every error caused by a configuration or data mistake of the user."""


class ConfigError(UserInputError):
    """A configuration mistake (the message names the key)."""


class DatasetError(UserInputError):
    """A dataset that cannot be found or used (the message names the file, or the dataset and its folder)."""


class AtomicFileError(UserInputError):
    """A RecBole atomic file that cannot be used (the message names the file, line and field)."""
