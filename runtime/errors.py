"""Errors a user can cause, and how they are reported.

A `UserError` ends a CLI command with its message and exit code 2, never with
a traceback. `ConfigError` carries every `Problem` found in a job.conf so they
are all reported at once, each with its location.
"""
from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """Bad input from the user: the message says what, where and what was expected."""


@dataclass(frozen=True)
class Problem:
    """One problem in a job.conf.

    `where` is `PATH:LINE:COL` when the text position is known, else a name
    such as `layer 'ip1'` or `param 'w1'`. `severity` is "error" or "warning".
    """

    where: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        tag = "warning: " if self.severity == "warning" else ""
        return f"{self.where}: {tag}{self.message}"


class ConfigError(UserError):
    """A job.conf that cannot run; `problems` lists every error found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LayerError(UserError):
    """A layer whose configuration or input shapes are wrong.

    Raised by `Layer.setup`; the net builder adds the layer's name and location.
    """


class Diverged(Exception):
    """Training produced a number that is not finite (a loss, a metric, an
    update): the job fails rather than report a result it did not reach.
    The message is the reason as the user reads it ("diverged: loss is nan
    at step 100 (layer 'loss'); lower the learning rate or clip gradients")."""


def reason_line(e: BaseException) -> str:
    """The one line that says why `e` ended a process, for the job's reason.

    A UserError or Diverged is its own message (the user's words, no class
    name); anything else is the last line of its traceback
    ("zipfile.BadZipFile: File is not a zip file"). Lines of a multi-line
    message are joined with "; "."""
    import traceback

    if isinstance(e, (UserError, Diverged)):
        text = str(e)
    else:
        text = "".join(traceback.format_exception_only(type(e), e))
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__
