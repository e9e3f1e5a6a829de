import numpy as np

from strategies.flower import from_config, from_record, to_config, to_record


def test_named_arrays_survive_a_record_round_trip_with_shape_and_dtype():
    named = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "a.num_batches_tracked": np.array(7, dtype=np.int64),  # 0-d, as BatchNorm keeps it
             "b": np.arange(4, dtype=np.float64)[::2]}              # non-contiguous input
    back = from_record(to_record(named))
    assert list(back) == list(named)
    for k in named:
        assert back[k].shape == named[k].shape and back[k].dtype == named[k].dtype
        np.testing.assert_array_equal(back[k], named[k])


def test_config_values_round_trip_including_nested_ones():
    values = {"round": 3, "phase": "ssl", "lr": 0.5, "flag": True,
              "test": {"accuracy": 0.5, "confusion_matrix": [[1, 0], [0, 1]], "macro_auc": None}}
    assert from_config(to_config(values)) == values
