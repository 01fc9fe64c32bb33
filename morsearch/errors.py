"""User-facing errors. The CLI formats a ``MorsearchError`` once, without a traceback.

Imports nothing from morsearch or third parties, so every layer may raise these.
"""

from __future__ import annotations


class MorsearchError(Exception):
    """Base class of every error caused by the user's input or environment."""


class ConfigError(MorsearchError, ValueError):
    """A configuration (model, budget, target, search space) is invalid.

    The message names the field, the bad value, what is allowed and the fix.
    """


class DataError(MorsearchError, ValueError):
    """Training data is missing, unreadable or unsuitable."""


class StorageError(MorsearchError):
    """The study store cannot be opened, read or written."""


class TrainingError(MorsearchError):
    """A training run failed (non-finite loss, out of memory, ...)."""
