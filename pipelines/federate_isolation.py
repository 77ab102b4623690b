"""How a SuperNode runs its ClientApp tasks: ``fml federate supernode --isolation NAME``.

- ``subprocess`` (Flower's default): the SuperNode starts its own SuperExec, which starts a fresh
  ``flwr-clientapp`` process for EVERY message (imports, torch and the site's data load each time).
- ``process``: ``flower-supernode --isolation process`` plus ONE long-running ClientApp process beside it
  (``pipelines.federate_clientapp``) that runs every message of the node; nothing is started per message.
- ``superexec``: Flower's own process isolation, ``flower-supernode --isolation process`` plus an external
  ``flower-superexec``; in Flower 1.42 that SuperExec still starts a ``flwr-clientapp`` per message (kept
  for comparison and for setups that want Flower's per-message processes in a separate container).

The companion process talks to the SuperNode's Runtime API on 127.0.0.1 (``--runtime-port``), plain HTTP
on loopback as the SuperNode's own SuperExec does.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional

#: ``companion(runtime_api_address, supernode_pid) -> command`` of the process started beside the SuperNode.
Companion = Callable[[str, int], list[str]]


def clientapp_worker_command(runtime_api_address: str, supernode_pid: int) -> list[str]:
    """The long-running FML ClientApp process of a node (exits when the SuperNode does)."""
    return [sys.executable, "-m", "pipelines.federate_clientapp", "--runtime-api-address", runtime_api_address,
            "--insecure", "--parent-pid", str(supernode_pid)]


def superexec_command(runtime_api_address: str, supernode_pid: int) -> list[str]:
    """Flower's ``flower-superexec`` for a node in process isolation (one ``flwr-clientapp`` per message)."""
    from pipelines.federate import flower_bin

    return [flower_bin("flower-superexec"), "--insecure", "--runtime-api-address", runtime_api_address,
            "--parent-pid", str(supernode_pid)]


@dataclass(frozen=True)
class Isolation:
    """One way to run a node's ClientApp tasks."""

    flower_mode: str
    """``flower-supernode --isolation`` value."""
    companion: Optional[Companion]
    """Process started beside the SuperNode (None: the SuperNode starts what it needs)."""
    summary: str
    """One line for ``--help``."""


ISOLATION: dict[str, Isolation] = {
    "subprocess": Isolation("subprocess", None, "Flower's default: a fresh flwr-clientapp process per message"),
    "process": Isolation("process", clientapp_worker_command,
                         "one long-running ClientApp process serves every message (no per-message start)"),
    "superexec": Isolation("process", superexec_command,
                           "Flower's process isolation: an external flower-superexec, still a process per message"),
}


def get_isolation(name: str) -> Isolation:
    """The isolation ``name``; an unknown name raises an error listing the choices."""
    if name not in ISOLATION:
        raise ValueError(f"unknown isolation {name!r}; choices: {', '.join(ISOLATION)}")
    return ISOLATION[name]
