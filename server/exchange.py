"""One request per site and one reply back, asking a silent site again instead of losing its round.

Flower 1.42's SuperNode drops a reply whose upload failed and never retries it, so the coordinator would wait out
the round and go on without that site, although the site has trained and charged its privacy ledger. Here a site
that stays silent while the others have answered is sent the same request again: once it is overdue by
`reask_after_s` and by twice the others' typical reply time, then after twice as long, and so on. The node answers
a request it has already answered from its cached reply (client/replies.py), so the update arrives late instead of
never and is paid for once. A node that is merely slow has the copy queued behind the request it is working on (a
SuperNode handles one message at a time) and answers it from the cache without training; the copy still carries
the whole request over the network, which is why the others' pace sets how long to wait. Only the first
reply per site counts; later copies are never pulled. A reply the SuperLink reports as lost on the way (Flower's
MESSAGE_UNAVAILABLE: the upload did not complete) is asked again at once. Other error replies are final: a crashed
ClientApp or a node the SuperLink declared dead is not asked again within the round.

Works with any Flower Grid (the in-memory one of a simulation, the gRPC one of a deployment), and keeps working if
Flower later retries uploads by itself: a retried upload is simply the first reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

# Flower's error codes for a reply that the SuperLink could not hand over (an upload that failed or expired); the
# node itself is alive. NODE_UNAVAILABLE (a dead node) and the ClientApp's own errors are final.
LOST_IN_TRANSPORT = (ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)
MAX_ASKS = 8
# Polls start every 0.25 s (replies of small sites come seconds apart) and slow to Flower's own 3 s as the exchange
# goes on: every pull costs the SuperLink CPU, and polling 20 nodes every 0.5 s doubled its share on 2 cores.
POLL_MIN_S, POLL_MAX_S = 0.25, 3.0
Say = Callable[[str], None]


@dataclass
class Exchange:
    """What came back: the first reply per site, and how many times each site was asked."""
    replies: dict[int, Message] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)


def exchange(grid: Grid, requests: dict[int, Message], *, timeout: float, reask_after: float | None,
             drop_first: frozenset[int] = frozenset(), say: Say | None = None, poll: float | None = None) -> Exchange:
    """Send `requests` (site -> message) and collect one reply per site until all replied or `timeout` passed.

    `poll`: a fixed polling interval (tests); by default it grows from POLL_MIN_S to POLL_MAX_S.
    `drop_first`: sites whose first reply is thrown away as if its upload had failed (fault `lost_reply`); like a
    reply reported lost, the site is asked again at once.
    """
    out = Exchange(asks={s: 0 for s in requests})
    unanswered: dict[str, int] = {}  # message id -> site, for every copy sent whose reply has not come
    last_ask: dict[int, float] = {}
    took: list[float] = []  # seconds from the first ask to the reply, of the sites that answered
    to_drop = set(drop_first)

    def send(sites: list[int]) -> None:
        copies = [_copy(requests[s]) for s in sites]
        for s, mid in zip(sites, grid.push_messages(copies)):
            out.asks[s] += 1
            last_ask[s] = time.monotonic()
            if mid:
                unanswered[mid] = s

    def overdue(site: int, now: float) -> bool:
        """Silent for longer than reask_after and than twice the others' typical reply time (doubling with each ask):
        a copy carries the whole request, so on a machine where every site is slow nobody is asked again."""
        if reask_after is None or not took:
            return False
        typical = sorted(took)[len(took) // 2]
        return now - last_ask[site] >= max(reask_after, 2 * typical) * 2 ** (out.asks[site] - 1)

    started = time.monotonic()
    send(list(requests))
    deadline = started + timeout
    pending = set(requests)
    while pending:
        ids = [mid for mid, s in unanswered.items() if s in pending]
        lost_now: list[int] = []
        for reply in grid.pull_messages(ids):
            site = unanswered.pop(reply.metadata.reply_to_message_id, None)
            if site is None or site not in pending:
                continue
            if site in to_drop and not reply.has_error():
                to_drop.discard(site)
                lost_now.append(site)
                if say:
                    say(f"site {site}: reply thrown away as if its upload had failed (fault lost_reply)")
                continue
            if reply.has_error() and reply.error.code in LOST_IN_TRANSPORT and out.asks[site] < MAX_ASKS:
                lost_now.append(site)  # the node is alive and has its answer cached: ask at once
                if say:
                    say(f"site {site}: its reply was lost on the way ({reply.error.reason.strip()[:80]}); "
                        "asking again")
                continue
            out.replies[site] = reply
            pending.discard(site)
            took.append(time.monotonic() - started)
        now = time.monotonic()
        if not pending or now >= deadline:
            break
        again = sorted(s for s in pending if s not in lost_now and overdue(s, now))
        if again and say:
            say(f"no reply yet from site{'s' if len(again) > 1 else ''} {', '.join(map(str, again))}: asking again")
        if again or lost_now:
            send(sorted({*again, *lost_now}))
        interval = poll if poll is not None else min(POLL_MAX_S, POLL_MIN_S + 0.1 * (now - started))
        time.sleep(min(interval, max(0.0, deadline - now)))
    return out


def _copy(msg: Message) -> Message:
    """The same request as a new message (a pushed message carries its id and cannot be pushed twice)."""
    return Message(msg.content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type,
                   group_id=msg.metadata.group_id)
