"""Errors a user can cause and fix: each message is one line naming the setting."""


class ConfigError(Exception):
    """A setting is wrong; the message names it."""


def first_line(error: BaseException) -> str:
    """An exception's message as one line (its type's name when it has none)."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__
