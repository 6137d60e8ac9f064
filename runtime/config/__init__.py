"""Reading a job.conf: parse, resolve paths, validate.

    job = load_job("examples/mnist/job.conf")   # raises ConfigError with ALL problems
    job.proto          # the JobProto, relative paths made absolute
    job.warnings       # problems that do not stop the job

`load_job` is what `singa validate`, `singa submit` and the runtime call;
`parse_text` only parses (syntax errors as `PATH:LINE:COL: message`).
Modules: `parse` (text -> JobProto), `locate` (field path -> LINE:COL),
`paths` (relative path resolution), `validate` (the rules), `describe` (the
summary `singa validate` prints), `override` (field-path overrides, `--set`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conf import job_pb2
from runtime.config.locate import Locator
from runtime.config.override import apply_all, note_overrides
from runtime.config.parse import parse_text, unknown_extensions
from runtime.config.paths import PathReport, resolve_paths
from runtime.config.validate import Validation, check
from runtime.errors import ConfigError, Problem, UserError

__all__ = ["JobConf", "load_job", "load_text", "parse_text", "read_text", "Locator"]


@dataclass
class JobConf:
    """A parsed and validated job.conf."""

    proto: job_pb2.JobProto          # relative paths already resolved to absolute ones
    path: str                        # the job.conf's path
    warnings: list[Problem]
    # what `singa validate` prints besides the proto (see describe.py)
    validation: Validation | None = field(default=None, repr=False)
    paths: PathReport | None = field(default=None, repr=False)
    locator: Locator | None = field(default=None, repr=False)

    @property
    def nets(self) -> dict[int, Any]:
        """phase -> NeuralNet (one partition, params not allocated) built while validating."""
        return self.validation.nets if self.validation else {}


def read_text(path: str) -> str:
    """The job.conf's text; a missing or unreadable file is a UserError naming the path."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such job.conf (looked in {os.path.abspath(path)})")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a job.conf file")
    try:
        with open(path, encoding="utf-8-sig") as f:  # a BOM is not text
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text job.conf (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the job.conf ({e.strerror or e})") from None


def load_job(path: str, *, strict: bool = False, submit: bool = False,
             overrides: Sequence[tuple[str, str]] = (), later_checkpoints: bool = False) -> JobConf:
    """Parse and validate the job.conf at `path`.

    Raises `ConfigError` listing every error (syntax errors stop at the
    first, since the text cannot be read further); its `warnings` attribute
    holds the warnings found on the way. Missing data files are
    warnings unless `strict` or `submit`; layer types, algorithms and
    updaters that are not implemented yet are warnings unless `submit`.
    An `[ext] { }` block that no loaded `.proto` defines is an error.

    `overrides` are (field path, value) pairs set in the parsed job before
    anything else sees it (see runtime.config.override); a bad one is a
    UserError (not a ConfigError) listing every bad one. A problem that
    validation then finds at a field an override set says so. With
    `later_checkpoints` (a job submitted `--after` another) a missing
    checkpoint file is a warning: the job before it is to write it.
    """
    return load_text(read_text(path), path, strict=strict, submit=submit, overrides=overrides,
                     later_checkpoints=later_checkpoints)


def load_text(text: str, path: str, *, strict: bool = False, submit: bool = False,
              base: str | None = None, overrides: Sequence[tuple[str, str]] = (),
              later_checkpoints: bool = False) -> JobConf:
    """`load_job` for job.conf text that is not (or not yet) in a file:
    problems are located as `path:LINE:COL`; relative paths in the job are
    resolved against the directory of `base` (default: `path`); `overrides`
    as in `load_job`."""
    proto, locator = parse_text(text, path)
    notes: dict[str, str] = {}
    if overrides:
        # before paths and rules, so that both see the job that will run
        try:
            notes = apply_all(proto, overrides, locator)
        except UserError as e:
            raise UserError(f"{path}: bad override(s):\n{e}") from None
    report = resolve_paths(proto, base or path)
    result = check(proto, locator, path, strict=strict, submit=submit, paths=report,
                   later_checkpoints=later_checkpoints)
    if notes:
        # the text at those places holds the value the override replaced
        result.problems = note_overrides(result.problems, notes)
    # after the rules: a user's block the parser skipped must not hide the rest
    result.problems.extend(unknown_extensions(locator, severity="error"))
    if result.errors:
        err = ConfigError(result.errors)
        err.warnings = result.warnings  # type: ignore[attr-defined]
        raise err
    return JobConf(proto, path, result.warnings, result, report, locator)
