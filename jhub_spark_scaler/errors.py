"""Errors a user can cause and fix: each message is one line naming the setting."""


class ConfigError(Exception):
    """A setting is wrong; the message names it."""
