"""Msg: the one message type of the runtime (SINGA's Msg), and its frames.

A message is a fixed 27-byte header plus zero or more body frames. The
header holds a magic tag and protocol version, the `MsgType`, the source and
destination `Addr`, and the target: param id, slice id and version (or step).
Body frames are raw bytes; arrays travel as their float32 buffer, sent
without copying (`zmq.Socket.send_multipart(..., copy=False)`), and are read
back with `np.frombuffer`. Nothing is pickled.

A frame list that is not a message of this protocol (wrong magic, version,
size or type) raises `MsgError`; receivers log it and drop the message.

    m = Msg(Addr.worker(0, 1), Addr.server(0, 0), kUpdate, param=3, slice=0, version=12)
    m.add_array(grad_slice)
    frames = m.to_frames()          # [header, buffer]
    Msg.from_frames(frames).array(0)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from conf import common_pb2

MAGIC = b"SG"
PROTOCOL = 1
# magic, protocol, type, src (grp, id, kind), dst (grp, id, kind), param, slice, version
_HEADER = struct.Struct("<2sBB hhB hhB x iii")
HEADER_SIZE = _HEADER.size

_TYPE_NAMES = {v: k for k, v in common_pb2.MsgType.items()}
_KIND_NAMES = {common_pb2.kWorkerParam: "w", common_pb2.kWorkerLayer: "wl",
               common_pb2.kServer: "s", common_pb2.kStub: "stub", common_pb2.kRuntime: "rt"}


class MsgError(ValueError):
    """Frames that are not a message of this protocol."""


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
    def worker(cls, grp: int, wid: int) -> "Addr":
        return cls(grp, wid, common_pb2.kWorkerParam)

    @classmethod
    def worker_layer(cls, grp: int, wid: int) -> "Addr":
        return cls(grp, wid, common_pb2.kWorkerLayer)

    @classmethod
    def server(cls, grp: int, sid: int) -> "Addr":
        return cls(grp, sid, common_pb2.kServer)

    @classmethod
    def stub(cls, procs: int) -> "Addr":
        return cls(-1, procs, common_pb2.kStub)

    def __repr__(self) -> str:
        name = _KIND_NAMES.get(self.kind, f"kind{self.kind}")
        if self.kind == common_pb2.kStub:
            return f"stub({self.id})"
        return f"{name}({self.grp},{self.id})"


@dataclass
class Msg:
    src: Addr
    dst: Addr
    type: int
    param: int = 0
    slice: int = 0
    version: int = 0
    frames: list = field(default_factory=list)

    # --------------------------------------------------------- body ---
    def add_array(self, arr: np.ndarray) -> "Msg":
        """Append an array's buffer as a frame (no copy; float32 expected)."""
        self.frames.append(memoryview(np.ascontiguousarray(arr)).cast("B"))
        return self

    def add_bytes(self, data: bytes) -> "Msg":
        self.frames.append(data)
        return self

    def array(self, i: int, dtype=np.float32) -> np.ndarray:
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
    def header(self) -> bytes:
        return _HEADER.pack(MAGIC, PROTOCOL, self.type,
                            self.src.grp, self.src.id, self.src.kind,
                            self.dst.grp, self.dst.id, self.dst.kind,
                            self.param, self.slice, self.version)

    def to_frames(self) -> list:
        return [self.header(), *self.frames]

    @classmethod
    def from_frames(cls, frames: Sequence) -> "Msg":
        if not frames:
            raise MsgError("empty message")
        head = frames[0]
        head = bytes(getattr(head, "buffer", head))
        if len(head) != HEADER_SIZE:
            raise MsgError(f"header of {len(head)} bytes, expected {HEADER_SIZE}")
        (magic, proto, mtype, sg, si, sk, dg, di, dk, param, sl, version) = _HEADER.unpack(head)
        if magic != MAGIC:
            raise MsgError(f"bad magic {magic!r}, expected {MAGIC!r}")
        if proto != PROTOCOL:
            raise MsgError(f"protocol version {proto}, expected {PROTOCOL}")
        if mtype not in _TYPE_NAMES:
            raise MsgError(f"unknown message type {mtype}")
        return cls(Addr(sg, si, sk), Addr(dg, di, dk), mtype, param, sl, version, list(frames[1:]))

    def reply(self, mtype: int, version: int | None = None) -> "Msg":
        """A message back to the sender about the same target."""
        return Msg(self.dst, self.src, mtype, self.param, self.slice,
                   self.version if version is None else version)

    def __repr__(self) -> str:
        sizes = ",".join(str(len(getattr(f, "buffer", f))) for f in self.frames)
        return (f"Msg({_TYPE_NAMES.get(self.type, self.type)} {self.src!r}->{self.dst!r} "
                f"param={self.param} slice={self.slice} v{self.version}"
                + (f" frames=[{sizes}]" if self.frames else "") + ")")
