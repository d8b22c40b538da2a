"""User-facing errors. The CLI prints these as one message, without a traceback."""


class LifelongError(Exception):
    """Base class for errors caused by user input (config, data, files), not by a bug."""


class ConfigError(LifelongError):
    """A config key or value is wrong; the message names the key and the allowed values."""


class DatasetError(LifelongError):
    """A dataset is missing, corrupted or in the wrong format; the message says how to fix it."""


class DivergenceError(LifelongError):
    """Training produced non-finite values (NaN/inf); the message names the setting to lower."""
