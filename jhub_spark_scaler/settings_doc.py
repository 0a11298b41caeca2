"""The settings reference, docs/settings.md, generated from the traits:

    python -m jhub_spark_scaler.settings_doc > docs/settings.md

Every configurable trait of the command's classes with its command-line option, type,
default and help. The traits are the one place a default is stated; a test fails while
the committed file differs from what this prints.
"""

from __future__ import annotations

import inspect
import os
import textwrap
from collections.abc import Iterator
from typing import Any

from traitlets import Enum, TraitType
from traitlets.config import Application, Configurable
from traitlets.traitlets import DefaultHandler

from .app import SparkScalerApp
from .cli import command_classes

WIDTH = 100

HEADER = """\
# Settings

Generated from the code by `python -m jhub_spark_scaler.settings_doc > docs/settings.md`;
edit the traits' help, not this file. A setting is `c.<Class>.<name> = value` in the config
file (`--generate-config` writes one with every setting) and `--<Class>.<name>=value` on the
command line; the common ones also have the short option shown. `jhub_spark_scaler.hub.configure`
passes its extra keywords on as these settings (`idle_workers=2`, `LocalBackend__worker_cores=4`).
"""


def settings_reference(app_class: type[Application] = SparkScalerApp) -> str:
    """The reference for `app_class` and the classes it configures, as Markdown."""
    classes = command_classes(app_class)
    options = _short_options(app_class, classes)
    computed = app_defaults(app_class)
    lines = [HEADER]
    for cls in classes:
        lines += [f"## {cls.__name__}", ""]
        for name, trait in sorted(cls.class_traits(config=True).items()):
            if not any(handler.trait_name == name for handler in _default_handlers(cls)):
                default = f"`{trait.default_value_repr()}`"
            elif cls is app_class:
                default = f"`{computed[name]!r}`"
            else:
                default = "computed when the backend starts (see the text)"
            lines += _entry(cls, name, trait, default=default, option=options.get((cls, name)))
    return "\n".join(lines)


def app_defaults(app_class: type[Application] = SparkScalerApp) -> dict[str, Any]:
    """The default of each setting of `app_class`, outside a hub: its computed defaults
    read $JUPYTERHUB_* variables only (the backends' read the machine: not shown)."""
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("JUPYTERHUB_")}
    try:
        app = app_class()
        return {name: getattr(app, name) for name in app_class.class_traits(config=True)}
    finally:
        os.environ.update(saved)


def _short_options(app_class: type[Application], classes: list[type]) -> dict[tuple[type, str], str]:
    """(class, trait name) -> the command's alias or flag that sets it."""
    targets = {alias: target for alias, target in app_class.aliases.items()}
    for flag, (config, _help) in app_class.flags.items():
        targets.update((flag, f"{section}.{name}") for section, values in config.items() for name in values)
    options = {}
    for option, target in targets.items():
        section, _, name = target.rpartition(".")
        for cls in classes:
            if section in {c.__name__ for c in cls.mro()} and name in cls.class_traits(config=True):
                options[(cls, name)] = f"--{option}"
    return options


def _entry(cls: type, name: str, trait: TraitType, *, default: str, option: str | None) -> list[str]:
    facts = [type(trait).__name__, f"default: {default}"]
    if option:
        facts.append(f"`{option}`")
    lines = [f"### `{cls.__name__}.{name}`", "", "; ".join(facts), ""]
    if isinstance(trait, Enum):
        lines += [f"One of {', '.join(f'`{value!r}`' for value in trait.values)}.", ""]
    text = inspect.cleandoc(trait.help or "")
    if "\n" in text:  # several paragraphs, lists or code (traitlets' own): kept as written
        lines += ["```text", text, "```", ""]
    elif text:
        lines += [*textwrap.wrap(text, WIDTH, break_on_hyphens=False), ""]
    return lines


def _default_handlers(cls: type) -> Iterator[DefaultHandler]:
    """The `@default(...)` methods of `cls` and its parents: defaults computed at start."""
    for parent in cls.mro():
        if isinstance(parent, type) and issubclass(parent, Configurable):
            yield from (value for value in vars(parent).values() if isinstance(value, DefaultHandler))


if __name__ == "__main__":
    print(settings_reference(), end="")
