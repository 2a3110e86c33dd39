"""The poller's exceptions: one root, a few kinds a caller can act on."""


class PollerError(Exception):
    """Root of every error the poller raises on purpose; str() is a line for a person."""


class ConfigError(PollerError):
    """A setting or argument is invalid (for example a malformed database URL)."""


class DatabaseUnavailable(PollerError):
    """The database cannot be reached or refused the connection."""


class SchemaNotReady(PollerError):
    """The database lacks what the poller calls (migrations not applied yet, or the wrong
    role): exit 1, not 2, so that systemd keeps trying until `db push` has run."""


class BootstrapError(PollerError):
    """Making the database ready failed part-way (the failing step is rolled back)."""


class TaskDied(PollerError):
    """A part of the daemon that runs until the stop ended before it; the daemon stops and exits
    non-zero so that its supervisor (systemd) restarts it."""
