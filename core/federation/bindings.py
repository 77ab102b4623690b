"""Which site each authenticated SuperNode may serve: node id -> site id, fixed by the node's key.

With Flower's SuperNode authentication (``flower-superlink --enable-supernode-auth``) a SuperNode can only
connect with a private key whose public key was registered on the SuperLink, and registration gives the
key its node id for good (the SuperLink looks the node id up by the key on every request). The
coordinator registers one key per site (``fml federate superlink --supernode-keys FILE``) and writes the
resulting bindings to a JSON file; the ServerApp reads it (path in ``$FML_SITE_BINDINGS``, set on the
SuperLink so every run on it is held to the same bindings, whoever submits the run) and the roster refuses
a node that is not bound, or that declares a site other than the one its key was registered for.

File format (JSON):

    {"version": 1, "nodes": [{"node_id": 4711, "site": "clinic-7", "public_key_sha256": "ab12..."}, ...]}
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

SITE_BINDINGS_ENV = "FML_SITE_BINDINGS"
"""Environment variable of the ServerApp (inherited from the SuperLink): path of the bindings file."""
VERSION = 1


@dataclass(frozen=True)
class Binding:
    """One registered key: the node id Flower gave it and the site it serves."""

    node_id: int
    site: str
    public_key_sha256: str = ""


@dataclass(frozen=True)
class SiteBindings:
    """Node id -> site of every registered key; ``source`` names where they were read (for messages)."""

    nodes: dict[int, Binding] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        sites = [b.site for b in self.nodes.values()]
        twice = sorted({s for s in sites if sites.count(s) > 1})
        if twice:
            raise ValueError(f"site bindings {self.source}: site(s) {twice} bound to more than one key")

    @classmethod
    def of(cls, bindings: list[Binding], source: str = "") -> "SiteBindings":
        return cls({b.node_id: b for b in bindings}, source)

    def site_of(self, node_id: int) -> Optional[str]:
        binding = self.nodes.get(int(node_id))
        return binding.site if binding else None

    def unbound_reason(self, node_id: int) -> Optional[str]:
        """Why ``node_id`` may not even be asked to describe itself (None: it has a binding)."""
        if self.site_of(node_id) is not None:
            return None
        return (f"node {node_id} has no site binding: its key is not one registered for a site "
                f"(fml federate superlink --supernode-keys; bindings {self.source or 'given'})")

    def claim_reason(self, node_id: int, declared_site: str) -> Optional[str]:
        """Why ``node_id`` may not serve ``declared_site`` (None: it is the site its key is bound to)."""
        bound = self.site_of(node_id)
        if bound is None:
            return self.unbound_reason(node_id)
        if bound != declared_site:
            return (f"node {node_id} declares site {declared_site!r} but its key is registered for site "
                    f"{bound!r}")
        return None

    # ------------------------------------------------------------------------------------------ file
    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "nodes": [
            {"node_id": b.node_id, "site": b.site, "public_key_sha256": b.public_key_sha256}
            for b in sorted(self.nodes.values(), key=lambda b: b.site)]}

    def write(self, path: Path) -> Path:
        """Write atomically (a ServerApp never reads a half-written file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "") -> "SiteBindings":
        if not isinstance(data, Mapping) or data.get("version") != VERSION or not isinstance(data.get("nodes"), list):
            raise ValueError(f"site bindings {source}: expected {{\"version\": {VERSION}, \"nodes\": [...]}}")
        try:
            items = [Binding(int(n["node_id"]), str(n["site"]), str(n.get("public_key_sha256", "")))
                     for n in data["nodes"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"site bindings {source}: each node needs node_id and site ({err})") from None
        return cls.of(items, source)

    @classmethod
    def read(cls, path: Path) -> "SiteBindings":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise FileNotFoundError(f"site bindings {path}: {err.strerror}; the SuperLink was started with "
                                    "SuperNode authentication, so no node is admitted without them") from None
        try:
            return cls.from_json(json.loads(text), str(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"site bindings {path}: not JSON ({err})") from None


def bindings_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[SiteBindings]:
    """The bindings named by ``$FML_SITE_BINDINGS`` (None when unset). A set variable whose file is missing
    or broken raises: with authentication on, a run must not fall back to admitting any node."""
    path = (os.environ if environ is None else environ).get(SITE_BINDINGS_ENV, "")
    return SiteBindings.read(Path(path)) if path else None
