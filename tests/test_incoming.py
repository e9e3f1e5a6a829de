"""Replies from broken or hostile nodes are refused before anything large is decoded, naming what is wrong."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from strategies.flower import array_specs, screen_reply, to_config, to_record
from strategies.incoming import RejectedReply

SENT = {"backbone.conv1.weight": np.zeros((4, 3, 3, 3), np.float32), "classifiers.0.bias": np.zeros(7, np.float32)}
GOOD_INFO = {"site": 2, "num_examples": 120, "loss": 1.25, "test": {"accuracy": 0.5, "confusion_matrix": [[1, 2], [3, 4]]}}


def reply(arrays=None, info=None, **extra) -> RecordDict:
    content = {"info": to_config(GOOD_INFO if info is None else info)}
    if arrays is not None:
        content["arrays"] = arrays if isinstance(arrays, ArrayRecord) else to_record(arrays)
    content.update(extra)
    return RecordDict(content)


def test_a_well_formed_reply_passes_and_decodes():
    metrics, arrays = screen_reply(reply({k: v + 1 for k, v in SENT.items()}), array_specs(SENT))
    assert metrics == GOOD_INFO and set(arrays) == set(SENT) and arrays["classifiers.0.bias"][0] == 1.0
    metrics, arrays = screen_reply(reply(), {})  # an evaluation reply: metrics only
    assert arrays is None and metrics["test"]["confusion_matrix"] == [[1, 2], [3, 4]]


@pytest.mark.parametrize("hostile,match", [
    ({"classifiers.0.bias": np.zeros(10**6, np.float32)}, r"shape \(1000000,\), the model's is \(7,\)"),
    ({"classifiers.0.bias": np.zeros(7, np.float64)}, "dtype float64, the model's is float32"),
    ({"classifiers.0.bias": np.zeros(7, np.float32), "injected.weight": np.zeros(3, np.float32)},
     "unexpected array 'injected.weight'"),
])
def test_hostile_arrays_are_refused_from_their_metadata(hostile, match):
    with pytest.raises(RejectedReply, match=match):
        screen_reply(reply(hostile), array_specs(SENT))


def test_an_array_whose_bytes_exceed_its_shape_is_refused():
    a = Array(np.zeros(7, np.float32))
    a.data = a.data + b"\0" * 100_000  # declared shape (7,), a payload of 100 kB
    with pytest.raises(RejectedReply, match="carries 100"):
        screen_reply(reply(ArrayRecord({"classifiers.0.bias": a})), array_specs(SENT))


def test_arrays_in_an_evaluation_reply_are_refused():
    with pytest.raises(RejectedReply, match="did not ask"):
        screen_reply(reply(SENT), {})


@pytest.mark.parametrize("info,match", [
    ({**GOOD_INFO, "note": "x" * 10_000_000}, "'note' is 10000000 characters long"),
    ({**GOOD_INFO, "test": {"deep": [[[[[[[1]]]]]]]}}, "nested deeper"),
    ({**GOOD_INFO, "test": [0] * 25_000}, "more than 20000 values"),
    ({**GOOD_INFO, "test": list(range(50_000))}, "is 338890 characters long"),  # refused before json.loads
    ({**GOOD_INFO, **{f"m{i}": 1.0 for i in range(100)}}, "metrics \\(at most 64\\)"),
])
def test_hostile_metrics_are_refused(info, match):
    with pytest.raises(RejectedReply, match=match):
        screen_reply(reply(info=info), {})


def test_unknown_records_and_malformed_json_are_refused():
    with pytest.raises(RejectedReply, match="unexpected record 'payload'"):
        screen_reply(reply(payload=ConfigRecord({"x": 1})), {})
    with pytest.raises(RejectedReply, match="not a number"):
        screen_reply(reply(metrics=MetricRecord({"x": [1.0, 2.0]})), {})
    with pytest.raises(RejectedReply, match="not valid JSON"):
        screen_reply(RecordDict({"info": ConfigRecord({"json:test": "{not json"})}), {})
    with pytest.raises(RejectedReply, match="no 'info'"):
        screen_reply(RecordDict({"arrays": to_record(SENT)}), array_specs(SENT))
    assert json.dumps(GOOD_INFO)  # the good reply above is plain JSON
