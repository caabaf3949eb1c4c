"""Errors that reach the user."""


class NxmiError(ValueError):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""
