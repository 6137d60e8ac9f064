"""Msg: header round trip, arrays without copies, foreign frames rejected."""
import numpy as np
import pytest

from conf import common_pb2 as c
from runtime.comm.msg import HEADER_SIZE, Addr, Msg, MsgError


def test_round_trip_and_repr():
    g = np.arange(6, dtype=np.float32)
    m = Msg(Addr.worker(1, 2), Addr.server(0, 3), c.kUpdate, param=7, slice=2, version=40).add_array(g)
    back = Msg.from_frames([bytes(f) for f in m.to_frames()])
    assert (back.src, back.dst, back.type, back.param, back.slice, back.version) == (
        Addr.worker(1, 2), Addr.server(0, 3), c.kUpdate, 7, 2, 40)
    assert back.array(0).tolist() == g.tolist()
    assert repr(back) == "Msg(kUpdate w(1,2)->s(0,3) param=7 slice=2 v40 frames=[24])"
    assert repr(Addr.stub(4)) == "stub(4)"


def test_arrays_are_not_copied():
    g = np.zeros(4, np.float32)
    m = Msg(Addr.worker(0, 0), Addr.server(0, 0), c.kUpdate).add_array(g)
    g[0] = 5
    assert m.array(0)[0] == 5


def test_reply_swaps_addresses():
    m = Msg(Addr.worker(0, 1), Addr.server(0, 0), c.kGet, param=1, slice=0, version=3)
    r = m.reply(c.kRGet, version=4)
    assert (r.src, r.dst, r.type, r.version) == (Addr.server(0, 0), Addr.worker(0, 1), c.kRGet, 4)


@pytest.mark.parametrize("frames,why", [
    ([], "empty"),
    ([b"garbage"], "header of 7 bytes"),
    ([b"XX" + bytes(HEADER_SIZE - 2)], "bad magic"),
    ([b"SG\x09" + bytes(HEADER_SIZE - 3)], "protocol version 9"),
    ([b"SG\x01\xff" + bytes(HEADER_SIZE - 4)], "unknown message type 255"),
])
def test_foreign_frames_raise_msgerror(frames, why):
    with pytest.raises(MsgError, match=why):
        Msg.from_frames(frames)


def test_bad_array_frame_is_a_msgerror():
    m = Msg.from_frames([Msg(Addr.worker(0, 0), Addr.server(0, 0), c.kUpdate).header(), b"abc"])
    with pytest.raises(MsgError, match="not a float32 array"):
        m.array(0)
