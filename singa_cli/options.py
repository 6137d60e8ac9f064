"""Click options that several `singa` verbs share, defined once.

`--module` and `--proto` mean the same in submit/test, validate, export and
draw (the user's classes and config messages, loaded before the conf is
read); each verb words its help for what it does with them, so the help text
is an argument and the name, destination, repetition and metavar are not.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

Decorator = Callable[[Any], Any]


def module_option(help: str) -> Decorator:
    """`--module MODULE`, repeatable, into the parameter `modules` (a tuple)."""
    return click.option("--module", "modules", multiple=True, metavar="MODULE", help=help)


def proto_option(help: str) -> Decorator:
    """`--proto FILE.proto`, repeatable, into the parameter `protos` (a tuple)."""
    return click.option("--proto", "protos", multiple=True, metavar="FILE.proto", help=help)
