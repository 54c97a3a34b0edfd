"""The error hierarchy: the run loop chooses between "leave pending" and "dead-letter" by class."""

from __future__ import annotations


class StreamprocError(Exception):
    """Base of every error streamproc raises on purpose; its message is shown to users as is."""


class ConfigError(StreamprocError):
    """A setting or command-line value is unusable."""


class ServerError(StreamprocError):
    """The Redis server is unreachable, or lost data it should have."""


class InputFileError(StreamprocError):
    """The input file as a whole is unusable (missing, empty, no header, not UTF-8)."""


class StageError(StreamprocError):
    """Raised while handling a message in a stage."""


class RetryableError(StageError):
    """Transient: leave the message pending so it is delivered again after a back-off."""


class PermanentError(StageError):
    """The message can never succeed (undecodable payload, invalid order): dead-letter it now."""
