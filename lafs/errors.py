"""User-facing error types.

Entry points catch `LafsError`, print ``error: <message>`` and exit with status 2, so every message is one line
saying what went wrong and where (a config key, a file path, a registry name).
"""

from __future__ import annotations


class LafsError(Exception):
    """Base for errors caused by user input rather than by a bug."""


class ConfigError(LafsError):
    """A config file, override or registry name that cannot be used."""


class DataError(LafsError):
    """A data file or folder that cannot be read as what it claims to be (path and reason in the message)."""
