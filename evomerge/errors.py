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


class Stopped(KeyboardInterrupt):
    """A stop asked by a signal (SIGTERM from a scheduler, SIGHUP from a closed terminal), handled like Ctrl-C: it
    is a KeyboardInterrupt, so that every cleanup written for Ctrl-C runs for it too."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 129 for SIGHUP
