"""Checkpoints: SINGA's `BlobProtos` files, plus what an exact resume needs.

`<workspace>/checkpoint/step<N>-worker<W>` is a binary `BlobProtos` (common.proto)
holding the params owned by worker W's layers: `name`, `version` and a
`BlobProto{shape, data}` each, readable by SINGA v0.3. Beside it,
`step<N>-worker<W>.resume` (an `.npz` file, read without pickle) keeps the
rest of the worker's state: updater history, random generator state and the
input layers' positions, so that N steps + resume + N steps gives the same
params as 2N steps. SINGA has no such file; a SINGA checkpoint without it
resumes as SINGA does (params and versions only).

Large params are written by encoding the packed float field directly
(tag, length, raw little-endian float32 bytes): the protobuf runtime's
`extend` of 12M floats takes seconds, this takes milliseconds, and the bytes
are the same wire format.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from conf import common_pb2
from runtime.errors import UserError
from runtime.trigger import Trigger

CKPT_RE = re.compile(r"^step(\d+)-worker(\d+)$")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _blob_bytes(arr: np.ndarray) -> bytes:
    head = common_pb2.BlobProto(shape=list(arr.shape)).SerializeToString()
    raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    # field 2 (data), wire type 2 (length-delimited, packed floats)
    return head + b"\x12" + _varint(len(raw)) + raw


def encode(params: list[tuple[str, int, np.ndarray]]) -> bytes:
    """BlobProtos bytes for (name, version, values) triples."""
    meta = common_pb2.BlobProtos()
    parts = []
    for name, version, arr in params:
        meta.name.append(name)
        meta.version.append(int(version))
        blob = _blob_bytes(arr)
        # field 5 (blob), wire type 2
        parts.append(b"\x2a" + _varint(len(blob)) + blob)
    return meta.SerializeToString() + b"".join(parts)


def decode(data: bytes, path: str = "<bytes>") -> dict[str, tuple[int, np.ndarray]]:
    """name -> (version, float32 array shaped as saved)."""
    try:
        msg = common_pb2.BlobProtos.FromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise UserError(f"{path}: not a checkpoint (BlobProtos) file: {e}") from None
    if len(msg.name) != len(msg.blob):
        raise UserError(f"{path}: checkpoint has {len(msg.name)} names but {len(msg.blob)} blobs")
    out = {}
    for i, (name, blob) in enumerate(zip(msg.name, msg.blob)):
        arr = np.array(blob.data, dtype=np.float32)
        shape = tuple(blob.shape)
        if int(np.prod(shape, dtype=np.int64)) != arr.size:
            raise UserError(f"{path}: param '{name}' has shape {list(shape)} but {arr.size} values")
        version = msg.version[i] if i < len(msg.version) else 0
        out[name] = (version, arr.reshape(shape))
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def checkpoint_dir(workspace: str) -> Path:
    return Path(workspace) / "checkpoint"


def save(workspace: str, step: int, worker: int, params: list[tuple[str, int, np.ndarray]],
         resume_state: dict | None = None) -> Path:
    """Write `step<step>-worker<worker>` (and its `.resume` file); return its path."""
    d = checkpoint_dir(workspace)
    path = d / f"step{step}-worker{worker}"
    if resume_state is not None:
        save_resume(path, resume_state)
    try:
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, encode(params))
    except OSError as e:
        # a full or read-only disk: say so plainly; no half-written file stays
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
    return path


def position_path(workspace: str, step: int, worker: int) -> Path:
    """Where worker `worker` (> 0) of group 0 keeps its resume state of
    `step` (its data position and random state: it writes no params)."""
    return checkpoint_dir(workspace) / f"step{step}-worker0.w{worker}"


def server_state_path(workspace: str, step: int, grp: int, sid: int) -> Path:
    """Where server `sid` of server group `grp` keeps its state of `step`
    (its slices and the updater's history, `Server.state()`)."""
    return checkpoint_dir(workspace) / f"step{step}-server{grp}.{sid}.npz"


def due(job) -> Callable[[int], bool]:
    """Whether group 0 checkpoints at step N: every `checkpoint_freq` steps
    from `checkpoint_after` before `train_steps`, and at `train_steps`."""
    every = Trigger(job.checkpoint_freq, job.checkpoint_after)
    return lambda n: n == job.train_steps or (n < job.train_steps and every(n))


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an .npz file at `path`, whole or not at all; a
    UserError if it cannot be written."""
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


def save_resume(path: Path, resume_state: dict) -> None:
    """Write `resume_state` as `<path>.resume` (see `load_resume_state`)."""
    arrays = {f"a/{k}": v for k, v in resume_state.get("arrays", {}).items()}
    meta = json.dumps(resume_state.get("meta", {})).encode()
    arrays["meta"] = np.frombuffer(meta, dtype=np.uint8)
    save_arrays(path.with_name(path.name + ".resume"), arrays)


def load(paths: list[str]) -> dict[str, tuple[int, np.ndarray]]:
    """Params from several checkpoint files; a later file overrides an earlier one."""
    out: dict[str, tuple[int, np.ndarray]] = {}
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError as e:
            raise UserError(f"cannot read checkpoint {p}: {e.strerror}") from None
        out.update(decode(data, p))
    return out


def load_resume_state(path: str) -> dict | None:
    """The `.resume` state saved beside checkpoint `path`, or None."""
    f = Path(path + ".resume")
    if not f.exists():
        return None
    with np.load(f, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        arrays = {k[2:]: z[k] for k in z.files if k.startswith("a/")}
    return {"meta": meta, "arrays": arrays}


def latest(workspace: str) -> tuple[int, list[str]] | None:
    """The highest step N with checkpoint files in the workspace, and those files."""
    d = checkpoint_dir(workspace)
    if not d.is_dir():
        return None
    steps: dict[int, list[str]] = {}
    for f in d.iterdir():
        m = CKPT_RE.match(f.name)
        if m:
            steps.setdefault(int(m.group(1)), []).append(str(f))
    if not steps:
        return None
    n = max(steps)
    return n, sorted(steps[n])
