"""Errors a user can act on. The CLI prints them on one line and exits with status 2."""


class EvomergeError(Exception):
    """Base class of user-facing errors."""


class ConfigError(EvomergeError):
    """The experiment file is invalid; the message names the field and what was expected."""


class SourceError(EvomergeError):
    """A source model cannot be loaded or does not match the base."""


class MergeError(EvomergeError):
    """A recipe could not be materialized (unknown operator, missing group, non-finite weights)."""


class RunError(EvomergeError):
    """A run cannot go on (for example, every candidate of a generation failed). The store stays intact."""
