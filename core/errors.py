"""Error types that mean one thing each, and the rule that tells a passing failure from a lasting one.

The command line maps them to exit codes: a UsageError (bad configuration, inputs or
arguments) is exit 2; anything else that stops a run is exit 3.
"""
from __future__ import annotations


class UsageError(ValueError):
    """The user asked for something that cannot be done as asked; the message says what to change."""


class ConfigError(UsageError):
    """The configuration is not valid; the message names the dotted key, the value and what is allowed."""


class InputError(UsageError):
    """The input specification itself is unusable (nothing matched, a bad manifest, clashing ids)."""


class OutputLockedError(RuntimeError):
    """Another run holds the output folder's lock."""


# Exception types that can pass on their own: out of memory, a disk or network error, a timeout,
# a worker lost. Matched by class hierarchy (OSError covers IOError, ConnectionError and its
# subclasses, Beam's BeamIOError and disk-full ENOSPC); TensorFlow's out-of-memory error by name,
# so this module does not import TensorFlow.
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (OSError, MemoryError, TimeoutError)
TRANSIENT_TYPE_NAMES = frozenset({"ResourceExhaustedError", "UnavailableError", "DeadlineExceededError"})


def is_transient_type(kind: type) -> bool:
    """True for an exception type that may not happen again on a retry (see TRANSIENT_TYPES)."""
    return issubclass(kind, TRANSIENT_TYPES) or kind.__name__ in TRANSIENT_TYPE_NAMES


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` may not happen again on a retry (see TRANSIENT_TYPES)."""
    return is_transient_type(type(exc))
