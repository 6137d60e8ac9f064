"""A job's user code, shipped with the job (Hadoop ships the job's jar).

`--module` / `--exec` name the user's modules: `.py` files, or dotted names
of modules or packages importable on the submitting host. At submit time
`bundle()` copies their sources into the job's directory, so every process
of the job, on every host, runs the code as it was when the job was
submitted, without it being installed there:

- the job master reads the bundle (`pack`) and hands it to each process on
  its stdin with the job;
- the process writes it into a private temporary directory (`unpack`),
  puts that first on `sys.path`, and imports the modules from there
  (`modules_to_load`).

A dotted name ships its top-level package (every `.py` file under it) or
its single module file. Modules that live in the Python installation
(site-packages, the standard library) are not shipped: they are there.
"""
from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import sysconfig
from pathlib import Path

from runtime.errors import UserError

MAX_BYTES = 20 * 1024 * 1024  # of sources; a bigger "module" is a mistake (a data dir?)


def _installed(path: Path) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(str(path).startswith(r + os.sep) for r in roots)


def bundle(modules: list[str] | tuple[str, ...], dest: Path) -> list[str]:
    """Copy the sources of `modules` into `dest`; returns how each is to be
    loaded from the bundle: `x.py` for a file, the dotted name otherwise."""
    out = []
    size = 0
    for name in modules:
        if name.endswith(".py"):
            src = Path(name).resolve()
            if not src.is_file():
                raise UserError(f"--module {name}: no such file")
            files = [(src, Path(src.name))]
            out.append(src.name)
        else:
            top = name.split(".")[0]
            try:
                spec = importlib.util.find_spec(top)
            except (ImportError, ValueError) as e:
                raise UserError(f"--module {name}: {e}") from None
            if spec is None or not spec.origin:
                raise UserError(f"--module {name}: No module named '{top}'")
            origin = Path(spec.origin)
            out.append(name)
            if _installed(origin):
                continue  # installed everywhere the job runs, like numpy
            if spec.submodule_search_locations:
                root = Path(list(spec.submodule_search_locations)[0])
                files = [(p, Path(top) / p.relative_to(root)) for p in sorted(root.rglob("*.py"))]
            else:
                files = [(origin, Path(origin.name))]
        for src, rel in files:
            size += src.stat().st_size
            if size > MAX_BYTES:
                raise UserError(f"--module {name}: more than {MAX_BYTES // 2**20} MB of Python "
                                "sources to ship with the job")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(src, target)
    return out


def pack(dest: Path) -> dict[str, str]:
    """The bundle as {relative path: base64 source}, for the handoff."""
    if not dest.is_dir():
        return {}
    return {str(p.relative_to(dest)): base64.b64encode(p.read_bytes()).decode()
            for p in sorted(dest.rglob("*.py"))}


def unpack(files: dict[str, str], where: Path) -> None:
    for rel, data in files.items():
        target = where / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"a shipped file outside the bundle: {rel}")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.write_bytes(base64.b64decode(data))


def modules_to_load(loads: list[str], where: Path) -> list[str]:
    """What `plugins.load` takes, with `where` (the unpacked bundle) first
    on sys.path: files by their path in the bundle, dotted names as they are."""
    return [str(where / m) if m.endswith(".py") else m for m in loads]
