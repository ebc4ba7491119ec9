"""The library's one error type for user mistakes; the CLIs print its message on one line and exit 2."""


class UsageError(ValueError):
    """A user mistake (a bad flag, file, field or value): the message is one line naming it."""
