"""The poller's exceptions: one root, a few kinds a caller can act on."""


class PollerError(Exception):
    """Root of every error the poller raises on purpose; str() is a line for a person."""


class ConfigError(PollerError):
    """A setting or argument is invalid (for example a malformed database URL)."""


class DatabaseUnavailable(PollerError):
    """The database cannot be reached or refused the connection."""


class BootstrapError(PollerError):
    """Making the database ready failed part-way (the failing step is rolled back)."""


class TaskDied(PollerError):
    """A part of the daemon that runs until the stop ended before it; the daemon stops and exits
    non-zero so that its supervisor (systemd) restarts it."""
