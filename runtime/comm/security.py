"""CurveZMQ for a job's sockets across hosts: one key pair per job, and a
guard that admits only peers holding it.

The contract
- `JobKeys.generate()` makes the job's key pair (z85) at submit time. Every
  ROUTER the job binds on tcp is a CURVE server with that pair; every DEALER
  that connects to one is a CURVE client whose server key is the job's public
  key and whose own pair is the job's pair too. A `Guard` on the context of
  the CURVE servers answers libzmq's ZAP requests and admits a client only
  when its public key is the job's. The CURVE handshake proves that a client
  holds the secret key of the public key it shows (and the server the secret
  of its own), so a peer must hold the job's *secret* key: knowing the public
  key is not enough, and a DEALER of the job never talks to another job's
  server that happens to reuse a port.
- Servers set a ZAP domain and `ZAP_ENFORCE_DOMAIN`, so they fail closed:
  with no Guard on the context (never started, or stopped) every handshake
  is refused. (`ZAP_ENFORCE_DOMAIN` without a domain makes libzmq 4.3 skip
  ZAP altogether and admit anyone; hence the domain.) `curve_server` also
  refuses to make a server on a context with no running Guard, so that
  mistake is an error at start-up, not a hang.
- `inproc://` connections (a process's own threads to its stub) have no
  handshake in libzmq, so they need no keys even on a CURVE ROUTER. `ipc://`
  on one host uses no CURVE: the socket files live in a directory of mode
  0700 (see `socket._ipc_path`).
- Refused ZAP handshakes are logged at WARNING with the peer's IP address
  and a fingerprint of the public key it showed, never key material beyond
  that; repeats from one address are summarised, so a peer cannot flood the
  log. A client without CURVE (or that does not know the server key) fails
  earlier, in libzmq's greeting, before ZAP: it gets nothing through either,
  but libzmq gives no peer address for it, so the Guard cannot log it.

How keys travel
- Made at submit time; kept in the registry's `jobs.secret` (a 0600 file,
  never printed). Never on a command line (`ps` shows it to every user), in
  an environment variable (inherited by children, readable in /proc) or in a
  log. The job master starts each process with `stdin=subprocess.PIPE` and
  writes `keys.to_dict()` there inside the one JSON line of
  `runtime.jobs.launcher.handoff`, then closes stdin; ssh forwards stdin to
  a remote process the same way. The process reads that line before
  anything else and makes `JobKeys.from_dict(...)` and its `Guard` before
  any socket.
- `JobKeys` never shows its secret in `repr`/`str`; errors about keys name
  the field and what was expected, never the value given.
"""
from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils import z85

from runtime.errors import UserError

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by ZAP (RFC 27): one handler per context
ZAP_DOMAIN = b"singa"
_Z85_KEY_LEN = 40           # a 32-byte curve25519 key in z85
_POLL_MS = 100              # how often the guard thread looks at its stop flag
_LOG_EVERY_S = 60.0         # refusals from one address are logged at most this often


class KeysError(UserError):
    """Job keys that are missing or malformed (the message never holds key material)."""


def _check_key(name: str, value: Any) -> bytes:
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, (bytes, bytearray)):
        raise KeysError(f"job keys: '{name}' is a {type(value).__name__}, "
                        f"expected a {_Z85_KEY_LEN}-character z85 string")
    value = bytes(value)
    if len(value) != _Z85_KEY_LEN:
        raise KeysError(f"job keys: '{name}' has {len(value)} characters, "
                        f"expected a {_Z85_KEY_LEN}-character z85 string")
    try:
        z85.decode(value)
    except (ValueError, KeyError):
        raise KeysError(f"job keys: '{name}' is not valid z85") from None
    return bytes(value)


@dataclass(frozen=True, repr=False)
class JobKeys:
    """The CURVE key pair of one job, both halves z85-encoded (40 bytes).

    The secret must belong to the public key (checked). `repr`/`str` show
    only a fingerprint of the public key."""

    public: bytes
    secret: bytes

    def __post_init__(self) -> None:
        public = _check_key("public", self.public)
        secret = _check_key("secret", self.secret)
        if not hmac.compare_digest(zmq.curve_public(secret), public):
            raise KeysError("job keys: the secret key does not belong to the public key")
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "secret", secret)

    @classmethod
    def generate(cls) -> JobKeys:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @property
    def fingerprint(self) -> str:
        """The first characters of the public key: enough to tell jobs apart in logs."""
        return self.public[:8].decode("ascii")

    def to_dict(self) -> dict[str, str]:
        return {"public": self.public.decode("ascii"), "secret": self.secret.decode("ascii")}

    @classmethod
    def from_dict(cls, d: Any) -> JobKeys:
        if not isinstance(d, dict):
            raise KeysError(f"job keys: got a JSON {type(d).__name__}, "
                            "expected an object with 'public' and 'secret'")
        missing = [k for k in ("public", "secret") if k not in d]
        if missing:
            raise KeysError(f"job keys: missing {', '.join(repr(k) for k in missing)}; "
                            "expected an object with 'public' and 'secret'")
        return cls(d["public"], d["secret"])

    def __repr__(self) -> str:
        return f"JobKeys(public={self.fingerprint}..., secret=<hidden>)"

    __str__ = __repr__


# ------------------------------------------------------------ sockets ---
def curve_server(sock: zmq.Socket[bytes], keys: JobKeys) -> None:
    """Make `sock` (before bind) a CURVE server of the job. Its context must
    have a running `Guard` for these keys."""
    guard = guard_of(sock.context)
    if guard is None:
        raise RuntimeError("a CURVE server needs a running Guard(ctx, keys) on its context; "
                           "start one before making the socket")
    if guard.keys != keys:
        raise RuntimeError(f"the Guard on this context admits {guard.keys!r}, "
                           f"not the server's {keys!r}")
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def curve_client(sock: zmq.Socket[bytes], keys: JobKeys) -> None:
    """Make `sock` (before connect) a CURVE client of the job's servers."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


# -------------------------------------------------------------- guard ---
_guards: dict[int, Guard] = {}   # id(ctx) -> running guard; the guard keeps ctx alive
_guards_lock = threading.Lock()


def guard_of(ctx: zmq.Context[zmq.Socket[bytes]]) -> Guard | None:
    with _guards_lock:
        return _guards.get(id(ctx))


class Guard:
    """The ZAP handler of one context: admits CURVE clients whose public key
    is the job's, refuses (and logs) everyone else.

    Start it before the context's CURVE servers, `stop()` it (or leave the
    `with` block) before `ctx.term()`; if the context is terminated first the
    guard ends by itself. One per context (ZAP has one fixed endpoint)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], keys: JobKeys):
        self.keys = keys
        self.ctx = ctx
        self.admitted = 0
        self.rejected = 0
        self._public = z85.decode(keys.public)
        self._recent: dict[bytes, tuple[float, int]] = {}  # address -> (last logged, suppressed)
        self._stop = threading.Event()
        with _guards_lock:
            if id(ctx) in _guards:
                raise RuntimeError("this context already has a Guard")
            zap = ctx.socket(zmq.REP)
            zap.setsockopt(zmq.LINGER, 0)
            try:
                zap.bind(ZAP_ENDPOINT)
            except zmq.ZMQError as e:
                zap.close()
                raise RuntimeError(f"cannot serve ZAP on this context ({e}); "
                                   "is another ZAP handler running?") from None
            _guards[id(ctx)] = self
        # the socket moves to the thread; Thread.start() is the memory barrier zmq asks for
        self._zap = zap
        self._thread = threading.Thread(target=self._serve, name="singa-zap-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering (CURVE servers of the context then refuse everyone)."""
        with _guards_lock:
            if _guards.get(id(self.ctx)) is self:
                del _guards[id(self.ctx)]
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ thread ---
    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if self._zap.poll(_POLL_MS):
                    self._zap.send_multipart(self._answer(self._zap.recv_multipart()))
        except zmq.ContextTerminated:
            pass
        except Exception:  # never leave the context without an answer silently
            log.exception("ZAP guard failed; CURVE servers of this context now refuse everyone")
        finally:
            self._zap.close()
            with _guards_lock:
                if _guards.get(id(self.ctx)) is self:
                    del _guards[id(self.ctx)]

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        """A ZAP reply (RFC 27) to one request."""
        rid = frames[1] if len(frames) > 1 else b""
        if len(frames) < 6 or frames[0] != b"1.0":
            log.warning("ZAP guard: malformed request of %d frames refused", len(frames))
            return [b"1.0", rid, b"500", b"malformed ZAP request", b"", b""]
        address, mechanism, creds = frames[3], frames[5], frames[6:]
        if mechanism != b"CURVE":
            reason = f"mechanism {mechanism.decode('ascii', 'replace')!r}, expected CURVE"
        elif len(creds) != 1 or len(creds[0]) != 32:
            reason = "malformed CURVE credentials"
        elif not hmac.compare_digest(creds[0], self._public):
            # a public key is not secret: its fingerprint helps find the stray process
            reason = f"its key {z85.encode(creds[0])[:8].decode('ascii')}... is not the job's"
        else:
            self.admitted += 1
            return [b"1.0", rid, b"200", b"OK", b"job", b""]
        self.rejected += 1
        self._log_refusal(address.decode("ascii", "replace") or "?", reason)
        return [b"1.0", rid, b"400", b"not a peer of this job", b"", b""]

    def _log_refusal(self, address: str, reason: str) -> None:
        now = time.monotonic()
        key = address.encode()
        last, suppressed = self._recent.get(key, (-_LOG_EVERY_S, 0))
        if now - last < _LOG_EVERY_S:
            self._recent[key] = (last, suppressed + 1)
            return
        if len(self._recent) > 1024:  # bounded: forget old addresses
            self._recent.clear()
        self._recent[key] = (now, 0)
        more = f" (and {suppressed} more from there since the last report)" if suppressed else ""
        log.warning("refused a connection from %s: %s%s", address, reason, more)
