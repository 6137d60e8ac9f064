"""CurveZMQ across hosts: only holders of the job's secret key get through,
refusals are logged without key material, keys travel on stdin.

Real tcp sockets on 127.0.0.1 with OS-picked ports; a refused peer is shown
by the server receiving nothing within a 1 s poll."""
from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from conf import common_pb2 as c
from runtime.comm import socket as zsock
from runtime.comm.msg import Addr, Msg
from runtime.comm.security import Guard, JobKeys, KeysError

REFUSED_MS = 1000
LOGGER = "runtime.comm.security"


@pytest.fixture
def keys():
    return JobKeys.generate()


@pytest.fixture
def server(keys):
    """A CURVE ROUTER of the job on tcp, guarded; yields (ctx, guard, router, endpoint)."""
    ctx = zmq.Context()
    guard = Guard(ctx, keys)
    r = zsock.router(ctx, keys)
    ep = zsock.bind(r, "tcp")
    socks = []
    yield ctx, guard, r, ep, socks
    for s in socks:
        s.close()
    r.close()
    guard.stop()
    ctx.term()


def _update(g: np.ndarray) -> Msg:
    return Msg(Addr.worker(0, 0), Addr.server(0, 0), c.kUpdate, param=1).add_array(g)


def _round_trip(r, d, g: np.ndarray) -> None:
    zsock.send(d, _update(g))
    assert r.poll(5000), "the job's peer got nothing through"
    ident, m = zsock.recv(r, router=True)  # type: ignore[misc]  # polled: a message is there
    assert ident == b"w0" and np.array_equal(m.array(0), g)
    zsock.send(r, m.reply(c.kRUpdate, version=1).add_array(g * 2), to=ident)
    assert d.poll(5000)
    _, back = zsock.recv(d)  # type: ignore[misc]  # polled: a message is there
    assert back.type == c.kRUpdate and back.version == 1
    assert np.array_equal(back.array(0), g * 2)


def _stray_client(ctx, ep: str, job: JobKeys, own: JobKeys) -> zmq.Socket:
    """A client that knows the job's public key but holds another key pair."""
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.curve_serverkey = job.public
    d.curve_publickey, d.curve_secretkey = own.public, own.secret
    d.connect(ep)
    return d


def _wait_for(pred, timeout=3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_job_peer_exchanges_messages_both_ways(server, keys):
    ctx, guard, r, ep, socks = server
    d = zsock.dealer(ctx, b"w0", keys)
    socks.append(d)
    d.connect(ep)
    _round_trip(r, d, np.arange(5, dtype=np.float32))
    # a 4 MB frame arrives intact through the encryption
    _round_trip(r, d, np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32))
    assert guard.admitted == 1 and guard.rejected == 0


def test_another_key_pair_is_refused_and_logged_without_secrets(server, keys, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ctx, guard, r, ep, socks = server
    other = JobKeys.generate()
    d = _stray_client(ctx, ep, keys, other)
    socks.append(d)
    zsock.send(d, _update(np.ones(3, np.float32)))
    assert r.poll(REFUSED_MS) == 0
    assert _wait_for(lambda: guard.rejected == 1)
    refusals = [rec for rec in caplog.records if rec.name == LOGGER]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    text = refusals[0].getMessage()
    assert "refused a connection from 127.0.0.1" in text
    assert other.fingerprint in text           # the stray key, by its public fingerprint
    for secret in (keys.secret, other.secret):
        assert secret.decode() not in caplog.text
        assert secret[:8].decode() not in caplog.text
    # the job's own peer still gets through afterwards
    good = zsock.dealer(ctx, b"w0", keys)
    socks.append(good)
    good.connect(ep)
    _round_trip(r, good, np.arange(4, dtype=np.float32))


def test_plain_client_gets_nothing_through_and_server_survives(server, keys):
    ctx, guard, r, ep, socks = server
    plain = zsock.dealer(ctx, b"w0")
    socks.append(plain)
    plain.connect(ep)
    zsock.send(plain, _update(np.ones(3, np.float32)))
    plain.send_multipart([b"GET / HTTP/1.0\r\n\r\n"])
    assert r.poll(REFUSED_MS) == 0
    good = zsock.dealer(ctx, b"w0", keys)
    socks.append(good)
    good.connect(ep)
    _round_trip(r, good, np.arange(3, dtype=np.float32))


def test_client_of_another_job_is_refused(server, keys):
    """Another job's process (its own full key pair) cannot reach this job,
    e.g. on a port this job now holds that the other job used before: its
    handshake fails before ZAP (it does not know this server's key)."""
    ctx, guard, r, ep, socks = server
    d = zsock.dealer(ctx, b"w0", JobKeys.generate())
    socks.append(d)
    d.connect(ep)
    zsock.send(d, _update(np.ones(3, np.float32)))
    assert r.poll(REFUSED_MS) == 0


def test_repeated_refusals_from_one_address_do_not_flood_the_log(server, keys, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ctx, guard, r, ep, socks = server
    for _ in range(3):
        socks.append(_stray_client(ctx, ep, keys, JobKeys.generate()))
    assert _wait_for(lambda: guard.rejected == 3)
    assert r.poll(0) == 0
    assert len([rec for rec in caplog.records if rec.name == LOGGER]) == 1


def test_inproc_threads_need_no_keys_on_a_curve_router(server):
    """The stub's ROUTER is a CURVE server and also serves its own threads
    over inproc://, where libzmq does no handshake."""
    ctx, guard, r, ep, socks = server
    zsock.bind(r, "inproc", name="stub0")
    local = zsock.dealer(ctx, b"w0")
    socks.append(local)
    local.connect(r.getsockopt_string(zmq.LAST_ENDPOINT))
    _round_trip(r, local, np.arange(3, dtype=np.float32))


def test_a_curve_server_needs_a_guard_and_fails_closed_without_one(keys):
    ctx = zmq.Context()
    try:
        with pytest.raises(RuntimeError, match="Guard"):
            zsock.router(ctx, keys)
        with Guard(ctx, keys):
            with pytest.raises(RuntimeError, match="already has a Guard"):
                Guard(ctx, keys)
            with pytest.raises(RuntimeError, match="admits"):
                zsock.router(ctx, JobKeys.generate())
            r = zsock.router(ctx, keys)
            ep = zsock.bind(r, "tcp")
        # guard stopped: even the job's own peer is refused, never admitted unchecked
        d = zsock.dealer(ctx, b"w0", keys)
        d.connect(ep)
        zsock.send(d, _update(np.ones(3, np.float32)))
        assert r.poll(REFUSED_MS) == 0
        d.close()
        r.close()
    finally:
        ctx.term()


def test_job_keys_never_show_the_secret(keys):
    secret = keys.secret.decode()
    for shown in (repr(keys), str(keys), f"{keys}", f"{keys!r}", repr([keys])):
        assert secret not in shown and secret[:8] not in shown
        assert keys.fingerprint in shown
    assert len(keys.public) == len(keys.secret) == 40


def test_job_keys_round_trip_as_json_and_reject_bad_input(keys):
    assert JobKeys.from_dict(json.loads(json.dumps(keys.to_dict()))) == keys
    other = JobKeys.generate()
    bad = [
        ({"public": keys.public.decode()}, "missing 'secret'"),
        ({"public": keys.public.decode(), "secret": other.secret.decode()}, "does not belong"),
        ({"public": keys.public.decode(), "secret": other.secret.decode()[:39]}, "39 characters"),
        ({"public": keys.public.decode(), "secret": 7}, "is a int"),
        ([keys.public.decode()], "JSON list"),
    ]
    for d, expected in bad:
        with pytest.raises(KeysError, match=expected) as e:
            JobKeys.from_dict(d)
        assert other.secret[:8].decode() not in str(e.value)


def test_keys_reach_a_child_on_stdin_not_on_its_command_line(keys):
    """As the job master hands them over: JSON on the child's stdin."""
    code = ("import json, sys; from runtime.comm.security import JobKeys; "
            "k = JobKeys.from_dict(json.loads(sys.stdin.readline())['keys']); "
            "print(k.public.decode(), k)")
    cmd = [sys.executable, "-c", code]
    child = subprocess.run(cmd, input=json.dumps({"keys": keys.to_dict()}).encode() + b"\n",
                           capture_output=True, timeout=20)
    assert child.returncode == 0, child.stderr.decode()
    out = child.stdout.decode().split()
    assert out[0] == keys.public.decode() and out[1].startswith(f"JobKeys(public={keys.fingerprint}")
    assert keys.secret.decode() not in child.stdout.decode() + " ".join(cmd)


def test_ipc_sockets_live_in_a_private_directory():
    ctx = zmq.Context()
    r = zsock.router(ctx)
    ep = zsock.bind(r, "ipc")
    try:
        mode = stat.S_IMODE(os.stat(os.path.dirname(ep[len("ipc://"):])).st_mode)
        assert mode == 0o700
    finally:
        r.close()
        ctx.term()
