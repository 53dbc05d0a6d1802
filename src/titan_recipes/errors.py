"""The errors titan-recipes raises on bad input, in one leaf module every other module may import.

Each message names the setting or file at fault and the fix (``../STYLE.md`` section 5). ``python -m
titan_recipes.train`` prints a :class:`ConfigError` without a traceback and exits with status 2.
"""


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key and how to fix it."""


class DataError(RuntimeError):
    """Input data is missing, corrupt or inconsistent with the configuration."""


class FingerprintMismatchError(DataError):
    """A checkpoint was written for other data (or another data order) than the configured one."""
