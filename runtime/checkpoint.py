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

Checksums. Every file written here (params, `.resume`, server state) gets a
sidecar `<file>.sha256`: JSON `{"sha256": HEX, "size": BYTES}` of the file's
content. A sidecar, not a field inside the file, because the params file
must stay the BlobProtos that SINGA C++ reads, and one scheme for every file
is simpler than two. The order of `write_checked` is what makes the pair
atomic: the data goes to a fsynced temporary file, then the sidecar is put
in place (and the directory fsynced), and only then is the data renamed
over its name. A crash before that rename leaves the old data file with a
sidecar that still accepts it: when a file is replaced, the sidecar lists
the old content's checksum as `previous` until the new data is in place,
so neither a crash nor a reader in another process between the two renames
sees a good file refused or a bad one accepted. A data file never exists
without its sidecar, so `latest` skips a step whose singa-written file
(one with a `.resume` beside it) has none, as incomplete. A file with no
sidecar and no `.resume`, as SINGA C++ writes them, loads unchecked when
the user names it in `checkpoint_path`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from conf import common_pb2
from runtime.errors import UserError
from runtime.train.trigger import Trigger

CKPT_RE = re.compile(r"^step(\d+)-worker(\d+)$")
log = logging.getLogger("singa.checkpoint")


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
    except Exception as e:  # noqa: BLE001 - any decode failure (protobuf's DecodeError and kin) means a bad file
        raise UserError(f"checkpoint {path}: truncated or not a BlobProtos file: {e}") from None
    if len(msg.name) != len(msg.blob):
        raise UserError(f"checkpoint {path}: {len(msg.name)} names but {len(msg.blob)} blobs")
    out = {}
    for i, (name, blob) in enumerate(zip(msg.name, msg.blob)):
        arr = np.array(blob.data, dtype=np.float32)
        shape = tuple(blob.shape)
        if int(np.prod(shape, dtype=np.int64)) != arr.size:
            raise UserError(f"checkpoint {path}: param '{name}' has shape {list(shape)} "
                            f"but {arr.size} values")
        version = msg.version[i] if i < len(msg.version) else 0
        out[name] = (version, arr.reshape(shape))
    return out


def _write_synced(path: Path, data: bytes) -> None:
    """`data` in the file `path`, on disk when this returns."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(path: Path, data: bytes) -> None:
    """`path` holds `data` afterwards, whole and on disk, or is unchanged."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(d: Path) -> None:
    # the renames done so far reach the disk before the next one
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checksum_path(path: Path) -> Path:
    """The sidecar that holds the checksum of checkpoint file `path`."""
    return path.with_name(path.name + ".sha256")


def _digest(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _read_sidecar(path: Path) -> dict | None:
    side = checksum_path(path)
    try:
        text = side.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"checkpoint {path}: cannot read {side.name}: {e.strerror}") from None
    try:
        rec = json.loads(text)
        for d in (rec, *rec.get("previous", [])):
            if not (isinstance(d["sha256"], str) and isinstance(d["size"], int)):
                raise ValueError
        return rec
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"checkpoint {path}: its checksum file {side.name} is damaged "
                        "(expected JSON with sha256 and size)") from None


def write_checked(path: Path, data: bytes) -> None:
    """Write `data` at `path` with its checksum sidecar (see the module doc
    for the order that keeps the pair consistent through a crash)."""
    new = _digest(data)
    try:
        old = _read_sidecar(path) if path.exists() else None
    except UserError:
        old = None  # a damaged sidecar vouches for nothing; the new one replaces it
    # what the sidecar vouches for now stays valid until the new data is in
    # place (several entries if an earlier rewrite never finished)
    kept: list[dict] = []
    for d in ([old, *old.get("previous", [])] if old else []):
        d = {"sha256": d["sha256"], "size": d["size"]}
        if d != new and d not in kept:
            kept.append(d)
    tmp = path.with_name(path.name + ".tmp")
    side = checksum_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_synced(tmp, data)
        _replace(side, json.dumps({**new, "previous": kept} if kept else new).encode())
        _fsync_dir(path.parent)
        os.replace(tmp, path)
        if kept:
            _replace(side, json.dumps(new).encode())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _step_files(path: Path) -> str:
    m = re.match(r"step\d+", path.name)
    return f"{m.group(0)}-*" if m else path.name


def read_checked(path: Path, required: bool) -> bytes:
    """The content of checkpoint file `path`, checked against its sidecar.

    A UserError (one line naming the file) if it does not match, is
    truncated, or, when `required`, has no sidecar. Without a sidecar and
    not `required` (a SINGA C++ checkpoint) the bytes come unchecked. The
    sidecar is read before and after the data, so that a file being
    replaced meanwhile (by the job's first worker, while another process
    loads it) is read again rather than judged against the wrong checksum.
    """
    for _ in range(10):
        before = _read_sidecar(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read checkpoint {path}: {e.strerror}") from None
        rec = _read_sidecar(path)
        if rec == before:
            break
    else:
        raise UserError(f"checkpoint {path}: kept changing while it was read "
                        "(is another job writing to this workspace?)")
    if rec is None:
        if required:
            raise UserError(f"checkpoint {path}: no checksum file {checksum_path(path).name} "
                            "(an incomplete checkpoint, or one not written by this singa)")
        return data
    accepted = [rec, *rec.get("previous", [])]
    got = _digest(data)
    if any(got["sha256"] == a["sha256"] and got["size"] == a["size"] for a in accepted):
        return data
    fix = (f"restore it, or delete {_step_files(path)} in {path.parent} "
           "so that --resume takes an earlier checkpoint")
    if all(got["size"] < a["size"] for a in accepted):
        raise UserError(f"checkpoint {path}: truncated: {got['size']} of the {rec['size']} bytes "
                        f"written; {fix}")
    raise UserError(f"checkpoint {path}: checksum mismatch (file was changed or damaged after "
                    f"it was written); {fix}")


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
        write_checked(path, encode(params))
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
    """Write `arrays` as an .npz file at `path` with its checksum, whole or
    not at all; a UserError if it cannot be written."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub checks **kwds against allow_pickle
    try:
        write_checked(path, buf.getvalue())
    except OSError as e:
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file that `save_arrays` wrote, checked against
    its checksum; a UserError naming the file if they cannot be trusted."""
    data = read_checked(path, required=True)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise UserError(f"checkpoint {path}: not a readable .npz file: {e}") from None


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
        # checked when singa wrote it; SINGA C++'s files have no checksum
        out.update(decode(read_checked(Path(p), required=False), p))
    return out


def load_resume_state(path: str) -> dict | None:
    """The `.resume` state saved beside checkpoint `path`, or None (a SINGA
    checkpoint has none). A UserError if the file is damaged."""
    f = Path(path + ".resume")
    if not f.exists():
        return None
    z = load_arrays(f)
    try:
        meta = json.loads(bytes(z["meta"]).decode())
    except (KeyError, ValueError) as e:
        raise UserError(f"checkpoint {f}: no readable resume state: {e}") from None
    arrays = {k[2:]: v for k, v in z.items() if k.startswith("a/")}
    return {"meta": meta, "arrays": arrays}


def latest(workspace: str) -> tuple[int, list[str]] | None:
    """The highest step N with complete checkpoint files in the workspace,
    and those files. A step is skipped when a file of it that singa wrote
    (it has a `.resume`) lacks its checksum sidecar: an incomplete or
    foreign checkpoint. SINGA C++'s files (neither) count as they are."""
    d = checkpoint_dir(workspace)
    if not d.is_dir():
        return None
    steps: dict[int, list[str]] = {}
    for f in d.iterdir():
        m = CKPT_RE.match(f.name)
        if m:
            steps.setdefault(int(m.group(1)), []).append(str(f))
    for n, files in sorted(steps.items()):
        unchecked = [f for f in files
                     if Path(f + ".resume").exists() and not checksum_path(Path(f)).exists()]
        if unchecked:
            log.warning("checkpoint %s: no checksum file %s (incomplete, or written by a singa "
                        "without checksums): step %d is skipped", unchecked[0],
                        checksum_path(Path(unchecked[0])).name, n)
            del steps[n]
    if not steps:
        return None
    n = max(steps)
    return n, sorted(steps[n])
