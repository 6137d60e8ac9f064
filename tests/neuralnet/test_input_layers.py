"""Input layers reading real small files: RecordInput and CSVInput (mean/std,
wrap-around, random_skip, prefetching, exact resume, errors), the v0.1
ShardData -> Mnist/Label/RGBImage chain, and ImagePreprocess."""
from __future__ import annotations

import numpy as np
import pytest

from conf import common_pb2, job_pb2
from runtime.errors import LayerError, UserError
from runtime.io.store import open_store
from tests.neuralnet.harness import TRAIN, Source, make

TEST = job_pb2.kTest | job_pb2.kForward
DEPLOY = job_pb2.kTest | job_pb2.kDeploy


def write_records(path, n: int, shape=(2, 3), pixels=True, wrap=False):
    """n records; record i has label i and values i*10 + arange(size)."""
    size = int(np.prod(shape))
    with open_store(path, "kvfile", "w") as store:
        for i in range(n):
            values = (i * 10 + np.arange(size)) % 256
            rec = common_pb2.RecordProto(shape=shape, label=i)
            if pixels:
                rec.pixel = values.astype(np.uint8).tobytes()
            else:
                rec.data.extend(values.astype(np.float32) + 0.5)
            value = common_pb2.Record(image=rec) if wrap else rec
            store.write(b"%05d" % i, value.SerializeToString())
    return path


def record_input(path, batch=2, shape=(2, 3), extra="", seed=0, backend=""):
    shape_text = " ".join(f"shape: {s}" for s in shape)
    backend_text = f'backend: "{backend}"' if backend else ""
    layer, _ = make(f'type: kRecordInput store_conf {{path: "{path}" batchsize: {batch} '
                    f'{shape_text} {backend_text} {extra}}}', [], name="data", seed=seed)
    return layer


def labels_of(layer, steps, flag=TRAIN):
    out = []
    for _ in range(steps):
        layer.compute_feature(flag, [])
        out.append(layer.aux_data.tolist())
    return out


# ---------------------------------------------------------- RecordInput ----
def test_record_input_reads_pixels_and_labels(tmp_path):
    path = write_records(tmp_path / "train.bin", 3)
    layer = record_input(path)
    assert layer.is_input and layer.shape == (2, 2, 3)
    layer.compute_feature(TRAIN, [])
    assert layer.data.dtype == np.float32 and layer.data.shape == (2, 2, 3)
    np.testing.assert_array_equal(layer.data[1].ravel(), 10 + np.arange(6))
    np.testing.assert_array_equal(layer.aux_data, [0, 1])
    layer.compute_gradient(TRAIN, [])  # a no-op
    layer.close()


def test_record_input_standardises_with_values_and_files(tmp_path):
    path = write_records(tmp_path / "train.bin", 2, pixels=False)
    layer = record_input(path, extra="mean_value: 2 std_value: 4")
    layer.compute_feature(TRAIN, [])
    np.testing.assert_allclose(layer.data[0].ravel(), (np.arange(6) + 0.5 - 2) / 4)
    mean = common_pb2.RecordProto(data=np.arange(6, dtype=np.float32))
    std = common_pb2.RecordProto(data=np.full(6, 0.5, np.float32))
    for name, rec in (("mean.bin", mean), ("std.bin", std)):
        with open_store(tmp_path / name, "kvfile", "w") as s:
            s.write(b"mean", rec.SerializeToString())
    layer = record_input(path, extra=f'mean_file: "{tmp_path / "mean.bin"}" '
                                     f'std_file: "{tmp_path / "std.bin"}"')
    layer.compute_feature(TRAIN, [])
    np.testing.assert_allclose(layer.data[1].ravel(), (10 + np.arange(6) + 0.5 - np.arange(6)) / 0.5)


def test_record_input_wraps_at_end_of_file(tmp_path):
    path = write_records(tmp_path / "train.bin", 5)
    layer = record_input(path)
    assert labels_of(layer, 4) == [[0, 1], [2, 3], [4, 0], [1, 2]]
    assert layer.state() == {"position": 3, "skipped": True}


def test_record_input_deploy_has_no_labels(tmp_path):
    layer = record_input(write_records(tmp_path / "d.bin", 2))
    layer.compute_feature(DEPLOY, [])
    assert layer.aux_data is None and layer.data.shape == (2, 2, 3)


def test_random_skip_is_drawn_from_the_layer_rng(tmp_path):
    path = write_records(tmp_path / "train.bin", 10)
    skip = int(np.random.default_rng(3).integers(0, 7, endpoint=True))
    layer = record_input(path, batch=3, extra="random_skip: 7", seed=3)
    assert labels_of(layer, 1) == [[(skip + k) % 10 for k in range(3)]]
    # the same seed skips the same records
    again = record_input(path, batch=3, extra="random_skip: 7", seed=3)
    assert labels_of(again, 1) == [[(skip + k) % 10 for k in range(3)]]
    firsts = {labels_of(record_input(path, batch=3, extra="random_skip: 7", seed=s), 1)[0][0]
              for s in range(20)}
    assert len(firsts) > 1 and firsts <= set(range(8))


def test_prefetching_gives_the_same_batches(tmp_path):
    path = write_records(tmp_path / "train.bin", 7, pixels=False)
    plain = record_input(path, batch=3, extra="random_skip: 5 mean_value: 1", seed=11)
    pre = record_input(path, batch=3, extra="random_skip: 5 mean_value: 1 prefetching: true",
                       seed=11)
    try:
        for _ in range(6):
            plain.compute_feature(TRAIN, [])
            pre.compute_feature(TRAIN, [])
            np.testing.assert_array_equal(pre.data, plain.data)
            np.testing.assert_array_equal(pre.aux_data, plain.aux_data)
            assert pre.state() == plain.state()
        assert pre._thread is not None and pre._thread.is_alive()
    finally:
        pre.close()
    assert pre._thread is None


@pytest.mark.parametrize("prefetching", [False, True])
def test_exact_resume_reads_the_same_records(tmp_path, prefetching):
    path = write_records(tmp_path / "train.bin", 7)
    extra = "random_skip: 6" + (" prefetching: true" if prefetching else "")
    n = 4
    whole = record_input(path, batch=3, extra=extra, seed=5)
    expected = labels_of(whole, 2 * n)
    whole.close()

    first = record_input(path, batch=3, extra=extra, seed=5)
    got = labels_of(first, n)
    state = first.state()
    first.close()
    assert state["skipped"] and 0 <= state["position"] <= 7

    # a fresh layer with another seed: the restored state must win over random_skip
    second = record_input(path, batch=3, extra=extra, seed=99)
    second.load_state(state)
    assert second.state() == state
    got += labels_of(second, n)
    second.close()
    assert got == expected


def test_load_state_on_a_running_layer_and_before_any_read(tmp_path):
    path = write_records(tmp_path / "train.bin", 5)
    layer = record_input(path, extra="prefetching: true")
    labels_of(layer, 2)
    layer.load_state({"position": 1, "skipped": True})
    assert labels_of(layer, 2) == [[1, 2], [3, 4]]
    fresh = record_input(path, extra="random_skip: 3", seed=2)
    fresh.load_state({"position": 0, "skipped": False})  # nothing delivered yet
    skip = int(np.random.default_rng(2).integers(0, 3, endpoint=True))
    assert labels_of(fresh, 1) == [[skip, (skip + 1) % 5]]
    layer.close()
    # close keeps the position
    assert labels_of(layer, 1) == [[0, 1]]
    layer.close()


def test_record_input_errors_name_layer_path_and_sizes(tmp_path):
    with pytest.raises(LayerError, match="store_conf.path is empty"):
        make("type: kRecordInput store_conf {batchsize: 2 shape: 3}", [])
    with pytest.raises(LayerError, match="store_conf.shape"):
        make('type: kRecordInput store_conf {path: "x" batchsize: 2}', [])
    with pytest.raises(LayerError, match="store_conf.batchsize is required"):
        make('type: kRecordInput store_conf {path: "x" shape: 2}', [])
    with pytest.raises(LayerError, match=r"store_conf.backend 'lmdb' is not supported; "
                                         r"known: .*kvfile"):
        record_input("x", backend="lmdb")
    with pytest.raises(LayerError, match="store_conf.encoded"):
        record_input("x", extra="encoded: true")
    missing = record_input(tmp_path / "nope.bin")
    with pytest.raises(UserError, match=r"layer 'data': .*nope\.bin.* \(store_conf\.path\)"):
        missing.compute_feature(TRAIN, [])
    path = write_records(tmp_path / "train.bin", 2, shape=(2, 3))
    wrong = record_input(path, shape=(7,))
    with pytest.raises(UserError, match=r"layer 'data': record 1 of '.*train\.bin' has 6 pixel "
                                        r"bytes, expected 7"):
        wrong.compute_feature(TRAIN, [])
    with open_store(tmp_path / "empty.bin", "kvfile", "w"):
        pass
    with pytest.raises(UserError, match="has no records"):
        record_input(tmp_path / "empty.bin").compute_feature(TRAIN, [])


def test_batchsize_per_partition():
    def bs(extra, store='batchsize: 8'):
        layer, _ = make(f'type: kRecordInput {extra} store_conf {{path: "x" shape: 1 {store}}}', [])
        return layer.shape[0]
    assert bs("partition_dim: 0 num_partitions: 2") == 4
    assert bs("partition_dim: 1 num_partitions: 2") == 8
    assert bs("partition_dim: 0 num_partitions: 2 partition_id: 1", "batchsize: 6 batchsize: 2") == 2
    assert bs("partition_dim: -1") == 8


# ------------------------------------------------------------ CSVInput ----
def test_csv_input_labels_values_mean_and_deploy(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("1,0.5,1.5,2.5\n0, 3,4,5\n2,6,7,8\n")
    (tmp_path / "mean.csv").write_text("1,1,1\n")
    layer, _ = make(f'type: kCSVInput store_conf {{path: "{path}" batchsize: 2 shape: 3 '
                    f'mean_file: "{tmp_path / "mean.csv"}" std_value: 2}}', [], name="csv")
    layer.compute_feature(TRAIN, [])
    np.testing.assert_allclose(layer.data, [[-0.25, 0.25, 0.75], [1, 1.5, 2]])
    np.testing.assert_array_equal(layer.aux_data, [1, 0])
    layer.compute_feature(TRAIN, [])  # wraps: lines 3 and 1
    np.testing.assert_array_equal(layer.aux_data, [2, 1])

    nolabel = tmp_path / "x.csv"
    nolabel.write_text("1;2\n3;4\n")
    for conf, flag in (("has_label: false", TRAIN), ("", DEPLOY)):
        layer, _ = make(f'type: kCSVInput store_conf {{path: "{nolabel}" separator: ";" '
                        f'batchsize: 2 shape: 2 {conf}}}', [])
        layer.compute_feature(flag, [])
        np.testing.assert_array_equal(layer.data, [[1, 2], [3, 4]])


def test_csv_input_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("1,2,3\n0,1,2,3\n")
    layer, _ = make(f'type: kCSVInput store_conf {{path: "{path}" batchsize: 2 shape: 2}}', [],
                    name="csv")
    with pytest.raises(UserError, match=r"layer 'csv': line 2 of '.*bad\.csv' has 4 fields, "
                                        r"expected 3 \(a label and 2 values"):
        layer.compute_feature(TRAIN, [])
    path.write_text("1,2,3\n0,x,2\n")
    layer, _ = make(f'type: kCSVInput store_conf {{path: "{path}" batchsize: 2 shape: 2}}', [],
                    name="csv")
    with pytest.raises(UserError, match=r"line 2 of .*: 'x' is not a number"):
        layer.compute_feature(TRAIN, [])


# ------------------------------------------------------- v0.1 layers ----
def test_shard_data_mnist_label_chain(tmp_path):
    shard = tmp_path / "mnist_train"
    shard.mkdir()
    write_records(shard / "shard.dat", 3, shape=(4, 4), wrap=True)
    data, _ = make(f'type: kShardData sharddata_conf {{path: "{shard}" batchsize: 2}}', [],
                   name="data")
    mnist, _ = make("type: kMnist mnist_conf {norm_a: 255 norm_b: 0.5}", [data], name="mnist")
    label, _ = make("type: kLabel", [data], name="label")
    assert data.shape == (2, 4, 4) and mnist.shape == (2, 1, 4, 4) and label.shape == (2,)
    for _ in range(2):
        data.compute_feature(TRAIN, [])
        assert len(data.data_for(mnist)) == 2
        mnist.compute_feature(TRAIN, [data])
        label.compute_feature(TRAIN, [data])
    # second batch: records 2 and 0 (wrapped)
    expected = np.stack([(i * 10 + np.arange(16)) % 256 for i in (2, 0)]).reshape(2, 1, 4, 4)
    np.testing.assert_allclose(mnist.data, expected / 255 - 0.5, rtol=1e-6)
    np.testing.assert_array_equal(label.aux_data, [2, 0])
    assert label.data.dtype == np.float32 and label.data.tolist() == [2.0, 0.0]
    assert data.state() == {"position": 1, "skipped": True}
    with pytest.raises(LayerError, match="parses the records of a kShardData layer"):
        make("type: kLabel", [np.zeros((2, 3))])


@pytest.mark.parametrize("kind", ["record", "kvfile", "binaryproto"])
def test_rgb_image_with_meanfile_crop_and_scale(tmp_path, kind):
    path = write_records(tmp_path / "cifar.bin", 2, shape=(1, 3, 3), wrap=True)
    ones = np.ones(9, np.float32)
    meanfile = tmp_path / f"mean.{kind}"
    if kind == "record":  # v0.1: a serialised RecordProto
        meanfile.write_bytes(common_pb2.RecordProto(data=ones).SerializeToString())
    elif kind == "kvfile":  # v0.3 image_mean.bin: one record keyed "mean"
        with open_store(meanfile, "kvfile", "w") as s:
            s.write(b"mean", common_pb2.RecordProto(data=ones).SerializeToString())
    else:
        meanfile.write_bytes(common_pb2.CaffeBlob(channels=1, height=3, width=3,
                                                  data=ones).SerializeToString())
    data, _ = make(f'type: kShardData sharddata_conf {{path: "{path}" batchsize: 2}}', [])
    rgb, _ = make(f'type: kRGBImage rgbimage_conf {{scale: 0.5 cropsize: 2 '
                  f'meanfile: "{meanfile}"}}', [data])
    assert rgb.shape == (2, 1, 2, 2)
    data.compute_feature(TEST, [])
    rgb.compute_feature(TEST, [data])  # not training: top-left crop, no mirror
    img = (10 + np.arange(9)).reshape(3, 3)
    np.testing.assert_allclose(rgb.data[1, 0], (img[:2, :2] - 1) * 0.5)


def test_lmdb_is_refused_with_advice():
    with pytest.raises(LayerError, match="LMDB is not supported; convert the data to a kvfile"):
        make('type: kLMDBData lmdbdata_conf {path: "x" batchsize: 1}', [])


# ---------------------------------------------------- ImagePreprocess ----
def test_image_preprocess_crop_mirror_scale():
    x = np.arange(2 * 2 * 4 * 4, dtype=np.float32).reshape(2, 2, 4, 4)
    src = Source("img", x, np.array([3, 1]))
    layer, _ = make("type: kImagePreprocess rgbimage_conf {cropsize: 3 mirror: true scale: 2}",
                    [src], seed=4)
    assert layer.shape == (2, 2, 3, 3)
    layer.compute_feature(TEST, [src])
    np.testing.assert_array_equal(layer.data, x[:, :, :3, :3] * 2)
    np.testing.assert_array_equal(layer.aux_data, [3, 1])

    layer.rng = np.random.default_rng(4)
    layer.compute_feature(TRAIN, [src])
    rng = np.random.default_rng(4)
    flip = rng.random(2) < 0.5
    h0, w0 = rng.integers(0, 2, size=2), rng.integers(0, 2, size=2)
    for b in range(2):
        crop = x[b, :, h0[b]:h0[b] + 3, w0[b]:w0[b] + 3]
        np.testing.assert_array_equal(layer.data[b], (crop[:, :, ::-1] if flip[b] else crop) * 2)
    # over several draws both flips and several offsets occur
    seen = set()
    for _ in range(20):
        layer.compute_feature(TRAIN, [src])
        seen.add(float(layer.data[0, 0, 0, 0]))
    assert len(seen) > 2
    with pytest.raises(LayerError, match="cropsize is 5, but the images are 4x4"):
        make("type: kImagePreprocess rgbimage_conf {cropsize: 5}", [x])
