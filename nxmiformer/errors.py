"""Errors that reach the user."""


class NxmiError(ValueError):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
