"""Checkpoint files: SINGA's BlobProtos bytes, the resume state, the latest
step, and the checksums that refuse a damaged file."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conf import common_pb2
from runtime import checkpoint
from runtime.errors import UserError
from runtime.train.trigger import Trigger


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


# ------------------------------------------------------------ checksums ---
def _big_checkpoint(ws: str, step: int = 10) -> Path:
    w = np.random.default_rng(0).standard_normal((100, 40)).astype(np.float32)  # 16000 bytes
    return checkpoint.save(ws, step, 0, [("w", step, w), ("b", step, np.zeros(40, np.float32))],
                           {"meta": {"step": step}, "arrays": {"w/history": np.ones(4000, np.float32)}})


def corrupt_middle(path: Path, n: int = 5000) -> None:
    """Overwrite `n` bytes in the middle of `path` with random ones."""
    data = bytearray(path.read_bytes())
    assert len(data) > n
    start = (len(data) - n) // 2
    data[start:start + n] = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _one_line_error(fn, *args) -> str:
    with pytest.raises(UserError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_every_checkpoint_file_has_a_checksum_sidecar(tmp_path):
    path = _big_checkpoint(str(tmp_path))
    for f in (path, Path(str(path) + ".resume")):
        rec = json.loads(checkpoint.checksum_path(f).read_text())
        assert rec["size"] == f.stat().st_size and len(rec["sha256"]) == 64
    # the params file itself is still SINGA's plain BlobProtos
    assert list(common_pb2.BlobProtos.FromString(path.read_bytes()).name) == ["w", "b"]


def test_corrupt_params_checkpoint_is_refused(tmp_path):
    path = _big_checkpoint(str(tmp_path))
    corrupt_middle(path)
    msg = _one_line_error(checkpoint.load, [str(path)])
    assert msg.startswith(f"checkpoint {path}: checksum mismatch (file was changed or damaged "
                          "after it was written); ")


def test_truncated_files_are_refused(tmp_path):
    path = _big_checkpoint(str(tmp_path))
    resume = Path(str(path) + ".resume")
    size = resume.stat().st_size
    with open(resume, "r+b") as f:
        f.truncate(size // 2)
    msg = _one_line_error(checkpoint.load_resume_state, str(path))
    assert msg.startswith(f"checkpoint {resume}: truncated: {size // 2} of the {size} bytes written")
    with open(path, "r+b") as f:
        f.truncate(100)
    assert ": truncated: 100 of the " in _one_line_error(checkpoint.load, [str(path)])


def test_corrupt_server_state_is_refused(tmp_path):
    path = checkpoint.server_state_path(str(tmp_path), 10, 0, 0)
    checkpoint.save_arrays(path, {"data/w": np.arange(4000, dtype=np.float32)})
    assert checkpoint.load_arrays(path)["data/w"][3999] == 3999
    corrupt_middle(path)
    assert "checksum mismatch" in _one_line_error(checkpoint.load_arrays, path)
    # a state file without its checksum is not trusted either (SINGA writes none)
    checkpoint.save_arrays(path, {"data/w": np.zeros(3, np.float32)})
    checkpoint.checksum_path(path).unlink()
    assert "no checksum file step10-server0.0.npz.sha256" in _one_line_error(
        checkpoint.load_arrays, path)


def test_singa_cpp_checkpoint_without_sidecar_loads(tmp_path):
    """SINGA v0.3 writes BlobProtos with no checksum: named in checkpoint_path
    it loads, and a workspace of them resumes."""
    msg = common_pb2.BlobProtos(name=["w"], version=[6000])
    msg.blob.add(shape=[2], data=[1.0, 2.0])
    d = tmp_path / "checkpoint"
    d.mkdir()
    (d / "step6000-worker0").write_bytes(msg.SerializeToString())
    assert checkpoint.load([str(d / "step6000-worker0")])["w"][1].tolist() == [1.0, 2.0]
    assert checkpoint.latest(str(tmp_path)) == (6000, [str(d / "step6000-worker0")])
    assert checkpoint.load_resume_state(str(d / "step6000-worker0")) is None


def test_latest_skips_a_singa_step_without_its_checksum(tmp_path, caplog):
    _big_checkpoint(str(tmp_path), 10)
    last = _big_checkpoint(str(tmp_path), 20)
    checkpoint.checksum_path(last).unlink()  # as if lost: the step cannot be verified
    assert checkpoint.latest(str(tmp_path))[0] == 10
    assert f"checkpoint {last}: no checksum file step20-worker0.sha256" in caplog.text


def test_a_crash_while_replacing_a_checkpoint_keeps_the_old_one_loadable(tmp_path, monkeypatch):
    """Rewriting step N (a resumed run checkpoints its first step again): a
    crash after the new sidecar is in place but before the data is renamed
    leaves the old data, which must still load; damage is still refused."""
    ws = str(tmp_path)
    path = checkpoint.save(ws, 10, 0, [("w", 10, np.ones(3, np.float32))])
    real = os.replace

    def crash_on_data(src, dst):
        if str(dst) == str(path):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_data)
    with pytest.raises(UserError):
        checkpoint.save(ws, 10, 0, [("w", 11, np.full(3, 2, np.float32))])
    monkeypatch.setattr(os, "replace", real)
    assert checkpoint.load([str(path)])["w"][1].tolist() == [1, 1, 1]
    corrupt_middle(path, 4)
    assert "checksum mismatch" in _one_line_error(checkpoint.load, [str(path)])
    # a completed rewrite: the new content loads, the old one no longer would
    checkpoint.save(ws, 10, 0, [("w", 12, np.full(3, 3, np.float32))])
    assert checkpoint.load([str(path)])["w"][1].tolist() == [3, 3, 3]
    assert "previous" not in json.loads(checkpoint.checksum_path(path).read_text())


def test_a_file_replaced_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    """Another process rewrites the checkpoint between our read of its data
    and of its sidecar: the reader tries again instead of refusing it."""
    ws = str(tmp_path)
    path = checkpoint.save(ws, 10, 0, [("w", 10, np.ones(3, np.float32))])
    real = Path.read_bytes
    calls = []

    def read_then_rewrite(self):
        data = real(self)
        if self == path and not calls:
            calls.append(1)
            monkeypatch.setattr(Path, "read_bytes", real)
            checkpoint.save(ws, 10, 0, [("w", 11, np.full(3, 2, np.float32))])
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_rewrite)
    assert checkpoint.load([str(path)])["w"][1].tolist() == [2, 2, 2]
