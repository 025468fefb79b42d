"""kdumpd: keeps a crash kernel loaded, saves the dump after a panic, speaks D-Bus."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem to tell the user in one line, never as a traceback."""
