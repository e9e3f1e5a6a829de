"""A site's reply cache: the same request is answered from disk, a different one is not, old rounds are forgotten."""

import threading
import time

import numpy as np

from client.replies import ReplyCache, request_digest


def _request(value: float = 1.0) -> tuple[dict[str, np.ndarray], dict]:
    return {"w": np.full((2, 3), value, np.float32), "b": np.arange(3, dtype=np.int64)}, {"round": 3, "phase": "ssl"}


def test_the_same_request_is_answered_from_the_cache_and_a_changed_one_is_not(tmp_path):
    arrays, config = _request()
    cache = ReplyCache(tmp_path)
    with cache.task("train", 3, arrays, config) as task:
        assert task.load() is None
        task.save({"w": arrays["w"] * 2}, {"num_examples": 10, "loss": 0.5, "val": {"cm": [[1, 0], [0, 1]]}})
    with cache.task("train", 3, *_request()) as task:
        got_arrays, info = task.load()
    np.testing.assert_array_equal(got_arrays["w"], arrays["w"] * 2)
    assert info == {"num_examples": 10, "loss": 0.5, "val": {"cm": [[1, 0], [0, 1]]}}
    # one changed weight, one changed config value, or the other kind: a new request
    with cache.task("train", 3, *_request(1.0 + 1e-6)) as task:
        assert task.load() is None
    with cache.task("train", 3, arrays, {**config, "phase": "finetune"}) as task:
        assert task.load() is None
    with cache.task("evaluate", 3, arrays, config) as task:
        assert task.load() is None


def test_the_digest_tells_names_dtypes_and_shapes_apart():
    a = {"w": np.zeros(6, np.float32)}
    assert request_digest(a, {}) != request_digest({"v": a["w"]}, {})
    assert request_digest(a, {}) != request_digest({"w": a["w"].reshape(2, 3)}, {})
    assert request_digest(a, {}) != request_digest({"w": a["w"].astype(np.float64)}, {})
    assert request_digest(a, {"round": 1}) == request_digest({"w": np.zeros(6, np.float32)}, {"round": 1})


def test_rounds_before_the_last_two_are_forgotten_and_a_half_written_entry_does_not_count(tmp_path):
    cache = ReplyCache(tmp_path)
    for rnd in (1, 2, 3):
        with cache.task("train", rnd, *_request()) as task:
            task.save({"w": np.ones(2, np.float32)}, {"round": rnd})
    names = sorted(p.name for p in cache.dir.glob("*.json"))
    assert [n.split("-")[1] for n in names] == ["r2", "r3"]
    assert not list(cache.dir.glob("train-r1-*")) and not (cache.dir / "train-r1.lock").exists()
    # the arrays were written but the node died before the info: asked again, it works the request again
    with cache.task("train", 4, *_request()) as task:
        task.stem.with_suffix(".safetensors").write_bytes(b"partial")
        assert task.load() is None


def test_a_copy_of_a_request_waits_for_the_first_and_then_reads_its_answer(tmp_path):
    """Two processes or threads handling the same request never both work it."""
    arrays, config = _request()
    worked: list[str] = []
    answers: list[dict] = []

    def handle(name: str) -> None:
        with ReplyCache(tmp_path).task("train", 1, arrays, config) as task:
            if (cached := task.load()) is None:
                worked.append(name)
                time.sleep(0.3)
                cached = ({}, {"by": name})
                task.save(*cached)
            answers.append(cached[1])

    threads = [threading.Thread(target=handle, args=(n,)) for n in ("first", "copy")]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert len(worked) == 1 and answers == [{"by": worked[0]}] * 2
