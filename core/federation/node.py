"""Which site a Flower node serves, and that site's data, loaded once per process.

The SuperNode's node config names the site (``flower-supernode --node-config "site-id='clinic-7'
data-path='/data/clinic7.csv'"``); the server's instructions name the vertical, its data options and the
seed. A loader supplied by the pipeline layer reads the data through the vertical's adapter (core never
imports verticals). In Flower's simulation engine a node has only a ``partition-id``: it serves the
``partition-id``-th site of the vertical's federation (training sites first, then validation, then test).

Node config keys:
    site-id: the site this node serves (required in deployment).
    data-path: the site's data file/folder (sets the vertical's path option); optional.
    mode: ``federation`` (default: build the vertical's federation with ``spec.prepare`` and serve one
        site of it) or ``site`` (read ONLY this site's data with ``spec.load_new_site``).
    role: role of the site in ``site`` mode (default ``train``).
    preprocessing: path of a JSON file with the saved preprocessing (``site`` mode).
    vertical: pins the vertical; a run of another vertical is refused.
    cache-dir: folder where the prepared site is kept between messages (the deployment engine starts a
        fresh ClientApp process for every message); an entry is keyed by the toolkit's source as well
        (:func:`code_fingerprint`), so a node upgraded to other code prepares its site again.

A process that serves many messages (a simulation actor, the long-running ClientApp of
``pipelines.federate_clientapp``) keeps the prepared site in memory, keyed by the request AND the size and
mtime of its data and preprocessing files, so a site that replaces its data file between runs is read again.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Optional

if TYPE_CHECKING:
    from torch import nn

    from core.problem import Problem
    from core.tasks import Site
    from core.types import LossFn


class NodeConfigError(ValueError):
    """The node config cannot serve the requested run (names the key and what to fix)."""


@dataclass(frozen=True)
class NodeRequest:
    """Everything that determines a node's data (the cache key)."""

    vertical: str
    data_json: str
    seed: int
    site_id: Optional[str] = None
    partition_id: Optional[int] = None
    data_path: Optional[str] = None
    mode: str = "federation"
    role: Optional[str] = None
    preprocessing_path: Optional[str] = None
    cache_dir: Optional[str] = None


@dataclass
class LoadedSite:
    """What a loader returns: the problem (model, loss, episodes, few-shot tasks), the node's site, its
    role and its position among the federation's training sites (-1 if unknown)."""

    problem: "Problem"
    site: "Site"
    role: str
    order: int = -1


#: ``loader(request) -> LoadedSite``; reads data through the vertical (supplied by ``pipelines``).
SiteLoader = Callable[[NodeRequest], LoadedSite]


@dataclass
class NodeData:
    """A node's loaded site plus a model shell and its pure loss (built once)."""

    loaded: LoadedSite
    model: "nn.Module"
    loss_fn: "LossFn"

    @property
    def site_id(self) -> str:
        return self.loaded.site.site_id

    @property
    def problem(self) -> "Problem":
        return self.loaded.problem


class NodeCache:
    """Prepared sites by request, least recently used dropped first beyond ``max_entries``."""

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: "OrderedDict[Hashable, NodeData]" = OrderedDict()

    def get(self, key: Hashable) -> Optional[NodeData]:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def put(self, key: Hashable, data: NodeData) -> None:
        self._entries[key] = data
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


#: The one process-wide cache, on purpose: Flower's simulation engine pickles the ClientApp with every
#: message it sends an actor (``ray_actor.run(client_app_fn, ...)``), so state held by the app or its
#: closures starts empty on each message; only module state outlives a message in the actor's process.
#: Bounded (one actor serves many sites); ``load_node(..., cache=)`` takes another one.
NODE_CACHE = NodeCache()


def file_stamp(path: Optional[str]) -> Optional[tuple[int, int]]:
    """``(size, mtime_ns)`` of a data file or folder (None if unset or missing): part of every cache key,
    so a replaced file is a new entry."""
    import os

    if not path or not os.path.exists(path):
        return None
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def make_request(node_config: Mapping[str, Any], vertical: str, data_json: str, seed: int) -> NodeRequest:
    """The request of a node for a run, from its node config and the server's instructions."""
    pinned = node_config.get("vertical")
    if pinned and pinned != vertical:
        raise NodeConfigError(f"this node serves vertical {pinned!r} (node config 'vertical'), "
                              f"but the run is for {vertical!r}; start the node for the right vertical")
    site_id = node_config.get("site-id")
    partition = node_config.get("partition-id")
    if site_id is None and partition is None:
        raise NodeConfigError("node config has no 'site-id': start the SuperNode with "
                              "--node-config \"site-id='<your site id>'\"")
    mode = str(node_config.get("mode", "federation"))
    if mode not in ("federation", "site"):
        raise NodeConfigError(f"node config 'mode' is {mode!r}; use 'federation' or 'site'")
    return NodeRequest(
        vertical=vertical, data_json=data_json, seed=int(seed),
        site_id=str(site_id) if site_id is not None else None,
        partition_id=int(partition) if partition is not None and site_id is None else None,
        data_path=str(node_config["data-path"]) if node_config.get("data-path") else None,
        mode=mode, role=str(node_config["role"]) if node_config.get("role") else None,
        preprocessing_path=str(node_config["preprocessing"]) if node_config.get("preprocessing") else None,
        cache_dir=str(node_config["cache-dir"]) if node_config.get("cache-dir") else None,
    )


def load_node(request: NodeRequest, loader: SiteLoader, cache: Optional[NodeCache] = None) -> NodeData:
    """The node's data for ``request``: loaded on first use, then reused by every message this process
    handles (Flower's simulation engine keeps one process per actor, serving many sites). The deployment
    engine starts a process per message: with the node config's ``cache-dir`` the prepared site is read
    back from disk instead of being prepared again. ``cache``: :data:`NODE_CACHE` unless given."""
    cache = NODE_CACHE if cache is None else cache
    key = (request, file_stamp(request.data_path), file_stamp(request.preprocessing_path))
    hit = cache.get(key)
    if hit is not None:
        return hit
    loaded = _read_disk(request)
    if loaded is None:
        loaded = loader(request)
        _write_disk(request, loaded)
    model = loaded.problem.make_model()
    data = NodeData(loaded, model, loaded.problem.loss_fn(model))
    cache.put(key, data)
    return data


def simulation_site_order(federation) -> list[str]:
    """Site ids in the order simulation partitions map to them: train, validation, test."""
    return [sid for role in ("train", "validation", "test") for sid in federation.roles.get(role, [])]


# ------------------------------------------------------------------------------------------------ disk cache
#: The toolkit's packages (pyproject's), whose source prepares a site: read as files, never imported here.
SOURCE_PACKAGES = ("core", "data_adapters", "verticals", "pipelines")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A digest of the toolkit's Python source (every ``.py`` of :data:`SOURCE_PACKAGES` beside ``core``), part
    of the disk cache's key: a pickled site holds objects of the code that prepared it, which other code may
    read differently or not at all. Once per process (about 10 ms)."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_file(request: NodeRequest):
    import hashlib
    import json
    from pathlib import Path

    fields = {k: v for k, v in request.__dict__.items() if k != "cache_dir"}
    fields["code"] = code_fingerprint()  # other code: a new entry, never an old pickle
    for key in ("data_path", "preprocessing_path"):  # a changed file is a new cache entry
        stamp = file_stamp(fields.get(key))
        if stamp is not None:
            fields[key + "_stat"] = list(stamp)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return Path(str(request.cache_dir)) / f"site-{digest}.pkl"


def _one_site(loaded: LoadedSite) -> LoadedSite:
    """The loaded site with a problem that keeps only this site (what the node needs; small to store)."""
    import copy

    from core.tasks import Federation

    problem = copy.copy(loaded.problem)
    if getattr(problem, "federation", None) is not None:
        sid = loaded.site.site_id
        problem.federation = Federation({sid: loaded.site}, {loaded.role if loaded.role in ("train", "validation", "test")
                                                             else "train": [sid]})
    return LoadedSite(problem, loaded.site, loaded.role, loaded.order)


def _read_disk(request: NodeRequest) -> Optional[LoadedSite]:
    if not request.cache_dir:
        return None
    path = _cache_file(request)
    if not path.exists():
        return None
    try:
        import cloudpickle

        with path.open("rb") as fh:
            value = cloudpickle.load(fh)
        return value if isinstance(value, LoadedSite) else None
    except Exception:  # a stale or truncated entry is rebuilt, never trusted
        return None


def _write_disk(request: NodeRequest, loaded: LoadedSite) -> None:
    if not request.cache_dir:
        return
    try:
        import os

        import cloudpickle
    except ImportError:
        return
    path = _cache_file(request)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        cloudpickle.dump(_one_site(loaded), fh)
    os.replace(tmp, path)
