"""A user's own config messages: `.proto` files that extend the job schema,
as SINGA's users did (`extend singa.LayerProto { ... }`).

    // rnnlm.proto
    syntax = "proto2";
    package rnnlm;
    import "job.proto";
    message DataProto { required string path = 1; optional int32 window = 2 [default = 10]; }
    extend singa.LayerProto { optional DataProto data_conf = 1001; }

makes `[rnnlm.data_conf] { path: "train.txt" }` parse in a layer of
job.conf. The numbers users may take are those job.proto reserves for them:
1001-1100 in LayerProto, 101-200 in JobProto, AlgProto, UpdaterProto,
ParamProto, LRGenProto and ParamGenProto (protoc refuses others).

`load_proto("rnnlm.proto")` compiles the file with protoc (grpcio-tools'
`python -m grpc_tools.protoc`), imports the generated `rnnlm_pb2` module
under that name (so the user's layer code can `import rnnlm_pb2` and read
`proto.Extensions[rnnlm_pb2.data_conf]`) and returns it. The platform's own
protos are importable as `job.proto`, `common.proto`, `singa.proto` (and
protobuf's `google/protobuf/*.proto`); another user proto beside the file
may be imported too, and must be loaded first.

A job's processes do not compile anything: the generated `rnnlm_pb2.py`
ships with the job like any other user module (`compile_proto` gives its
path) and is imported there with `load_generated`, which needs only the
protobuf runtime. So protoc is needed on the submitting host only.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pool

from runtime.errors import UserError

#: The platform's protos, as a user's `.proto` imports them, and their modules.
PLATFORM = {"job.proto": "job_pb2", "common.proto": "common_pb2", "singa.proto": "singa_pb2"}

_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.M)
_out_dir: Path | None = None
_compiled: dict[tuple[Path, float, int], Path] = {}


def _output_dir() -> Path:
    """A private directory for this process's generated modules, removed at exit."""
    global _out_dir
    if _out_dir is None:
        _out_dir = Path(tempfile.mkdtemp(prefix="singa-proto-"))
        atexit.register(shutil.rmtree, _out_dir, True)
    return _out_dir


def _protoc_includes() -> list[str]:
    """protobuf's own .proto files (google/protobuf/*.proto), as grpcio-tools ships them."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.origin:
        return []
    inc = Path(spec.origin).parent / "_proto"
    return [f"-I{inc}"] if inc.is_dir() else []


def compile_proto(path: str | os.PathLike) -> Path:
    """Compile the user's `.proto` at `path`; returns the generated `<stem>_pb2.py`.

    The generated module imports the platform's modules from `conf`, so it
    works wherever singa is installed. A syntax error, an unknown type or a
    field number outside the extension range is a UserError with protoc's
    `FILE:LINE:COL: message` lines; no protoc (grpcio-tools) is one too.
    """
    src = Path(path)
    if src.suffix != ".proto":
        raise UserError(f"--proto {path}: expected a .proto file")
    if not src.is_file():
        raise UserError(f"--proto {path}: no such file (looked in {src.resolve()})")
    src = src.resolve()
    if src.name in PLATFORM and src.parent != _CONF_DIR:
        raise UserError(f"--proto {path}: a user .proto cannot be named {src.name}, the name "
                        "of one of the platform's protos; rename it")
    st = src.stat()
    key = (src, st.st_mtime, st.st_size)
    if key in _compiled and _compiled[key].is_file():
        return _compiled[key]
    if importlib.util.find_spec("grpc_tools") is None:
        raise UserError(
            f"--proto {path}: compiling a .proto needs protoc from grpcio-tools "
            "(pip install grpcio-tools); or compile it yourself (protoc -I<singa>/conf "
            f"--python_out=. {src.name}) and give the generated {src.stem}_pb2.py with --module")
    out = Path(tempfile.mkdtemp(dir=_output_dir()))  # one per file: <stem>_pb2.py may repeat
    # the platform's protos first: `import "job.proto"` is singa's own, even
    # beside a copy of SINGA's job.proto in the user's directory
    argv = [sys.executable, "-m", "grpc_tools.protoc", f"-I{_CONF_DIR}", f"-I{src.parent}",
            *_protoc_includes(), f"--python_out={out}", str(src)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError(_protoc_errors(r.stderr or r.stdout, src, str(path)))
    generated = out / f"{src.stem}_pb2.py"
    if not generated.is_file():  # protoc names it after the file; a surprise means a bug
        raise UserError(f"--proto {path}: protoc did not write {generated.name}")
    text = generated.read_text()
    # `import job_pb2` would load a second copy of the platform's module under
    # another name; the one in `conf` is the one every part of singa uses
    text = _IMPORT.sub(lambda m: (f"from conf import {m.group(1)} as {m.group(2)}"
                                  if m.group(1) in PLATFORM.values() else m.group(0)), text)
    generated.write_text(text)
    _compiled[key] = generated
    return generated


def _protoc_errors(stderr: str, src: Path, given: str) -> str:
    """protoc's messages with the file named as the user gave it."""
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    out = []
    for line in lines:
        for name in (str(src), src.name):
            if line.startswith(name + ":"):
                line = given + line[len(name):]
                break
        out.append(line)
    if any("as an extension number" in l for l in out):
        out.append("(job.proto leaves 1001-1100 of singa.LayerProto and 101-200 of singa.JobProto, "
                   "AlgProto, UpdaterProto, ParamProto, LRGenProto and ParamGenProto to users)")
    head = f"--proto {given}: protoc could not compile it"
    return head + (":\n" + "\n".join(out) if out else "")


def load_generated(path: str | os.PathLike, shown: str | None = None) -> ModuleType:
    """Import a generated `<stem>_pb2.py` under its own name `<stem>_pb2`.

    Importing the same file again returns the module already loaded. Its
    `import job_pb2` (a module generated by a plain protoc run) finds the
    platform's `conf.job_pb2`. A different file whose proto has the same
    name as one already loaded is a UserError (protobuf keeps one per name);
    `shown` is how the error names the file (default: the module's path).
    """
    path = Path(path).resolve()
    name = path.stem
    from conf import common_pb2, job_pb2, singa_pb2  # noqa: F401 - the aliases below

    for mod in PLATFORM.values():
        sys.modules.setdefault(mod, sys.modules[f"conf.{mod}"])
    old = sys.modules.get(name)
    old_file = getattr(old, "__file__", None) if old is not None else None
    if old is not None and old_file:
        if Path(old_file).resolve() == path:
            return old
    spec = importlib.util.spec_from_file_location(name, path)
    # callers pass a `*_pb2.py` file: a .py suffix always gets a spec with the source loader
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except TypeError as e:  # the pool refuses a second, different file of that name
        sys.modules.pop(name, None)
        if old is not None:
            sys.modules[name] = old
        raise UserError(f"{shown or path}: cannot load it: {e} (a .proto loaded already has "
                        "the same file name, the same message names or the same extension "
                        "numbers)") from None
    except Exception as e:  # noqa: BLE001 - a user's generated module may raise anything
        sys.modules.pop(name, None)
        if old is not None:
            sys.modules[name] = old
        raise UserError(f"{shown or path}: importing the generated module raised "
                        f"{type(e).__name__}: {e}") from None
    return module


def load_proto(path: str | os.PathLike) -> ModuleType:
    """Compile the `.proto` at `path` and import its module (see the module doc)."""
    return load_generated(compile_proto(path), shown=f"--proto {path}")


def is_proto_module(name: str) -> bool:
    """Whether a `--module` entry is a user proto: a `.proto` or a generated `_pb2.py`."""
    return name.endswith(".proto") or name.endswith("_pb2.py")


def extensions_of(message) -> list:
    """The extension fields loaded for a message class or descriptor, by full name."""
    desc = getattr(message, "DESCRIPTOR", message)
    found = descriptor_pool.Default().FindAllExtensions(desc)
    return sorted(found, key=lambda f: f.full_name)
