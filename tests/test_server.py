"""Server (runtime/ps/server.py): the put/get/update/sync protocol through `handle`, and `run`.

Plain SGD with a fixed learning rate of 0.5 and small integer gradients, so
every expected value is exact in float32 and worked out by hand (or by the
one-line SGD rule in float64) in the test.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq
from google.protobuf import text_format

from conf import common_pb2 as pb
from conf import job_pb2
from runtime.cluster import Cluster
from runtime.comm.msg import Addr, Msg, put_meta, update_meta
from runtime.errors import UserError
from runtime.model.updater import create_updater
from runtime.ps.param_slice import SlicePlan
from runtime.ps.server import Server

LR = 0.5


def sgd(extra: str = ""):
    return create_updater(text_format.Parse(
        f"type: kSGD {extra} learning_rate {{ type: kFixed base_lr: {LR} }}", job_pb2.UpdaterProto()))


def f32(*xs) -> np.ndarray:
    return np.array(xs, dtype=np.float32)


def put(src, dst, pid, sid, values, num_total=1, version=0, lr_scale=1.0, wd_scale=1.0) -> Msg:
    return (Msg(src, dst, pb.kPut, pid, sid, version).add_array(np.asarray(values, np.float32))
            .add_bytes(put_meta(num_total, lr_scale, wd_scale)))


def update(src, dst, pid, sid, grad, step, base, num_update=1) -> Msg:
    return (Msg(src, dst, pb.kUpdate, pid, sid, step).add_array(np.asarray(grad, np.float32))
            .add_bytes(update_meta(num_update, base)))


def get(src, dst, pid, sid, version) -> Msg:
    return Msg(src, dst, pb.kGet, pid, sid, version)


def one_slice(num_total=1, values=(1, 2, 3, 4), **cluster):
    """A server holding one param of 4 values as slice 0, already put."""
    plan = SlicePlan([("w", 4)], Cluster(**cluster))
    s = Server(0, 0, sgd(), plan)
    assert s.handle(put(Addr.worker(0, 0), s.addr, 0, 0, values, num_total)) == []
    return s


def summary(msgs):
    return [(m.type, m.dst, m.version, m.array(0).tolist() if m.frames else None) for m in msgs]


# ------------------------------------------------ exact protocol (ps-lite) ---
def test_one_group_of_workers_gives_exactly_the_averaged_sgd():
    """4 workers of one group x 3 steps of known grads on a param sliced over 2 servers."""
    plan = SlicePlan([("w", 6), ("b", 2)], Cluster(nworkers_per_group=4, nservers_per_group=2))
    servers = {Addr.server(0, k): Server(0, k, sgd(), plan) for k in range(2)}
    w0 = {"w": np.arange(6, dtype=np.float64), "b": np.array([10.0, -10.0])}
    for name, values in w0.items():
        for sl, part in zip(plan.slices_of(name), plan.split(name, values.astype(np.float32))):
            dst = plan.server_of(sl.id, 0)
            assert servers[dst].handle(put(Addr.worker(0, 0), dst, sl.param, sl.id, part, 4)) == []
    expected = {k: v.copy() for k, v in w0.items()}
    nworkers, steps = 4, 3
    for step in range(steps):
        replies = []
        for w in range(nworkers):
            src = Addr.worker(0, w)
            for name in ("w", "b"):
                grad = np.full(plan.sizes[plan.param_id(name)], (w + 1) * (step + 1), np.float32)
                grad[0] += w  # not all equal, so the sum's order of workers shows
                for sl, part in zip(plan.slices_of(name), plan.split(name, grad)):
                    dst = plan.server_of(sl.id, 0)
                    replies += servers[dst].handle(update(src, dst, sl.param, sl.id, part, step, step))
            # nothing is applied before the last worker of the group reports
            assert (replies == []) == (w < nworkers - 1)
        for name in ("w", "b"):  # w -= lr * mean over workers of the grads
            g = sum(np.full_like(expected[name], (w + 1) * (step + 1)) for w in range(nworkers))
            g[0] += sum(range(nworkers))
            expected[name] -= LR * g / nworkers
        # every worker gets a kRUpdate for every slice, at version step + 1
        assert len(replies) == nworkers * len(plan.slices)
        assert {(m.type, m.version) for m in replies} == {(pb.kRUpdate, step + 1)}
        for w in range(nworkers):
            for name in ("w", "b"):
                parts = [next(m.array(0) for m in replies
                              if m.dst == Addr.worker(0, w) and m.slice == sl.id)
                         for sl in plan.slices_of(name)]
                np.testing.assert_array_equal(plan.assemble(name, parts), expected[name])
    # by hand for b: sum over workers of the grads is 10 (step + 1), plus 6 on b[0]
    assert expected["b"].tolist() == [10 - LR * (10 + 20 + 30 + 3 * 6) / 4, -10 - LR * (10 + 20 + 30) / 4]
    for s in servers.values():
        assert s.stats()["groups"] == {0: {"updates": steps * len(plan.slices_on(s.sid)),
                                           "mean_staleness": 0.0, "max_staleness": 0}}


def test_num_update_counts_replicas_a_stub_has_summed():
    s = one_slice(num_total=3)
    src = Addr(0, 0, pb.kStub)
    # a stub sums 2 local replicas (num_update 2), a worker elsewhere sends 1
    assert s.handle(update(src, s.addr, 0, 0, [2, 2, 2, 2], step=0, base=0, num_update=2)) == []
    out = s.handle(update(Addr.worker(0, 2), s.addr, 0, 0, [4, 4, 4, 4], 0, 0))
    # w -= 0.5 * (2 + 4) / 3 = 1
    assert summary(out) == [(pb.kRUpdate, src, 1, [0, 1, 2, 3]),
                            (pb.kRUpdate, Addr.worker(0, 2), 1, [0, 1, 2, 3])]


def test_two_worker_groups_update_asynchronously():
    """Downpour: 2 groups of 2 workers, one server; each group's update is applied on its own."""
    s = one_slice(num_total=2, values=(0, 0, 0, 0), nworker_groups=2, nworkers_per_group=2)
    g0w0, g0w1, g1w0, g1w1 = (Addr.worker(g, w) for g in (0, 1) for w in (0, 1))
    # both groups computed on version 0; group 0's first worker reports first
    assert s.handle(update(g0w0, s.addr, 0, 0, [4, 0, 0, 0], 0, 0)) == []
    assert s.handle(update(g1w0, s.addr, 0, 0, [0, 8, 0, 0], 0, 0)) == []
    out = s.handle(update(g1w1, s.addr, 0, 0, [0, 0, 4, 0], 0, 0))
    # group 1 alone: w -= 0.5 * [0, 8, 4, 0] / 2
    assert summary(out) == [(pb.kRUpdate, g1w0, 1, [0, -2, -1, 0]),
                            (pb.kRUpdate, g1w1, 1, [0, -2, -1, 0])]
    out = s.handle(update(g0w1, s.addr, 0, 0, [0, 0, 0, 8], 0, 0))
    # then group 0 on top, one version later: its update was 1 version stale
    assert summary(out) == [(pb.kRUpdate, g0w0, 2, [-1, -2, -1, -2]),
                            (pb.kRUpdate, g0w1, 2, [-1, -2, -1, -2])]
    # group 1 computes on v1 while group 0 moves on twice (v2 -> v3 -> v4)
    for step in (1, 2):
        s.handle(update(g0w0, s.addr, 0, 0, [0, 0, 0, 0], step, step + 1))
        s.handle(update(g0w1, s.addr, 0, 0, [0, 0, 0, 0], step, step + 1))
    s.handle(update(g1w0, s.addr, 0, 0, [0, 0, 0, 0], 1, 1))
    out = s.handle(update(g1w1, s.addr, 0, 0, [0, 0, 0, 0], 1, 1))
    assert {m.version for m in out} == {5}
    st = s.stats()
    assert st["updates"] == 5
    assert st["groups"] == {0: {"updates": 3, "mean_staleness": 1 / 3, "max_staleness": 1},
                            1: {"updates": 2, "mean_staleness": 1.5, "max_staleness": 3}}


def test_update_without_base_version_has_no_staleness():
    s = one_slice()
    m = Msg(Addr.worker(0, 0), s.addr, pb.kUpdate, 0, 0, 0).add_array(f32(2, 2, 2, 2))
    m.add_bytes((1).to_bytes(4, "little"))  # the short meta "<i": num_update only
    assert summary(s.handle(m)) == [(pb.kRUpdate, Addr.worker(0, 0), 1, [0, 1, 2, 3])]
    assert s.stats()["updates"] == 1 and s.stats()["groups"] == {}


def test_lr_and_wd_scale_from_the_put():
    plan = SlicePlan([("w", 2)], Cluster())
    s = Server(0, 0, sgd("weight_decay: 0.5"), plan)
    s.handle(put(Addr.worker(0, 0), s.addr, 0, 0, [4, 8], lr_scale=2.0, wd_scale=0.5))
    out = s.handle(update(Addr.worker(0, 0), s.addr, 0, 0, [1, 0], 0, 0))
    # lr = 0.5*2 = 1, wd = 0.5*0.5 = 0.25: w -= 1 * (g + 0.25 w)
    assert out[0].array(0).tolist() == [4 - (1 + 1), 8 - 2]


# --------------------------------------------------------- held messages ---
def test_get_waits_for_the_version_it_asks_for():
    s = one_slice()
    reader, writer = Addr.worker(0, 1), Addr.worker(0, 0)
    assert summary(s.handle(get(reader, s.addr, 0, 0, 0))) == [(pb.kRGet, reader, 0, [1, 2, 3, 4])]
    assert s.handle(get(reader, s.addr, 0, 0, 1)) == []
    assert s.handle(get(reader, s.addr, 0, 0, 2)) == []
    assert s.stats()["held"] == 2
    out = s.handle(update(writer, s.addr, 0, 0, [2, 2, 2, 2], 0, 0))
    assert summary(out) == [(pb.kRUpdate, writer, 1, [0, 1, 2, 3]),
                            (pb.kRGet, reader, 1, [0, 1, 2, 3])]
    out = s.handle(update(writer, s.addr, 0, 0, [2, 2, 2, 2], 1, 1))
    assert summary(out)[1] == (pb.kRGet, reader, 2, [-1, 0, 1, 2])
    assert s.stats()["held"] == 0


def test_messages_before_the_put_are_held_until_it():
    plan = SlicePlan([("w", 2)], Cluster())
    s = Server(0, 0, sgd(), plan)
    wk = Addr.worker(0, 0)
    assert s.handle(update(wk, s.addr, 0, 0, [2, 4], 5, 3)) == []
    assert s.handle(get(Addr.worker(0, 1), s.addr, 0, 0, 3)) == []
    assert s.stats()["held"] == 2
    out = s.handle(put(wk, s.addr, 0, 0, [1, 1], version=3))
    # the held update is applied (v3 -> v4), then the held Get answered
    assert summary(out) == [(pb.kRUpdate, wk, 4, [0, -1]),
                            (pb.kRGet, Addr.worker(0, 1), 4, [0, -1])]
    assert s.stats()["held"] == 0


def test_second_put_is_ignored():
    s = one_slice()
    assert s.handle(put(Addr.worker(1, 0), s.addr, 0, 0, [9, 9, 9, 9], version=7)) == []
    assert summary(s.handle(get(Addr.worker(0, 0), s.addr, 0, 0, 0))) == [
        (pb.kRGet, Addr.worker(0, 0), 0, [1, 2, 3, 4])]
    assert s.stats()["ignored_puts"] == 1


def test_replies_carry_a_copy_not_the_live_values():
    s = one_slice()
    first = s.handle(get(Addr.worker(0, 0), s.addr, 0, 0, 0))[0]
    s.handle(update(Addr.worker(0, 0), s.addr, 0, 0, [2, 2, 2, 2], 0, 0))
    assert first.array(0).tolist() == [1, 2, 3, 4]


# -------------------------------------------------- server-group sync ---
def hogwild(sync_freq):
    """Two server groups of one server each; param w of 4 values in 2 slices:
    slice 0 = w[0:2] mastered by group 0, slice 1 = w[2:4] by group 1."""
    c = Cluster(nworker_groups=2, nserver_groups=2, sync_freq=sync_freq)
    plan = SlicePlan([("w", 4)], c)
    assert [(sl.offset, sl.size, sl.server, sl.group) for sl in plan.slices] == [
        (0, 2, 0, 0), (2, 2, 0, 1)]
    a, b = Server(0, 0, sgd(), plan), Server(1, 0, sgd(), plan)
    for srv, wg in ((a, 0), (b, 1)):
        for sl in plan.slices:
            srv.handle(put(Addr.worker(wg, 0), srv.addr, 0, sl.id, [1, 2, 3, 4][sl.offset:sl.offset + 2]))
    return a, b


def values(server, sid):
    return server.handle(get(Addr.worker(9, 9), server.addr, 0, sid, 0))[0].array(0).tolist()


def only(msgs, mtype):
    return [m for m in msgs if m.type == mtype]


def test_hogwild_sync_every_update():
    a, b = hogwild(sync_freq=1)
    wa, wb = Addr.worker(0, 0), Addr.worker(1, 0)
    # group 0 updates slice 1 on its server A: A is not slice 1's master, so it syncs
    out = a.handle(update(wa, a.addr, 0, 1, [2, 4], 0, 0))        # A: [3,4] -> [2,2]
    (req1,) = only(out, pb.kSyncRequest)
    assert (req1.src, req1.dst, req1.slice) == (a.addr, b.addr, 1)
    assert req1.array(0).tolist() == [-1, -2]                      # delta = cur - last_sync
    # group 1 updates slice 1 on B, its master: no sync
    assert only(b.handle(update(wb, b.addr, 0, 1, [4, 8], 0, 0)), pb.kSyncRequest) == []  # B: [1,0]
    (resp1,) = b.handle(req1)                                      # B: [1,0] + [-1,-2]
    assert (resp1.type, resp1.dst, resp1.array(0).tolist()) == (pb.kSyncResponse, a.addr, [0, -2])
    # A updates again before the response arrives: a second request goes out
    out = a.handle(update(wa, a.addr, 0, 1, [1, 1], 1, 1))        # A: [1.5, 1.5]
    (req2,) = only(out, pb.kSyncRequest)
    assert req2.array(0).tolist() == [-0.5, -0.5]
    assert a.handle(resp1) == []
    # cur = master + changes since the request (none: req2 already took them)
    assert values(a, 1) == [0, -2]
    (resp2,) = b.handle(req2)
    assert resp2.array(0).tolist() == [-0.5, -2.5]
    a.handle(resp2)
    # both replicas now hold w0 - lr * (all of groups 0's and 1's grads)
    expected = [3 - LR * (2 + 4 + 1), 4 - LR * (4 + 8 + 1)]
    assert values(a, 1) == values(b, 1) == expected
    # and the other way round for slice 0, mastered by group 0
    (req,) = only(b.handle(update(wb, b.addr, 0, 0, [2, 2], 1, 1)), pb.kSyncRequest)
    assert req.dst == a.addr
    (resp,) = a.handle(req)
    b.handle(resp)
    assert values(a, 0) == values(b, 0) == [0, 1]
    assert a.stats()["sync_sent"] == 2 and a.stats()["sync_applied"] == 2
    assert a.stats()["sync_served"] == 1 and b.stats()["sync_served"] == 2


def test_hogwild_sync_freq_keeps_local_changes_made_after_the_request():
    a, b = hogwild(sync_freq=2)
    wa = Addr.worker(0, 0)
    assert only(a.handle(update(wa, a.addr, 0, 1, [2, 2], 0, 0)), pb.kSyncRequest) == []  # [2, 3]
    (req,) = only(a.handle(update(wa, a.addr, 0, 1, [2, 2], 1, 1)), pb.kSyncRequest)      # [1, 2]
    assert req.array(0).tolist() == [-2, -2]
    a.handle(update(wa, a.addr, 0, 1, [4, 0], 2, 2))              # [-1, 2]: a local change of [-2, 0]
    b.handle(update(Addr.worker(1, 0), b.addr, 0, 1, [8, 8], 0, 0))  # master: [3,4] -> [-1, 0]
    (resp,) = b.handle(req)                                        # master: [-3, -2]
    a.handle(resp)
    # cur = master + (cur - last_sync) = [-3, -2] + [-2, 0]
    assert values(a, 1) == [-5, -2]
    assert values(b, 1) == [-3, -2]


def test_master_slices_never_sync():
    a, _ = hogwild(sync_freq=1)
    out = a.handle(update(Addr.worker(0, 0), a.addr, 0, 0, [2, 2], 0, 0))
    assert [m.type for m in out] == [pb.kRUpdate]


# ---------------------------------------------------- bad input is dropped ---
@pytest.mark.parametrize("make,why", [
    (lambda s: get(Addr.worker(0, 0), Addr.server(0, 1), 0, 0, 0), "not to this server"),
    (lambda s: get(Addr.worker(0, 0), s.addr, 0, 7, 0), "slice 7 is not in the plan"),
    (lambda s: get(Addr.worker(0, 0), s.addr, 3, 0, 0), "belongs to param 0, not 3"),
    (lambda s: update(Addr.worker(0, 0), s.addr, 0, 0, [1, 2], 0, 0), "grad of 2 values, expected 4"),
    (lambda s: Msg(Addr.worker(0, 0), s.addr, pb.kUpdate, 0, 0, 0).add_array(f32(1, 1, 1, 1)),
     "index out of range"),
    (lambda s: Msg(Addr.worker(0, 0), s.addr, pb.kUpdate, 0, 0, 0).add_array(f32(1, 1, 1, 1))
     .add_bytes(b"\x01\x02"), "unpack requires"),
    (lambda s: Msg(Addr.worker(0, 0), s.addr, pb.kData), "kData is not a server message"),
    (lambda s: Msg(Addr.worker(0, 0), s.addr, pb.kUpdate, 0, 0, 0).add_bytes(b"abc")
     .add_bytes(update_meta(1, 0)), "not a float32 array"),
])
def test_bad_messages_are_logged_and_dropped(make, why, caplog):
    s = one_slice()
    assert s.handle(make(s)) == []
    assert why in caplog.text
    assert s.stats()["dropped"] == 1
    # nothing was changed or left behind
    assert summary(s.handle(get(Addr.worker(0, 0), s.addr, 0, 0, 0)))[0][2:] == (0, [1, 2, 3, 4])
    assert s.stats()["held"] == 0


def test_a_slice_of_another_server_is_refused():
    plan = SlicePlan([("w", 6), ("b", 2)], Cluster(nservers_per_group=2))
    s = Server(0, 0, sgd(), plan)
    assert s.handle(put(Addr.worker(0, 0), s.addr, 1, 2, [1, 1])) == []
    assert s.stats()["dropped"] == 1 and s.stats()["slices"] == 0
    with pytest.raises(ValueError, match=r"server \(0, 2\) is not in this cluster \(1 groups of 2\)"):
        Server(0, 2, sgd(), plan)


# ------------------------------------------------------------ checkpoint ---
def test_state_round_trip_continues_exactly():
    plan = SlicePlan([("w", 4)], Cluster(nworker_groups=2, nserver_groups=2))
    s = Server(1, 0, sgd("momentum: 0.5"), plan)
    for sl in plan.slices:
        s.handle(put(Addr.worker(1, 0), s.addr, 0, sl.id, [1, 2], num_total=1, lr_scale=2.0))
    wk = Addr.worker(1, 0)
    for step in range(2):
        for sl in plan.slices:
            s.handle(update(wk, s.addr, 0, sl.id, [1, 3], step, step))
    st = s.state()
    assert sorted(st) == ["data/0:0", "data/0:1", "last_sync/0:0", "meta/0:0", "meta/0:1",
                          "updater/0:0/history", "updater/0:1/history",
                          "version/0:0", "version/0:1"]
    assert st["meta/0:0"].tolist() == [1, 2, 1] and st["version/0:1"].tolist() == [2]
    t = Server(1, 0, sgd("momentum: 0.5"), plan)
    t.load_state(st)
    assert {k: v.tolist() for k, v in t.state().items()} == {k: v.tolist() for k, v in st.items()}
    for srv in (s, t):
        out = [srv.handle(update(wk, srv.addr, 0, sl.id, [1, 3], 2, 2)) for sl in plan.slices]
        assert [m.version for m in out[1]] == [3]
    assert values(s, 0) == values(t, 0) and values(s, 1) == values(t, 1)


def test_load_state_refuses_another_slicing():
    s = one_slice()
    other = Server(0, 0, sgd(), SlicePlan([("w", 6)], Cluster()))
    with pytest.raises(UserError, match="slice '0:0' of 4 values does not match.*6 values"):
        other.load_state(s.state())
    with pytest.raises(UserError, match="unknown entry 'junk'"):
        other.load_state({"junk": np.zeros(1)})


# ------------------------------------------------------------------- run ---
def test_run_serves_a_dealer_survives_garbage_and_stops():
    ctx = zmq.Context.instance()
    stub = ctx.socket(zmq.ROUTER)
    stub.bind("inproc://test-server-run")
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"server-0-0")
    sock.connect("inproc://test-server-run")
    plan = SlicePlan([("w", 4)], Cluster(poll_time=10))
    s = Server(0, 0, sgd(), plan)
    thread = threading.Thread(target=s.run, args=(sock,), daemon=True)
    thread.start()
    try:
        def send(frames):
            stub.send_multipart([b"server-0-0", *frames])

        def recv() -> Msg:
            assert stub.poll(5000), "no reply from the server"
            ident, *frames = stub.recv_multipart()
            assert ident == b"server-0-0"
            return Msg.from_frames(frames)

        wk = Addr.worker(0, 0)
        send([b"not a message"])
        send([b"SG" + bytes(30)])
        send(put(wk, s.addr, 0, 0, [1, 2, 3, 4]).to_frames())
        send(get(wk, s.addr, 0, 0, 0).to_frames())
        reply = recv()
        assert (reply.type, reply.dst, reply.array(0).tolist()) == (pb.kRGet, wk, [1, 2, 3, 4])
        send(update(wk, s.addr, 0, 0, [2, 2, 2, 2], 0, 0).to_frames())
        reply = recv()
        assert (reply.type, reply.version, reply.array(0).tolist()) == (pb.kRUpdate, 1, [0, 1, 2, 3])
        send(Msg(Addr.stub(0), s.addr, pb.kStop).to_frames())
        ack = recv()
        assert (ack.type, ack.src, ack.dst) == (pb.kStop, s.addr, Addr.stub(0))
        thread.join(5)
        assert not thread.is_alive()
        assert s.stats()["dropped"] == 2 and s.stats()["updates"] == 1
    finally:
        s.request_stop()
        thread.join(5)
        sock.close(0)
        stub.close(0)


def test_run_on_a_router_answers_the_peer_and_request_stop_ends_it():
    ctx = zmq.Context.instance()
    sock, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    sock.bind("inproc://test-server-router")
    client.connect("inproc://test-server-router")
    s = Server(0, 0, sgd(), SlicePlan([("w", 4)], Cluster(poll_time=10)))
    thread = threading.Thread(target=s.run, args=(sock,), daemon=True)
    thread.start()
    try:
        wk = Addr.worker(0, 0)
        client.send_multipart(put(wk, s.addr, 0, 0, [1, 2, 3, 4]).to_frames())
        client.send_multipart(get(wk, s.addr, 0, 0, 0).to_frames())
        assert client.poll(5000), "no reply from the server"
        reply = Msg.from_frames(client.recv_multipart())
        assert (reply.type, reply.dst, reply.array(0).tolist()) == (pb.kRGet, wk, [1, 2, 3, 4])
        s.request_stop()
        thread.join(5)
        assert not thread.is_alive()
    finally:
        s.request_stop()
        thread.join(5)
        sock.close(0)
        client.close(0)
