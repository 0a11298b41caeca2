"""Command-line plumbing: settings read strictly, each mistake one line naming the setting.

Left alone, traitlets warns about a misspelt setting and goes on without it, logs a bad
value under a banner and exits 1, prints argparse's usage for a typo, and logs a config
file's traceback. The functions here, which the command's Application calls from its
`initialize`, `update_config` and loader hooks, turn each of those into a `ConfigError`
that names the setting, and `run_command` prints it as one line and exits 2, before
anything is started. The validators and the trait type the Application's traits use
live here too.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from traitlets import TraitError, Type
from traitlets.config import Application, Config, Configurable
from traitlets.config.loader import (
    ArgumentError,
    ConfigFileNotFound,
    JSONFileConfigLoader,
    KVArgParseConfigLoader,
    PyFileConfigLoader,
)

from .backends import BackendError
from .backends.kubernetes import KubernetesBackend
from .backends.local import LocalBackend
from .errors import ConfigError, first_line


def at_least(minimum: float) -> Callable:
    """A trait validator: the value must be >= minimum."""

    def check(self, proposal):
        if proposal.value < minimum:
            name = proposal.trait.name
            raise TraitError(f"{name} must be >= {minimum}, got {proposal.value}")
        return proposal.value

    return check


def url_problem(url: str) -> str:
    """Why `url` is not an http(s) URL with a host ("" if it is one)."""
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as e:
        return f"is not a URL ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http:// or https:// URL with a host"
    return ""


def check_url(*, empty_ok: bool = True) -> Callable:
    """A trait validator: the value is an http(s) URL (or, if `empty_ok`, "")."""

    def check(self, proposal):
        value = proposal.value
        if value or not empty_ok:
            problem = url_problem(value)
            if problem:
                raise TraitError(f"{proposal.trait.name}: {value!r} {problem}")
        return value

    return check


class BackendType(Type):
    """A Backend class, by short name ("local", "kubernetes") or import path."""

    short_names = {"local": LocalBackend, "kubernetes": KubernetesBackend}

    def _resolve_string(self, string):
        return self.short_names.get(string) or super()._resolve_string(string)

    def validate(self, obj, value):
        if isinstance(value, str) and value not in self.short_names:
            try:
                value = self._resolve_string(value)
            except Exception as e:  # traitlets' own message shows the object's repr
                raise TraitError(
                    f"{self.name}: {value!r} is not 'local', 'kubernetes' or the import path of a "
                    f"Backend subclass ({type(e).__name__}: {e})"
                ) from None
        return super().validate(obj, value)


# ---- reading the settings ---------------------------------------------------------------------
# Application.parse_command_line and load_config_file catch TraitError and ArgumentError,
# log them under a banner and exit 1. Every error they can meet is raised as a ConfigError
# instead (by the loaders below and `settings_errors`), which passes through them to
# run_command.


class _OneLineArgParser(KVArgParseConfigLoader.parser_class):
    """argparse prints its usage and exits on a mistake; run_command prints one line instead."""

    def error(self, message):
        raise ArgumentError(message)


class ArgLoader(KVArgParseConfigLoader):
    """The command-line loader: every mistake a ConfigError."""

    parser_class = _OneLineArgParser

    def load_config(self, *args, **kwargs) -> Config:
        try:
            return super().load_config(*args, **kwargs)
        except ArgumentError as e:
            raise ConfigError(str(e)) from None

    def _handle_unrecognized_alias(self, arg: str) -> None:
        # The hook traitlets' docstring offers for this (there is no public one): by
        # default an unknown --option is only warned about and has no effect.
        raise ArgumentError(f"unknown option --{arg} (see --help)")


def _file_errors(loader: PyFileConfigLoader | JSONFileConfigLoader, load: Callable[[], Config]) -> Config:
    """`load()`, with the file's own error (SyntaxError, ...) as one line naming the file."""
    try:
        return load()
    except (ConfigFileNotFound, ConfigError):
        raise
    except TraitError as e:
        raise ConfigError(str(e)) from None
    except Exception as e:
        message = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"config file {loader.filename}: {type(e).__name__}: {message}") from None


class PyFileLoader(PyFileConfigLoader):
    """The .py config file loader: the file's own error a ConfigError."""

    def load_config(self) -> Config:
        return _file_errors(self, super().load_config)


class JSONFileLoader(JSONFileConfigLoader):
    """The .json config file loader: a file that is not JSON a ConfigError."""

    def load_config(self) -> Config:
        return _file_errors(self, super().load_config)


def parse_command_line(app: Application, argv: list[str] | None) -> None:
    """`app.parse_command_line`, refusing arguments that are not settings."""
    app.parse_command_line(argv)
    if app.extra_args:
        raise ConfigError(f"unexpected argument {app.extra_args[0]!r}: settings are --name=value")


def load_config_file(app: Application, path: str) -> None:
    """`app.load_config_file(path)`; a file named on the command line must exist."""
    if "config_file" in app.config.get(type(app).__name__, {}):
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} not found (--config)")
        if not path.endswith((".py", ".json")):
            raise ConfigError(f"config file {path!r}: must be a .py or .json file (--config)")
    app.load_config_file(path)


@contextlib.contextmanager
def settings_errors() -> Iterator[None]:
    """A value a trait refuses, as a ConfigError (see the loaders above)."""
    try:
        yield
    except TraitError as e:
        raise ConfigError(str(e)) from None


@contextlib.contextmanager
def logging_config_errors() -> Iterator[None]:
    """A bad logging_config fails in logging.config.dictConfig, with a traceback: one line."""
    try:
        yield
    except (ValueError, TypeError, AttributeError, KeyError, ImportError) as e:
        raise ConfigError(f"logging_config: {first_line(e)}") from None


def command_classes(app: Application | type[Application]) -> list[type[Configurable]]:
    """The classes whose settings `app` (an Application or its class) takes: itself and its
    `classes`."""
    app_class = app if isinstance(app, type) else type(app)
    return list(dict.fromkeys([app_class, *app_class.classes]))


def configurable_classes(app: Application) -> Iterator[type[Configurable]]:
    """The classes whose settings `app` takes, with their configurable parents."""
    for cls in command_classes(app):
        yield from (parent for parent in cls.mro() if issubclass(parent, Configurable))


def check_setting_names(app: Application, config: Config) -> None:
    """Refuse a setting of a class `app` does not configure, or a misspelt one (which
    traitlets would only warn about and ignore). A `backend_class` set in `config` adds
    that class's settings."""
    classes = {cls.__name__: cls for cls in configurable_classes(app)}
    backend = config.get(type(app).__name__, {}).get("backend_class")
    if isinstance(backend, type) and issubclass(backend, Configurable):
        classes.update((cls.__name__, cls) for cls in backend.mro() if issubclass(cls, Configurable))
    # a Backend given by import path: its settings are checked when it is made
    custom = backend.rsplit(".", 1)[-1] if isinstance(backend, str) and "." in backend else None
    names = [cls.__name__ for cls in command_classes(app)]
    for section, values in config.items():
        if section == custom:
            continue
        cls = classes.get(section)
        if cls is None or not isinstance(values, dict):
            raise ConfigError(f"unknown setting {section!r}: settings are Class.name with Class "
                              f"{', '.join(names[:-1])} or {names[-1]}")
        traits = cls.class_traits(config=True)
        for name in values:
            if name not in traits:
                close = difflib.get_close_matches(name, traits, n=1)
                hint = f" (did you mean {section}.{close[0]}?)" if close else ""
                raise ConfigError(f"unknown setting {section}.{name}{hint}")


def check_log_format(app: Application, proposal) -> str:
    """A trait validator for `log_format` and `log_datefmt`: a format that cannot format a
    record would print a traceback for every log line."""
    name = proposal.trait.name
    fmt = proposal.value if name == "log_format" else app.log_format
    datefmt = proposal.value if name == "log_datefmt" else app.log_datefmt
    record = logging.LogRecord(app.name, logging.INFO, __file__, 1, "message", None, None)
    try:
        app._log_formatter_cls(fmt=fmt, datefmt=datefmt).format(record)
    except (ValueError, TypeError, KeyError) as e:
        raise TraitError(f"{name}: {proposal.value!r} cannot format a log line "
                         f"({type(e).__name__}: {e})") from None
    return proposal.value


def run_command(app: Application, argv: list[str] | None = None) -> None:
    """Initialize and start `app`; a settings error is one line on stderr and exit status 2."""
    try:
        app.initialize(argv)
        app.start()
    except (ConfigError, TraitError, ArgumentError, BackendError) as e:
        print(f"{app.name}: error: {first_line(e)}", file=sys.stderr)
        sys.exit(2)
