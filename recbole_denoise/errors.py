"""Errors for mistakes in user input; the CLI prints their message (naming the key, file or line)."""


class UserInputError(ValueError):
    """Base of every error caused by a configuration or data mistake of the user."""


class ConfigError(UserInputError):
    """A configuration mistake (the message names the key)."""


class DatasetError(UserInputError):
    """A dataset that cannot be found or used (the message names the file or key)."""


class AtomicFileError(UserInputError):
    """A RecBole atomic file that cannot be used (the message names the file, line and field)."""
