"""Send messages through a Flower ``Grid`` and collect the replies, polling at the run's own interval.

``Grid.send_and_receive`` of the deployment engine sleeps 3 s between pulls; pushing and pulling here
with a short interval removes that latency from every round. Replies are matched to the nodes that were
asked, so the caller knows exactly which node did not answer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

NODE_UNAVAILABLE = 5  # flwr.common.constant.ErrorCode.NODE_UNAVAILABLE: the SuperLink's reply for a dead node


@dataclass
class Exchange:
    """The outcome of one exchange: replies by node id, and the nodes that did not answer in time."""

    replies: dict[int, Any] = field(default_factory=dict)
    unanswered: list[int] = field(default_factory=list)

    def ok(self) -> dict[int, Any]:
        return {n: m for n, m in self.replies.items() if not m.has_error()}

    def errors(self) -> dict[int, str]:
        """Error replies of nodes that are still there (the ClientApp raised, the app failed to load ...)."""
        return {n: str(m.error.reason) for n, m in self.replies.items()
                if m.has_error() and int(m.error.code) != NODE_UNAVAILABLE}

    def unavailable(self) -> dict[int, str]:
        """Nodes the SuperLink reports gone (no heartbeat for 2 intervals): the reason it gave."""
        return {n: str(m.error.reason) for n, m in self.replies.items()
                if m.has_error() and int(m.error.code) == NODE_UNAVAILABLE}


def exchange(grid: Any, messages: Iterable[Any], timeout: float, poll: float = 0.1) -> Exchange:
    """Push ``messages`` and pull replies until all arrived or ``timeout`` seconds passed."""
    messages = list(messages)
    if not messages:
        return Exchange()
    destination, not_pushed = {}, []
    for msg_id, msg in zip(grid.push_messages(messages), messages):
        if msg_id is None:  # the SuperLink refused it (e.g. malformed or resources exhausted)
            not_pushed.append(msg.metadata.dst_node_id)
        else:
            destination[msg_id] = msg.metadata.dst_node_id
    pending = set(destination)
    out = Exchange()
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            key = reply.metadata.reply_to_message_id
            if key in pending:
                pending.discard(key)
                out.replies[destination[key]] = reply
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    out.unanswered = sorted([destination[k] for k in pending] + not_pushed)
    return out


class PollingGrid:
    """A ``Grid`` whose ``send_and_receive`` uses :func:`exchange` (for Flower workflows that call it)."""

    def __init__(self, grid: Any, poll: float, timeout: float, filter_reply=None) -> None:
        self._grid, self._poll, self._timeout, self._filter = grid, poll, timeout, filter_reply

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        result = exchange(self._grid, messages, self._timeout if timeout is None else timeout, self._poll)
        replies = list(result.replies.values())
        if self._filter is not None:
            replies = [m for m in replies if self._filter(m)]
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
