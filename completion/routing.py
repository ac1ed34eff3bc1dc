"""Pinning a document to the replica that holds its KV cache: a Ray Serve request router.

Why a router of our own: Ray Serve's model multiplexing routes a `multiplexed_model_id`
to a replica that has it *when convenient* (3 of 8 documents reached both replicas in 40
sequential calls, 2026-12-05), and its consistent-hash router (`ConsistentHashRouter`,
experimental in Ray 2.60) moves a share of every live replica's sessions onto a replica
that joins: after a replica dies and Serve starts its replacement, documents that never
left the surviving replica would move again, and each move costs a cold cache (the whole
window through the model).

`StickyRouter` keeps a table document -> replica: a document's first request goes to the
live replica with the fewest documents active in the last `ACTIVE_S` (ties: the
rendezvous-hash winner, a pure function of the document id and the replica set), and
every later request goes to that replica for as long as it lives, whatever joins.  Hashing
alone balanced badly at a team's scale: 8 documents went 7 / 1 over 2 replicas in one
test run (2026-12-05).  When the replica dies (the proxy drops it from the replica set
on the failed call, or the controller's broadcast does), the document is placed again
among the replicas left; the edge resends its text there (`completion.wire`:
`need_text`).  A replacement replica starts empty, so new and moved documents fill it first.  The key is the request's session id: the `x-session-id`
HTTP header, which the edge sets to the document id.  Requests without one (status
probes) go to any replica.

The table lives in the router, i.e. in the HTTP proxy's process (one per node).  An edge
talks to one proxy address over one keep-alive connection, so a document's requests meet
one table; two proxies could place the same document differently only if one editor's
requests went through both.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, OrderedDict
from typing import Any

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

log = logging.getLogger("ray.serve")

#: documents remembered per router (least recently routed forgotten first: such a
#: document is placed again, most likely elsewhere, and its text resent once)
MAX_PINNED = 100_000
#: a document routed within this many seconds counts toward its replica's load
ACTIVE_S = 600.0


def rendezvous(key: str, replica_ids: list[str]) -> str | None:
    """The replica id with the highest hash of (key, id): highest-random-weight hashing,
    which moves only the keys of a replica that leaves."""
    best, best_h = None, b""
    for rid in replica_ids:
        h = hashlib.blake2b(f"{key}\0{rid}".encode(), digest_size=8).digest()
        if best is None or h > best_h:
            best, best_h = rid, h
    return best


class StickyRouter(ConsistentHashRouter):
    """Document id -> the replica that served it first, for as long as that replica lives.

    Builds on `ConsistentHashRouter` for its routing loop (a request keeps retrying its
    own replica with backoff while that replica's queue is full, instead of spilling to
    another one): only `choose_replicas` differs."""

    def initialize_state(self, **kwargs: Any) -> None:
        kwargs.setdefault("num_fallback_replicas", 0)  # strict: never another replica while it lives
        super().initialize_state(**kwargs)
        self._pinned: OrderedDict[str, tuple[Any, float]] = OrderedDict()  # doc id -> (ReplicaID, last routed)
        self.moves = 0  # documents placed again because their replica left

    def _active(self, now: float) -> Counter:
        """Documents per replica routed within ACTIVE_S (newest first: stops at the first older)."""
        n: Counter = Counter()
        for rid, t in reversed(self._pinned.values()):
            if now - t > ACTIVE_S:
                break
            n[rid] += 1
        return n

    def place(self, key: str, live: list) -> Any:
        """The replica id a new (or orphaned) document goes to."""
        load = self._active(time.monotonic())
        least = min(load[r] for r in live)
        by_unique = {r.unique_id: r for r in live if load[r] == least}
        return by_unique[rendezvous(key, sorted(by_unique))]

    async def choose_replicas(self, candidate_replicas: list, pending_request: Any = None) -> list:
        if not candidate_replicas:
            return []
        if pending_request is None:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True
        key = pending_request.metadata.session_id
        if not key:
            return [candidate_replicas]
        live = {r.replica_id: r for r in candidate_replicas if r.replica_id in self._replica_id_set}
        if not live:
            return []
        now = time.monotonic()
        got = self._pinned.get(key)
        if got is not None and got[0] in live:
            self._pinned[key] = (got[0], now)
            self._pinned.move_to_end(key)
            return [[live[got[0]]]]
        choice = self.place(key, list(live))
        if got is not None:
            self.moves += 1
            log.warning("draftline: document %s moved from replica %s (gone) to %s", key[:12],
                        got[0].unique_id, choice.unique_id)
        self._pinned[key] = (choice, now)
        self._pinned.move_to_end(key)
        while len(self._pinned) > MAX_PINNED:
            self._pinned.popitem(last=False)
        return [[live[choice]]]
