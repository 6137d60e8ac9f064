"""Msg: the one message type of the runtime (SINGA's Msg), and its frames.

A message is a fixed 27-byte header plus zero or more body frames. The
header holds a magic tag and protocol version, the `MsgType`, the source and
destination `Addr`, the number of body frames, and the target: param id,
slice id and version (or step).
Body frames are raw bytes; arrays travel as their float32 buffer, sent
without copying (`zmq.Socket.send_multipart(..., copy=False)`), and are read
back with `np.frombuffer`. Nothing is pickled.

A frame list that is not a message of this protocol (wrong magic, version,
size or type) raises `MsgError`; receivers log it and drop the message.

This module owns the wire format: the header (`Header`, `parse_header`,
`pack_header`) and the meta frames some message types carry (`PUT_META` of
a kPut, `UPDATE_META` of a kUpdate, the aux meta of a kData). Senders and
receivers (stub, server, bridges) read and write them only through it.

Envelopes. The header counts its message's body frames (1..255; 0 means
"all the frames that follow", as a message of more than 255 frames has), so
several messages to one destination can travel as one zmq multipart
message, their frame lists one after the other (`envelope`, `split`). A
router forwards an envelope by its first header's destination, and the
receiver handles its messages in order. The workers send the updates of a
layer's params so, and the servers their replies: fewer zmq messages, fewer
thread wake-ups in each process on a step's path.

    m = Msg(Addr.worker(0, 1), Addr.server(0, 0), kUpdate, param=3, slice=0, version=12)
    m.add_array(grad_slice)
    frames = m.to_frames()          # [header, buffer]
    Msg.from_frames(frames).array(0)
"""
from __future__ import annotations

import builtins
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np
import zmq

from conf import common_pb2

MAGIC = b"SG"
PROTOCOL = 1
# magic, protocol, type, src (grp, id, kind), dst (grp, id, kind), body frames
# (0: all that follow), param, slice, version
_HEADER = struct.Struct("<2sBB hhB hhB B iii")
HEADER_SIZE = _HEADER.size

#: kPut meta frame: num_total (replicas of the param in one worker group), lr_scale, wd_scale
PUT_META = struct.Struct("<iff")
#: kUpdate meta frame: num_update (replicas summed in the grad), base_version
UPDATE_META = struct.Struct("<ii")
# the older kUpdate meta frame: num_update only (no staleness)
_NUM_UPDATE_ONLY = struct.Struct("<i")

_TYPE_NAMES = {v: k for k, v in common_pb2.MsgType.items()}
_KIND_NAMES = {common_pb2.kWorkerParam: "w", common_pb2.kWorkerLayer: "wl",
               common_pb2.kServer: "s", common_pb2.kStub: "stub", common_pb2.kRuntime: "rt"}


class MsgError(ValueError):
    """Frames that are not a message of this protocol."""


# pyzmq's flags are enum members, and combining or comparing them costs more
# than the call they go with; the hot loops use these plain ints instead.
SNDMORE = int(zmq.SNDMORE)
POLLIN = int(zmq.POLLIN)
EVENTS = int(zmq.EVENTS)


def send_frames(sock: zmq.Socket[Any], frames: Sequence[Any]) -> None:
    """`sock.send_multipart(frames, copy=False)`, for the hot paths: zmq
    Frames are passed on by reference, buffers of pyzmq's copy threshold or
    more are sent without copying (smaller ones are copied: cheaper than the
    release of a zero-copy buffer)."""
    send = sock.send
    last = len(frames) - 1
    for i, f in enumerate(frames):
        send(f, SNDMORE if i < last else 0, copy=False)


def recv_frames(sock: zmq.Socket[Any]) -> list[Any]:
    """`sock.recv_multipart(copy=False)`, for the hot paths (blocks)."""
    recv = sock.recv
    f = recv(0, copy=False)
    frames = [f]
    while f.more:
        f = recv(0, copy=False)
        frames.append(f)
    return frames


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting on `sock` (no system call)."""
    return bool(cast(int, sock.getsockopt(EVENTS)) & POLLIN)


class Header(NamedTuple):
    """The fields of a header frame, as `parse_header` reads them: a tuple
    whose fields have names (it costs a little more than a plain tuple, no
    more than one object per message). `nbody` is the number of body frames,
    0 for "all the frames that follow"."""

    type: int
    src_grp: int
    src_id: int
    src_kind: int
    dst_grp: int
    dst_id: int
    dst_kind: int
    param: int
    slice: int
    version: int
    nbody: int


_new_tuple = tuple.__new__


def parse_header(head: Any) -> Header:
    """The fields of a header frame (bytes, buffer or `zmq.Frame`), checked.
    Raises MsgError for anything that is not a header of this protocol.
    Routers use it to forward a message by its `dst` without building a
    `Msg` or copying its frames."""
    head = getattr(head, "buffer", head)
    if len(head) != HEADER_SIZE:
        raise MsgError(f"header of {len(head)} bytes, expected {HEADER_SIZE}")
    (magic, proto, mtype, sg, si, sk, dg, di, dk, nbody, param, sl, version) = _HEADER.unpack(head)
    if magic != MAGIC:
        raise MsgError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if proto != PROTOCOL:
        raise MsgError(f"protocol version {proto}, expected {PROTOCOL}")
    if mtype not in _TYPE_NAMES:
        raise MsgError(f"unknown message type {mtype}")
    # tuple.__new__ skips the NamedTuple's own __new__ (half the cost of a Header)
    return _new_tuple(Header, (mtype, sg, si, sk, dg, di, dk, param, sl, version, nbody))


def pack_header(mtype: int, src: Addr, dst: Addr, param: int, slice: int, version: int,
                nbody: int) -> bytes:
    """The header frame of a message with `nbody` body frames (what
    `Msg.header` gives), for senders that build frame lists themselves."""
    return _HEADER.pack(MAGIC, PROTOCOL, mtype, src.grp, src.id, src.kind,
                        dst.grp, dst.id, dst.kind, nbody if nbody <= 255 else 0,
                        param, slice, version)


def put_meta(num_total: int, lr_scale: float = 1.0, wd_scale: float = 1.0) -> bytes:
    """The meta frame of a kPut."""
    return PUT_META.pack(num_total, lr_scale, wd_scale)


def read_put_meta(meta: bytes) -> tuple[int, float, float]:
    """(num_total, lr_scale, wd_scale) of a kPut's meta frame (`struct.error`
    if it is not one)."""
    num_total, lr_scale, wd_scale = PUT_META.unpack(meta)
    return num_total, lr_scale, wd_scale


def update_meta(num_update: int, base_version: int) -> bytes:
    """The meta frame of a kUpdate."""
    return UPDATE_META.pack(num_update, base_version)


def read_update_meta(meta: bytes) -> tuple[int, int | None]:
    """(num_update, base_version) of a kUpdate's meta frame; base_version is
    None for the 4-byte meta of num_update only (`struct.error` if the frame
    is neither)."""
    if len(meta) == _NUM_UPDATE_ONLY.size:
        (num_update,) = _NUM_UPDATE_ONLY.unpack(meta)
        return num_update, None
    num_update, base = UPDATE_META.unpack(meta)
    return num_update, base


def aux_meta(aux: np.ndarray) -> bytes:
    """The meta frame of a kData's aux array (its dtype and shape, as
    "<dtype str>:<d0>,<d1>,..."); the array's bytes travel in the frame before."""
    return f"{aux.dtype.str}:{','.join(map(str, aux.shape))}".encode()


def read_aux_meta(meta: bytes) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """(dtype, shape) of a kData's aux meta frame (ValueError or TypeError if it
    is not one)."""
    dtype, _, dims = meta.decode().partition(":")
    return np.dtype(dtype), tuple(int(d) for d in dims.split(",") if d)


def split(frames: Sequence[Any]) -> list[tuple[Header, list[Any]]]:
    """The messages of an envelope (a single message is an envelope of one),
    as (its `parse_header` fields, its body frames). Raises MsgError when a
    header is bad or counts more frames than there are."""
    out: list[tuple[Header, list[Any]]] = []
    i, n = 0, len(frames)
    if n == 0:
        raise MsgError("empty message")
    while i < n:
        fields = parse_header(frames[i])
        nbody = fields.nbody
        end = n if nbody == 0 else i + 1 + nbody
        if end > n:
            raise MsgError(f"header {len(out)} of an envelope counts {nbody} body frames, "
                           f"{n - i - 1} follow")
        out.append((fields, list(frames[i + 1:end])))
        i = end
    return out


def envelope(msgs: Sequence[Msg]) -> list[Any]:
    """The frames of `msgs` (to one destination) as one multipart message."""
    if len(msgs) == 1:
        return msgs[0].to_frames()
    out: list[Any] = []
    for m in msgs:
        if not 0 < len(m.frames) <= 255:
            raise ValueError(f"{m!r}: a message in an envelope needs 1 to 255 body frames")
        out += m.to_frames()
    return out


@dataclass(frozen=True, order=True)
class Addr:
    """A logical address: (group, id, kind), kind an `EntityType`.

    Workers are `Addr.worker(g, w)`, servers `Addr.server(g, s)`, the stub of
    process p is `Addr.stub(p)`.
    """

    grp: int
    id: int
    kind: int

    @classmethod
    def worker(cls, grp: int, wid: int) -> Addr:
        return cls(grp, wid, common_pb2.kWorkerParam)

    @classmethod
    def worker_layer(cls, grp: int, wid: int) -> Addr:
        return cls(grp, wid, common_pb2.kWorkerLayer)

    @classmethod
    def server(cls, grp: int, sid: int) -> Addr:
        return cls(grp, sid, common_pb2.kServer)

    @classmethod
    def stub(cls, procs: int) -> Addr:
        return cls(-1, procs, common_pb2.kStub)

    def __repr__(self) -> str:
        name = _KIND_NAMES.get(self.kind, f"kind{self.kind}")
        if self.kind == common_pb2.kStub:
            return f"stub({self.id})"
        return f"{name}({self.grp},{self.id})"


# Addresses met on the wire, so that parsing a header builds no new objects
# (bounded: a foreign peer cannot grow it without limit).
_ADDRS: dict[tuple[int, int, int], Addr] = {}
_ADDRS_MAX = 4096


def _addr(grp: int, id: int, kind: int) -> Addr:
    key = (grp, id, kind)
    a = _ADDRS.get(key)
    if a is None:
        a = Addr(grp, id, kind)
        if len(_ADDRS) < _ADDRS_MAX:
            _ADDRS[key] = a
    return a


@dataclass
class Msg:
    src: Addr
    dst: Addr
    type: int
    param: int = 0
    slice: int = 0
    version: int = 0
    frames: list[Any] = field(default_factory=list)

    # --------------------------------------------------------- body ---
    def add_array(self, arr: np.ndarray) -> Msg:
        """Append an array's buffer as a frame (no copy; float32 expected)."""
        self.frames.append(np.ascontiguousarray(arr).data.cast("B"))
        return self

    def add_bytes(self, data: bytes) -> Msg:
        self.frames.append(data)
        return self

    def array(self, i: int, dtype: Any = np.float32) -> np.ndarray:
        """Frame i as a read-only array view (no copy)."""
        buf = self.frames[i]
        buf = getattr(buf, "buffer", buf)  # zmq.Frame
        try:
            return np.frombuffer(buf, dtype=dtype)
        except ValueError as e:
            raise MsgError(f"frame {i} of {self!r} is not a {np.dtype(dtype).name} array: {e}") from None

    def bytes(self, i: int) -> bytes:
        buf = self.frames[i]
        return bytes(getattr(buf, "buffer", buf))

    # --------------------------------------------------------- wire ---
    def header(self) -> builtins.bytes:
        return pack_header(self.type, self.src, self.dst, self.param, self.slice, self.version,
                           len(self.frames))

    def to_frames(self) -> list[Any]:
        return [self.header(), *self.frames]

    @classmethod
    def from_frames(cls, frames: Sequence[Any]) -> Msg:
        """One message (not an envelope of several: see `all_from_frames`)."""
        if not frames:
            raise MsgError("empty message")
        fields = parse_header(frames[0])
        nbody = fields.nbody
        if nbody and nbody != len(frames) - 1:
            raise MsgError(f"header counts {nbody} body frames, {len(frames) - 1} follow")
        return cls.from_parts(fields, list(frames[1:]))

    @classmethod
    def from_parts(cls, fields: Header, body: list[Any]) -> Msg:
        """A message from `parse_header` fields and its body frames."""
        (mtype, sg, si, sk, dg, di, dk, param, sl, version, _) = fields
        return cls(_addr(sg, si, sk), _addr(dg, di, dk), mtype, param, sl, version, body)

    @classmethod
    def all_from_frames(cls, frames: Sequence[Any]) -> list[Msg]:
        """The messages of an envelope, in order."""
        return [cls.from_parts(fields, body) for fields, body in split(frames)]

    def reply(self, mtype: int, version: int | None = None) -> Msg:
        """A message back to the sender about the same target."""
        return Msg(self.dst, self.src, mtype, self.param, self.slice,
                   self.version if version is None else version)

    def __repr__(self) -> str:
        sizes = ",".join(str(len(getattr(f, "buffer", f))) for f in self.frames)
        return (f"Msg({_TYPE_NAMES.get(self.type, self.type)} {self.src!r}->{self.dst!r} "
                f"param={self.param} slice={self.slice} v{self.version}"
                + (f" frames=[{sizes}]" if self.frames else "") + ")")
