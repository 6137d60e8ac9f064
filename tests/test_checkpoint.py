"""Checkpoint files: SINGA's BlobProtos bytes, the resume state, the latest step."""
import numpy as np

from conf import common_pb2
from runtime import checkpoint
from runtime.trigger import Trigger


def test_encoding_is_plain_blobprotos():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = checkpoint.encode([("w", 7, w), ("b", 2, np.array([0.5], np.float32))])
    msg = common_pb2.BlobProtos.FromString(data)  # what SINGA would read
    assert list(msg.name) == ["w", "b"] and list(msg.version) == [7, 2]
    assert list(msg.blob[0].shape) == [2, 3] and list(msg.blob[0].data) == list(range(6))
    back = checkpoint.decode(data)
    assert back["w"][0] == 7 and np.array_equal(back["w"][1], w)


def test_decode_reads_protobuf_written_files():
    msg = common_pb2.BlobProtos(name=["x"], version=[3])
    msg.blob.add(shape=[2], data=[1.0, 2.0])
    assert checkpoint.decode(msg.SerializeToString())["x"][1].tolist() == [1.0, 2.0]


def test_save_latest_and_resume_state(tmp_path):
    ws = str(tmp_path)
    for step in (10, 20):
        checkpoint.save(ws, step, 0, [("w", step, np.full(3, step, np.float32))],
                        {"meta": {"step": step}, "arrays": {"w/history": np.ones(3, np.float32)}})
    step, files = checkpoint.latest(ws)
    assert step == 20 and files == [str(tmp_path / "checkpoint" / "step20-worker0")]
    assert checkpoint.load(files)["w"][1].tolist() == [20, 20, 20]
    st = checkpoint.load_resume_state(files[0])
    assert st["meta"] == {"step": 20} and st["arrays"]["w/history"].tolist() == [1, 1, 1]


def test_later_checkpoint_overrides_earlier(tmp_path):
    a = checkpoint.save(str(tmp_path), 1, 0, [("w", 1, np.zeros(2, np.float32))])
    b = checkpoint.save(str(tmp_path), 2, 0, [("w", 2, np.ones(2, np.float32))])
    assert checkpoint.load([str(a), str(b)])["w"][1].tolist() == [1, 1]


def test_trigger_fires_at_step_zero_and_after():
    t = Trigger(60, 0)
    assert [s for s in range(130) if t(s)] == [0, 60, 120]
    assert [s for s in range(30) if Trigger(10, 15)(s)] == [15, 25]
    assert not any(Trigger(0, 0)(s) for s in range(10))
