"""The server's view of the federation: which node serves which site (role, size), and which nodes were lost.

Nodes describe themselves once (a ``query`` message); the roster keeps the training pool in the order
the in-process engine samples from (the federation's own order when every node reports it, else by
site id), so the same seed samples the same sites. With ``bindings`` (SuperNode authentication) a node
whose key is bound to no site is never asked anything, and a node that declares a site other than the
one its key is bound to is refused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from core.federation import records as R
from core.federation.bindings import SiteBindings
from core.federation.messaging import exchange


@dataclass
class NodeInfo:
    """A connected node and the site it serves."""

    node_id: int
    site_id: str
    role: str
    size: int
    order: int = -1


@dataclass
class Roster:
    """Known nodes, lost nodes (node id -> round it was lost) and the nodes that could not be described."""

    nodes: dict[int, NodeInfo] = field(default_factory=dict)
    lost: dict[int, int] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    silent: dict[int, float] = field(default_factory=dict)
    silent_retry: float = 120.0
    """Seconds before a node that did not answer its description request is asked again."""
    bindings: Optional[SiteBindings] = None
    """Node id -> site fixed by the node's registered key (None: a node serves the site it declares)."""

    def describe_new(self, grid: Any, base_config: dict[str, Any], timeout: float, poll: float,
                     want_init: bool = False, on_event: Callable[..., None] = lambda **kw: None):
        """Ask every connected node not yet known to describe itself; returns the init record if asked."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        connected = sorted(int(n) for n in grid.get_node_ids())
        now = time.monotonic()
        new = [n for n in connected if n not in self.nodes and n not in self.refused and n not in self.lost
               and now - self.silent.get(n, -1e18) >= self.silent_retry]
        new = self._admissible(new, on_event)
        if not new:
            return None
        messages = []
        for i, node_id in enumerate(new):
            config = dict(base_config)
            if want_init and i == 0:
                config[R.INCLUDE_INIT] = True
            messages.append(Message(RecordDict({R.CONFIG: ConfigRecord(config)}), message_type=MessageType.QUERY,
                                    dst_node_id=node_id, group_id="describe"))
        result = exchange(grid, messages, timeout, poll)
        init = None
        # by node id: of two nodes claiming one site, the same one is kept whatever order the replies came in
        for node_id, reply in sorted(result.ok().items()):
            info = reply.content[R.CONFIG]
            site = str(info["site-id"])
            claim = self.bindings.claim_reason(node_id, site) if self.bindings is not None else None
            if claim is not None:
                self.refused[node_id] = claim
                on_event(kind="node_refused", node=node_id, site=site, bound_site=self.bindings.site_of(node_id),
                         reason=claim)
                continue
            clash = self.node_of_site(site)
            if clash is not None:
                self.refused[node_id] = (f"site {site!r} is already served by node {clash.node_id}; a site has one "
                                         "node: stop this one or start it with another site-id")
                on_event(kind="node_refused", node=node_id, site=site, reason=self.refused[node_id])
                continue
            self.nodes[node_id] = NodeInfo(node_id, site, str(info["role"]), int(info["size"]), int(info["order"]))
            on_event(kind="node_joined", node=node_id, site=site, role=str(info["role"]))
            if R.ARRAYS in reply.content.array_records:
                init = reply.content[R.ARRAYS]
        for node_id, reason in result.errors().items():
            self.refused[node_id] = reason
            on_event(kind="node_refused", node=node_id, reason=reason)
        for node_id in result.unanswered:
            self.silent[node_id] = time.monotonic()
            on_event(kind="node_silent", node=node_id, reason=f"no description within {timeout:.0f}s; "
                                                               f"asked again in {self.silent_retry:.0f}s")
        if want_init and init is None and new:
            # the node asked for the init failed: ask a described one
            return self._init_from_any(grid, base_config, timeout, poll)
        return init

    def _admissible(self, node_ids: list[int], on_event: Callable[..., None]) -> list[int]:
        """``node_ids`` minus the nodes bound to no site (refused at once: they are not even sent the run's
        description request, which carries the run's data options)."""
        if self.bindings is None:
            return node_ids
        keep = []
        for node_id in node_ids:
            reason = self.bindings.unbound_reason(node_id)
            if reason is None:
                keep.append(node_id)
            else:
                self.refused[node_id] = reason
                on_event(kind="node_refused", node=node_id, reason=reason)
        return keep

    def _init_from_any(self, grid: Any, base_config: dict[str, Any], timeout: float, poll: float):
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        for node_id in sorted(self.nodes):
            msg = Message(RecordDict({R.CONFIG: ConfigRecord({**base_config, R.INCLUDE_INIT: True})}),
                          message_type=MessageType.QUERY, dst_node_id=node_id, group_id="init")
            reply = exchange(grid, [msg], timeout, poll).ok().get(node_id)
            if reply is not None and R.ARRAYS in reply.content.array_records:
                return reply.content[R.ARRAYS]
        return None

    def node_of_site(self, site_id: str) -> Optional[NodeInfo]:
        return next((n for n in self.nodes.values() if n.site_id == site_id), None)

    def sync(self, grid: Any, server_round: int, on_event: Callable[..., None]) -> None:
        """Nodes the SuperLink no longer lists (heartbeats stopped) are marked lost."""
        connected = {int(n) for n in grid.get_node_ids()}
        for node_id, info in self.nodes.items():
            if node_id not in connected and node_id not in self.lost:
                self.mark_lost(node_id, server_round, "disconnected from the SuperLink", on_event)

    def mark_lost(self, node_id: int, server_round: int, reason: str, on_event: Callable[..., None]) -> None:
        self.lost[node_id] = server_round
        info = self.nodes.get(node_id)
        on_event(kind="node_lost", round=server_round, node=node_id, site=info.site_id if info else None,
                 reason=reason)

    def pool(self, role: str, server_round: int, retry_after: int = 0) -> list[NodeInfo]:
        """Alive nodes of ``role``, in the federation's order (or by site id)."""
        alive = [n for n in self.nodes.values() if n.role == role and
                 (n.node_id not in self.lost or (retry_after > 0 and server_round - self.lost[n.node_id] >= retry_after))]
        if alive and all(n.order >= 0 for n in alive):
            return sorted(alive, key=lambda n: (n.order, n.site_id))
        return sorted(alive, key=lambda n: n.site_id)

    def wait_for(self, grid: Any, role: str, minimum: int, server_round: int, timeout: float, reply_timeout: float,
                 poll: float, base_config: dict[str, Any], on_event: Callable[..., None]) -> list[NodeInfo]:
        """Block until ``minimum`` alive nodes of ``role`` are known (describing newcomers), or raise."""
        deadline = time.monotonic() + timeout
        while True:
            self.describe_new(grid, base_config, reply_timeout, poll, on_event=on_event)
            self.sync(grid, server_round, on_event)
            pool = self.pool(role, server_round)
            if len(pool) >= minimum:
                return pool
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"round {server_round}: {len(pool)} {role} node(s) available "
                    f"({', '.join(n.site_id for n in pool) or 'none'}), flower.min_available_clients={minimum}; "
                    f"waited {timeout:.0f}s. Start more SuperNodes or lower flower.min_available_clients"
                )
            time.sleep(max(poll, 1.0))
