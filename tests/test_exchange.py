"""When the coordinator asks a site again (server/exchange.py), driven on a stand-in for Flower's Grid whose sites
answer after set delays; the real thing runs in test_federation_dp.py and the load check."""

import time

import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from server.exchange import exchange

pytestmark = pytest.mark.usefixtures("flower_identity")


class ScriptedGrid:
    """Each site answers every copy it gets `delay[site]` seconds after it; `lose` sites lose their first answer
    (silently, or as the SuperLink's MESSAGE_UNAVAILABLE error when `as_error`)."""

    def __init__(self, delay: dict[int, float], lose: set[int] = frozenset(), as_error: bool = False) -> None:
        self.delay, self.lose, self.as_error = delay, set(lose), as_error
        self.sent: list[tuple[float, int]] = []
        self.due: dict[str, tuple[float, Message]] = {}

    def push_messages(self, messages):
        ids = []
        for m in messages:
            site = m.metadata.dst_node_id
            mid = f"m{len(self.sent)}"
            self.sent.append((time.monotonic(), site))
            m.metadata.__dict__["_message_id"] = mid
            if site in self.lose and not self.as_error:
                self.lose.discard(site)
            elif site in self.lose:
                self.lose.discard(site)
                reply = Message(Error(ErrorCode.MESSAGE_UNAVAILABLE, "Reply message objects are unavailable"),
                                reply_to=m)
                self.due[mid] = (time.monotonic() + self.delay[site], reply)
            else:
                reply = Message(RecordDict({"r": ConfigRecord({"site": site})}), reply_to=m)
                self.due[mid] = (time.monotonic() + self.delay[site], reply)
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        now = time.monotonic()
        ready = [mid for mid in ids if mid in self.due and self.due[mid][0] <= now]
        return [self.due.pop(mid)[1] for mid in ready]


def _requests(sites):
    return {s: Message(RecordDict(), dst_node_id=s, message_type=MessageType.TRAIN) for s in sites}


def test_a_silent_site_is_asked_again_once_it_is_overdue_against_the_others():
    grid = ScriptedGrid({0: 0.1, 1: 0.1, 2: 0.1}, lose={2})
    got = exchange(grid, _requests([0, 1, 2]), timeout=10, reask_after=0.3, poll=0.02)
    assert set(got.replies) == {0, 1, 2} and got.asks == {0: 1, 1: 1, 2: 2}
    second = [t for t, s in grid.sent if s == 2][1]
    assert second - grid.sent[0][0] >= 0.3  # not before reask_after


def test_nobody_is_asked_again_while_nobody_has_answered():
    """Every site slower than reask_after: copies would only add load, so none are sent."""
    grid = ScriptedGrid({0: 0.6, 1: 0.7})
    got = exchange(grid, _requests([0, 1]), timeout=10, reask_after=0.1, poll=0.02)
    assert set(got.replies) == {0, 1} and got.asks == {0: 1, 1: 1}


def test_a_reply_reported_lost_is_asked_again_at_once_and_a_dropped_one_too():
    grid = ScriptedGrid({0: 0.05, 1: 0.05}, lose={1}, as_error=True)
    got = exchange(grid, _requests([0, 1]), timeout=10, reask_after=None, poll=0.02)
    assert not got.replies[1].has_error() and got.asks == {0: 1, 1: 2}
    grid = ScriptedGrid({0: 0.05, 1: 0.05})
    got = exchange(grid, _requests([0, 1]), timeout=10, reask_after=None, drop_first=frozenset({0}), poll=0.02)
    assert set(got.replies) == {0, 1} and got.asks == {0: 2, 1: 1}


def test_a_site_that_never_answers_is_reported_missing_at_the_timeout_with_its_asks_bounded():
    grid = ScriptedGrid({0: 0.02, 1: 1000.0})
    t0 = time.monotonic()
    got = exchange(grid, _requests([0, 1]), timeout=1.0, reask_after=0.1, poll=0.02)
    assert 1.0 <= time.monotonic() - t0 < 1.5
    assert set(got.replies) == {0} and 2 <= got.asks[1] <= 4  # at 0.1, 0.3, 0.7 s: doubling


class HandshakeGrid:
    """Nodes 10-12 connect; 11 dies while connecting (its query comes back as an error); 13, the same hospital
    started again without node authentication, connects a little later under a new id."""

    def __init__(self) -> None:
        self.t0, self.due = time.monotonic(), {}
        self.site = {10: 0, 11: 1, 12: 2, 13: 1}
        self.asked: list[int] = []

    def get_node_ids(self):
        return [10, 11, 12] + ([13] if time.monotonic() - self.t0 > 0.3 else [])

    def push_messages(self, messages):
        ids = []
        for m in messages:
            node, mid = m.metadata.dst_node_id, f"m{len(self.asked)}"
            self.asked.append(node)
            m.metadata.__dict__["_message_id"] = mid
            reply = (Message(Error(ErrorCode.NODE_UNAVAILABLE, "no heartbeat"), reply_to=m) if self.dead(node) else
                     Message(RecordDict({"site": ConfigRecord({"site": self.site[node]})}), reply_to=m))
            self.due[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        return [self.due.pop(mid) for mid in ids if mid in self.due]

    def dead(self, node: int) -> bool:
        return node == 11


class AuthenticatedHandshakeGrid(HandshakeGrid):
    """With node authentication a restarted hospital keeps its node id: 11 fails its first query, then answers."""

    def get_node_ids(self):
        return [10, 11, 12]

    def dead(self, node: int) -> bool:
        return node == 11 and self.asked.count(11) == 1


def test_a_node_that_dies_during_the_handshake_is_left_out_and_its_restart_joins():
    from server.app import wait_for_sites

    said = []
    assert wait_for_sites(HandshakeGrid(), 3, timeout=10, say=said.append, poll=0.05) == {0: 10, 1: 13, 2: 12}
    assert said and "node 11 failed the handshake" in said[0]
    with pytest.raises(TimeoutError, match="only 3 of 4 sites.*failed the handshake: node 11: no heartbeat"):
        wait_for_sites(HandshakeGrid(), 4, timeout=1, poll=0.05)


def test_a_restarted_node_under_the_same_id_is_asked_again_and_joins():
    from server.app import wait_for_sites

    grid, said = AuthenticatedHandshakeGrid(), []
    assert wait_for_sites(grid, 3, timeout=10, say=said.append, poll=0.05, retry_after=0.2) == {0: 10, 1: 11, 2: 12}
    assert grid.asked.count(11) == 2 and len(said) == 1 and "asking it again" in said[0]


class LosingHandshakeGrid(HandshakeGrid):
    """Node 12's first `losses` answers are lost on their way up (Flower drops a reply whose upload failed, without
    an error)."""

    def __init__(self, losses: int = 1) -> None:
        super().__init__()
        self.losses = losses

    def get_node_ids(self):
        return [10, 11, 12]

    def dead(self, node: int) -> bool:
        return False

    def push_messages(self, messages):
        ids = super().push_messages(messages)
        nodes = [m.metadata.dst_node_id for m in messages]
        if 12 in nodes and self.asked.count(12) <= self.losses:
            del self.due[ids[nodes.index(12)]]
        return ids


def test_a_lost_handshake_answer_is_asked_again_instead_of_holding_the_federation_until_the_timeout():
    from server.app import wait_for_sites

    grid, said = LosingHandshakeGrid(), []
    t0 = time.monotonic()
    assert wait_for_sites(grid, 3, timeout=60, say=said.append, poll=0.05, answer_within=1.0) == {0: 10, 1: 11, 2: 12}
    assert time.monotonic() - t0 < 5 and grid.asked.count(12) == 2 and grid.asked.count(10) == 1
    assert said == ["node 12 gave the handshake no answer within 1 s; asking it again and waiting for the others"]
    with pytest.raises(TimeoutError, match=r"only 2 of 3 sites.*node 12: no answer within 2 s"):
        wait_for_sites(LosingHandshakeGrid(losses=99), 3, timeout=2.5, poll=0.05, answer_within=1.0)
