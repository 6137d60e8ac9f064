"""ZeroMQ sockets for the runtime: bind where the OS picks, send and receive
`Msg`s without copies, drop what is not ours.

- `bind(sock, transport, host)` binds a socket to `inproc://`, `ipc://` (a
  fresh path under a private temp directory) or `tcp://host:*` (a port the OS
  picks) and returns the endpoint actually bound, to be published to peers.
  There are no fixed ports, so jobs never clash.
- `send(sock, msg, to=None)` sends a Msg (with a ROUTER identity frame when
  `to` is given); array frames go without copying.
- `recv(sock)` returns `(identity, Msg)` (identity None on a DEALER), or None
  for frames that are not a message of this protocol: those are logged and
  dropped, so a foreign or broken peer cannot crash a process.
- `router(ctx, keys)` / `dealer(ctx, identity, keys)` with the job's
  `JobKeys` make a CURVE server / client (see `runtime.comm.security`; the
  context of a CURVE server needs a running `Guard`). Without keys (ipc and
  inproc on one host) there is no CURVE: ipc socket files live in a fresh
  directory of mode 0700, so only this user can connect.
- `ipc_dir()` is that directory: one per job, made by the job master and
  handed down to its processes in `$SINGA_IPC_DIR`; the master removes it
  when the job ends (`remove_ipc_dir`), a process does when its master is
  gone. A process outside a job makes its own, removed at its exit.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

import zmq

from runtime.comm import security
from runtime.comm.msg import Msg, MsgError

log = logging.getLogger(__name__)

#: Names the job's directory for ipc:// socket files in a process's environment.
IPC_DIR_ENV = "SINGA_IPC_DIR"

_ipc_dir: str | None = None


def ipc_dir() -> str:
    """This process's directory for ipc:// socket files: the job's
    (`$SINGA_IPC_DIR`) when set, else a fresh one made on first use and
    removed when this process exits."""
    global _ipc_dir
    if _ipc_dir is None:
        given = os.environ.get(IPC_DIR_ENV)
        if given:
            _ipc_dir = given
        else:
            # mkdtemp makes the directory 0700: other users cannot reach the sockets
            _ipc_dir = tempfile.mkdtemp(prefix="singa-ipc-")
            atexit.register(shutil.rmtree, _ipc_dir, True)
    return _ipc_dir


def remove_ipc_dir() -> None:
    """Remove `ipc_dir()` with the socket files left in it (by processes that
    were killed); nothing if this process never made or was given one."""
    if _ipc_dir is not None:
        shutil.rmtree(_ipc_dir, ignore_errors=True)


def _ipc_path(name: str) -> str:
    return os.path.join(ipc_dir(), f"{name}-{os.getpid()}")


def bind(sock: zmq.Socket[bytes], transport: str, host: str = "127.0.0.1", name: str = "stub") -> str:
    """Bind and return the endpoint peers should connect to."""
    if transport == "inproc":
        endpoint = f"inproc://{name}-{id(sock)}"
        sock.bind(endpoint)
        return endpoint
    if transport == "ipc":
        endpoint = f"ipc://{_ipc_path(name)}"
        sock.bind(endpoint)
        return endpoint
    if transport == "tcp":
        sock.bind(f"tcp://{host}:*")
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    raise ValueError(f"unknown transport {transport!r}; known: inproc, ipc, tcp")


def router(ctx: zmq.Context[zmq.Socket[bytes]], keys: security.JobKeys | None = None) -> zmq.Socket[bytes]:
    """A ROUTER that errors on unknown peers instead of dropping silently;
    with `keys`, a CURVE server admitting only the job's peers (raises
    RuntimeError when `ctx` has no running `Guard` for those keys)."""
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.ROUTER_MANDATORY, 1)
    s.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        try:
            security.curve_server(s, keys)
        except BaseException:
            s.close()
            raise
    return s


def dealer(ctx: zmq.Context[zmq.Socket[bytes]], identity: bytes | None = None,
           keys: security.JobKeys | None = None) -> zmq.Socket[bytes]:
    """A DEALER; with `keys`, a CURVE client of the job's servers."""
    s = ctx.socket(zmq.DEALER)
    if identity is not None:
        s.setsockopt(zmq.IDENTITY, identity)
    s.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        security.curve_client(s, keys)
    return s


def send(sock: zmq.Socket[bytes], msg: Msg, to: bytes | None = None) -> None:
    frames = msg.to_frames()
    if to is not None:
        frames = [to, *frames]
    sock.send_multipart(frames, copy=False)


def recv(sock: zmq.Socket[bytes], router: bool = False) -> tuple[bytes | None, Msg] | None:
    """One message, or None when the frames were not a valid Msg (logged)."""
    frames = sock.recv_multipart(copy=False)
    ident = None
    if router:
        if len(frames) < 2:
            log.warning("dropped a frame list of length %d from a peer", len(frames))
            return None
        ident, frames = frames[0].bytes, frames[1:]
    try:
        return ident, Msg.from_frames(frames)
    except MsgError as e:
        log.warning("dropped a message that is not ours%s: %s",
                    f" from {ident!r}" if ident else "", e)
        return None
