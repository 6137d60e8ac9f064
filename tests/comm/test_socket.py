"""Sockets: OS-picked endpoints on every transport, zero-copy arrays, and a
foreign peer sending garbage is dropped, not fatal."""
import numpy as np
import pytest
import zmq

from conf import common_pb2 as c
from runtime.comm import socket as zsock
from runtime.comm.msg import Addr, Msg


@pytest.mark.parametrize("transport", ["inproc", "ipc", "tcp"])
def test_router_dealer_round_trip(transport):
    ctx = zmq.Context()
    r = zsock.router(ctx)
    ep = zsock.bind(r, transport)
    if transport == "tcp":
        assert ep.startswith("tcp://127.0.0.1:") and not ep.endswith(":0")
    d = zsock.dealer(ctx, b"w0")
    d.connect(ep)
    g = np.arange(5, dtype=np.float32)
    zsock.send(d, Msg(Addr.worker(0, 0), Addr.server(0, 0), c.kUpdate, param=1).add_array(g))
    ident, m = zsock.recv(r, router=True)
    assert ident == b"w0" and m.array(0).tolist() == g.tolist()
    zsock.send(r, m.reply(c.kRUpdate, version=1).add_array(g * 2), to=ident)
    _, back = zsock.recv(d)
    assert back.type == c.kRUpdate and back.array(0).tolist() == (g * 2).tolist()
    d.close()
    r.close()
    ctx.term()


def test_garbage_from_a_foreign_peer_is_dropped(caplog):
    ctx = zmq.Context()
    r = zsock.router(ctx)
    ep = zsock.bind(r, "tcp")
    raw = ctx.socket(zmq.DEALER)
    raw.connect(ep)
    raw.send_multipart([b"GET / HTTP/1.0\r\n\r\n"])
    raw.send_multipart([b"SG" + bytes(25), b"x"])
    assert zsock.recv(r, router=True) is None
    assert zsock.recv(r, router=True) is None
    assert "dropped a message that is not ours" in caplog.text
    # a real message after the garbage still gets through
    zsock.send(raw, Msg(Addr.worker(0, 0), Addr.server(0, 0), c.kGet))
    ident, m = zsock.recv(r, router=True)
    assert m.type == c.kGet
    raw.close()
    r.close()
    ctx.term()
