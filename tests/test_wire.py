"""The compact upload (strategies/wire.py): half the bytes on the wire, each coordinate within 2**-11 of its change,
hostile compact replies refused before decoding, and the run-level choice falling back to float32 where DP or secure
aggregation need exact values."""

import numpy as np
import pytest

from fgssl.config import ConfigError, config_from_dict
from strategies.flower import array_specs, screen_reply, to_record, uploaded_bytes
from strategies.incoming import RejectedReply
from strategies.wire import DELTA, SCALE, decode, encode, is_encoded

from .test_incoming import reply

RNG = np.random.default_rng(0)
SENT = {"layer1.0.conv1.weight": RNG.normal(0, 0.05, (64, 64, 3, 3)).astype(np.float32),
        "layer1.0.bn1.weight": np.ones(64, np.float32),
        "layer1.0.bn1.num_batches_tracked": np.array(7, np.int64),
        "classifiers.0.bias": np.zeros(7, np.float32),
        "frozen.gain": np.full(3, 0.5, np.float32),
        **{f"layer2.{i}.bn{j}.{p}": np.full(32, 0.1 * i, np.float32) for i in range(2) for j in (1, 2)
           for p in ("weight", "bias")},
        **{f"layer2.{i}.bn{j}.num_batches_tracked": np.array(i, np.int64) for i in range(2) for j in (1, 2)}}


def trained_from(sent):
    """A local round's outcome: changes of very different sizes per tensor, one tensor unchanged, a counter up."""
    out = {k: v.copy() for k, v in sent.items()}
    out["layer1.0.conv1.weight"] += RNG.normal(0, 1e-3, out["layer1.0.conv1.weight"].shape).astype(np.float32)
    out["layer1.0.bn1.weight"] += RNG.normal(0, 0.2, 64).astype(np.float32)
    out["classifiers.0.bias"] += np.array([3.0, -2, 1e-7, 0, 5e-5, 1, -1], np.float32)
    out["layer1.0.bn1.num_batches_tracked"] = np.array(19, np.int64)
    return out


def test_the_decoded_update_is_within_2_to_the_minus_11_of_each_change():
    trained = trained_from(SENT)
    decoded = decode(encode(trained, SENT), SENT)
    assert list(decoded) == list(SENT)
    for k, v in decoded.items():
        assert v.dtype == SENT[k].dtype and v.shape == SENT[k].shape, k
        change = trained[k].astype(np.float64) - SENT[k]
        err = np.abs(decoded[k].astype(np.float64) - trained[k])
        # float16's significand, plus the float32 rounding of the sum and the subnormal floor of the scaled change
        bound = np.abs(change) * 2.0 ** -11 + np.abs(trained[k]) * 2.0 ** -23 + np.abs(change).max() * 2.0 ** -38
        assert (err <= bound + 1e-30).all(), (k, float((err - bound).max()))
    assert decoded["layer1.0.bn1.num_batches_tracked"] == 19
    np.testing.assert_array_equal(decoded["frozen.gain"], SENT["frozen.gain"])  # an unchanged tensor stays exact


def test_the_compact_reply_carries_under_half_the_bytes_of_the_float32_one():
    trained = trained_from(SENT)
    compact, plain = reply(encode(trained, SENT)), reply(trained)
    assert uploaded_bytes(compact) / uploaded_bytes(plain) < 0.5
    _, arrays = screen_reply(compact, array_specs(SENT), compact=True)
    assert is_encoded(arrays) and arrays[DELTA].dtype == np.float16


def test_an_update_that_does_not_fit_the_sent_weights_goes_as_values():
    trained = trained_from(SENT)
    assert encode({**trained, "injected.weight": np.zeros(2, np.float32)}, SENT) is None
    assert encode({**trained, "classifiers.0.bias": np.zeros(8, np.float32)}, SENT) is None
    nan = {**trained, "classifiers.0.bias": np.full(7, np.nan, np.float32)}
    assert np.isnan(decode(encode(nan, SENT), SENT)["classifiers.0.bias"]).all()  # refused later as non-finite


@pytest.mark.parametrize("change,match", [
    (lambda a: {**a, DELTA: np.zeros(a[DELTA].size * 4, np.float16)}, r"'update.float16_delta' has shape"),
    (lambda a: {**a, DELTA: a[DELTA].astype(np.float32)}, "dtype float32, the model's is float16"),
    (lambda a: {**a, SCALE: np.ones(1000, np.float32)}, r"'update.float32_scale' has shape"),
    (lambda a: {**a, "injected": np.zeros(3, np.float16)}, "unexpected array 'injected'"),
])
def test_hostile_compact_replies_are_refused_from_their_metadata(change, match):
    arrays = change(encode(trained_from(SENT), SENT))
    with pytest.raises(RejectedReply, match=match):
        screen_reply(reply(arrays), array_specs(SENT), compact=True)


def test_a_compact_reply_is_refused_when_the_round_asked_for_values():
    with pytest.raises(RejectedReply, match="unexpected array 'update"):
        screen_reply(reply(to_record(encode(trained_from(SENT), SENT))), array_specs(SENT), compact=False)


def test_dp_and_secure_aggregation_keep_float32_uploads():
    assert config_from_dict({}).validate().upload_encoding == "float16_delta"
    client = {"privacy": {"mode": "client", "noise_multiplier": 1.0}, "model": {"norm": "group"}}
    assert config_from_dict(client).validate().upload_encoding == "float32"
    secure = {"federation": {"secure_aggregation": True}, "model": {"norm": "group"}}
    assert config_from_dict(secure).validate().upload_encoding == "float32"
    sample = {"privacy": {"mode": "sample"}, "model": {"norm": "group"}}
    assert config_from_dict(sample).validate().upload_encoding == "float16_delta"  # post-processing: same ε
    with pytest.raises(ConfigError, match="federation.upload_encoding.*float16_delta, float32"):
        config_from_dict({"federation": {"upload_encoding": "int4"}}).validate()
