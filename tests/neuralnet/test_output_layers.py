"""ArgSort, Accuracy, CSVOutput and RecordOutput: order, metrics, display and
the contents of the files written."""
from __future__ import annotations

import numpy as np
import pytest

from conf import common_pb2
from runtime.errors import LayerError
from runtime.io.store import open_store
from tests.neuralnet.harness import BACK, TRAIN, Source, make

SCORES = np.array([[0.1, 0.7, 0.2, 0.0],
                   [0.5, 0.1, 0.1, 0.3],
                   [0.2, 0.2, 0.5, 0.1]], np.float32)


def test_argsort_orders_descending_and_passes_labels():
    src = Source("s", SCORES, np.array([1, 3, 0]))
    layer, _ = make("type: kArgSort argsort_conf {topk: 3}", [src])
    assert layer.shape == (3, 3)
    layer.compute_feature(TRAIN, [src])
    assert layer.data.dtype == np.float32
    # ties keep the lower index first
    np.testing.assert_array_equal(layer.data, [[1, 2, 0], [0, 3, 1], [2, 0, 1]])
    np.testing.assert_array_equal(layer.aux_data, [1, 3, 0])
    layer.compute_gradient(BACK, [src])
    assert src.grad is None
    with pytest.raises(LayerError, match="topk is 5, expected 1 to 4"):
        make("type: kArgSort argsort_conf {topk: 5}", [SCORES])


def test_accuracy_of_nan_scores_is_zero():
    scores = SCORES.copy()
    scores[1, 2] = np.nan
    lbl = Source("lbl", np.zeros(3), np.array([1, 0, 2]))   # all three ranked first
    layer, srcs = make("type: kAccuracy", [scores, lbl])
    layer.compute_feature(TRAIN, srcs)
    assert layer.metrics() == pytest.approx({"accuracy": 2 / 3})


def test_accuracy_topk_metrics_and_display():
    lbl = Source("lbl", np.zeros(3), np.array([1, 3, 0]))   # ranks 1, 2, 2 (a tie)
    layer, srcs = make("type: kAccuracy", [SCORES, lbl])
    assert layer.is_loss
    layer.compute_feature(TRAIN, srcs)
    assert layer.metrics() == pytest.approx({"accuracy": 1 / 3})
    np.testing.assert_array_equal(layer.data, [[1], [0], [2]])
    top2, srcs2 = make("type: kAccuracy argsort_conf {topk: 2}", [SCORES, lbl])
    top2.compute_feature(TRAIN, srcs2)
    assert top2.metrics() == {"accuracy": 1.0}
    # averaged over calls until reset
    layer.compute_feature(TRAIN, [Source("s", SCORES), Source("l", np.zeros(3), np.array([1, 0, 2]))])
    assert layer.metrics() == pytest.approx({"accuracy": (1 / 3 + 1) / 2})
    assert layer.display() == "accuracy = %f" % ((1 / 3 + 1) / 2)
    layer.reset_metrics()
    assert layer.display() == "accuracy = 0.000000"
    layer.compute_gradient(BACK, srcs)  # no gradient, no error


def test_csv_output_writes_labels_and_values(tmp_path):
    path = tmp_path / "out.csv"
    x = np.array([[0.5, -1.25, 3.0], [0.1, 2.0, 1e-5]], np.float32)
    src = Source("feat", x, np.array([7, 9]))
    layer, _ = make(f'type: kCSVOutput store_conf {{path: "{path}"}}', [src])
    assert not path.exists()  # opened lazily
    layer.compute_feature(TRAIN, [src])
    layer.compute_feature(TRAIN, [src])
    layer.close()
    lines = path.read_text().splitlines()
    assert lines == ["7,0.5,-1.25,3.0", "9,0.1,2.0,1e-05"] * 2
    np.testing.assert_array_equal(np.array([l.split(",")[1:] for l in lines[:2]], np.float32), x)


def test_csv_output_prediction_chain_prints_integers(tmp_path):
    path = tmp_path / "pred.csv"
    src = Source("prob", SCORES)
    argsort, _ = make("type: kArgSort argsort_conf {topk: 2}", [src])
    argsort.compute_feature(TRAIN, [src])
    out, _ = make(f'type: kCSVOutput store_conf {{path: "{path}" separator: ";"}}', [argsort])
    out.compute_feature(TRAIN, [argsort])
    out.close()
    assert path.read_text() == "1;2\n0;3\n2;0\n"


def test_record_output_writes_records_with_running_keys(tmp_path):
    path = tmp_path / "feat.bin"
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    src = Source("feat", x, np.array([4, 5]))
    layer, _ = make(f'type: kRecordOutput store_conf {{path: "{path}"}}', [src])
    layer.compute_feature(TRAIN, [src])
    layer.compute_feature(TRAIN, [Source("f", x + 100)])  # no labels this time
    layer.close()
    with open_store(path, "kvfile") as store:
        recs = list(store)
    assert [k for k, _ in recs] == [b"0", b"1", b"2", b"3"]
    parsed = [common_pb2.RecordProto.FromString(v) for _, v in recs]
    assert [r.label for r in parsed[:2]] == [4, 5]
    assert not parsed[2].HasField("label")
    assert list(parsed[0].shape) == [2, 3]
    np.testing.assert_array_equal(parsed[1].data, np.arange(6, 12))
    np.testing.assert_array_equal(parsed[3].data, np.arange(106, 112))


def test_output_layers_need_a_path():
    with pytest.raises(LayerError, match="store_conf.path is empty"):
        make("type: kCSVOutput", [SCORES])
