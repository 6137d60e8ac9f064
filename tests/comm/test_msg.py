"""Msg: header round trip, arrays without copies, foreign frames rejected."""
import struct

import numpy as np
import pytest

from conf import common_pb2 as c
from runtime.comm.msg import (
    HEADER_SIZE,
    Addr,
    Header,
    Msg,
    MsgError,
    aux_meta,
    parse_header,
    put_meta,
    read_aux_meta,
    read_put_meta,
    read_update_meta,
    update_meta,
)


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


def _update(param: int, *arrays: np.ndarray) -> Msg:
    m = Msg(Addr.worker(0, 1), Addr.server(0, 0), c.kUpdate, param=param, slice=0, version=param * 10)
    for a in arrays:
        m.add_array(a)
    return m


def test_an_envelope_splits_back_into_its_messages_in_order():
    from runtime.comm.msg import envelope

    a, b, d = (np.full(3, v, np.float32) for v in (1, 2, 3))
    msgs = [_update(1, a), _update(2, b, d), _update(3, d)]
    frames = [bytes(f) for f in envelope(msgs)]
    assert len(frames) == 3 + 4  # a header and its bodies per message
    back = Msg.all_from_frames(frames)
    assert [(m.param, m.version, len(m.frames)) for m in back] == [(1, 10, 1), (2, 20, 2), (3, 30, 1)]
    assert back[1].array(1).tolist() == [3, 3, 3]
    # a single message is an envelope of one, and from_frames still reads it
    assert Msg.from_frames(envelope(msgs[:1])).param == 1


def test_an_envelope_read_as_one_message_or_cut_short_is_a_msgerror():
    from runtime.comm.msg import envelope, split

    frames = envelope([_update(1, np.ones(2, np.float32)), _update(2, np.ones(2, np.float32))])
    with pytest.raises(MsgError, match="header counts 1 body frames, 3 follow"):
        Msg.from_frames(frames)
    m = _update(4, *(np.ones(1, np.float32) for _ in range(3)))
    with pytest.raises(MsgError, match="counts 3 body frames, 1 follow"):
        split(m.to_frames()[:2])


def test_a_message_of_more_than_255_frames_counts_zero_and_takes_the_rest():
    from runtime.comm.msg import envelope, parse_header

    m = _update(5, *(np.full(1, i, np.float32) for i in range(300)))
    frames = m.to_frames()
    assert parse_header(frames[0])[-1] == 0
    back = Msg.from_frames(frames)
    assert len(back.frames) == 300 and back.array(299)[0] == 299
    with pytest.raises(ValueError, match="1 to 255 body frames"):
        envelope([m, _update(6, np.ones(1, np.float32))])


def test_the_header_reads_by_name_and_its_bytes_are_the_v1_layout():
    m = Msg(Addr.worker(1, 2), Addr.server(3, 4), c.kUpdate, param=5, slice=6, version=7).add_bytes(b"x")
    head = m.header()
    # magic, protocol, type, src (grp, id, kind), dst (grp, id, kind), body frames, param, slice, version
    assert head == struct.pack("<2sBB hhB hhB B iii", b"SG", 1, c.kUpdate, 1, 2, c.kWorkerParam,
                               3, 4, c.kServer, 1, 5, 6, 7)
    h = parse_header(head)
    assert isinstance(h, Header)
    assert (h.type, h.src_grp, h.src_id, h.src_kind, h.dst_grp, h.dst_id, h.dst_kind,
            h.param, h.slice, h.version, h.nbody) == (c.kUpdate, 1, 2, c.kWorkerParam, 3, 4,
                                                      c.kServer, 5, 6, 7, 1)


def test_meta_frames_round_trip():
    assert put_meta(3, 0.5, 2.0) == struct.pack("<iff", 3, 0.5, 2.0)
    assert read_put_meta(put_meta(3, 0.5, 2.0)) == (3, 0.5, 2.0)
    assert update_meta(2, 9) == struct.pack("<ii", 2, 9)
    assert read_update_meta(update_meta(2, 9)) == (2, 9)
    assert read_update_meta(struct.pack("<i", 4)) == (4, None)  # num_update only: no staleness
    with pytest.raises(struct.error):
        read_update_meta(b"abc")
    aux = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert aux_meta(aux) == b"<i4:2,3"
    assert read_aux_meta(aux_meta(aux)) == (np.dtype(np.int32), (2, 3))
