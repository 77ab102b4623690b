"""The node's in-memory site cache (``core.federation.node.load_node``): what a long-running ClientApp
process (``--isolation process``) or a simulation actor keeps across messages, and when it reloads."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from core.federation import node as N


@pytest.fixture
def loader(monkeypatch):
    monkeypatch.setattr(N, "NODE_CACHE", N.NodeCache())
    calls = []

    def load(request: N.NodeRequest) -> N.LoadedSite:
        calls.append(request)
        problem = SimpleNamespace(make_model=lambda: object(), loss_fn=lambda model: (lambda *a: 0.0))
        return N.LoadedSite(problem, SimpleNamespace(site_id=request.site_id), "train", 0)

    load.calls = calls
    return load


def request(path, seed: int = 0) -> N.NodeRequest:
    return N.make_request({"site-id": "clinic-1", "data-path": str(path)}, "tabular", "{}", seed)


def test_messages_of_one_run_reuse_the_site(tmp_path, loader):
    data = tmp_path / "site.csv"
    data.write_text("a,b\n1,2\n")
    first = N.load_node(request(data), loader)
    assert N.load_node(request(data), loader) is first and len(loader.calls) == 1


def test_another_seed_is_another_site_load(tmp_path, loader):
    data = tmp_path / "site.csv"
    data.write_text("a,b\n1,2\n")
    N.load_node(request(data, seed=0), loader)
    N.load_node(request(data, seed=1), loader)
    assert [r.seed for r in loader.calls] == [0, 1]


def test_a_replaced_data_file_is_read_again(tmp_path, loader):
    data = tmp_path / "site.csv"
    data.write_text("a,b\n1,2\n")
    first = N.load_node(request(data), loader)
    data.write_text("a,b\n1,2\n3,4\n")
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # coarse clocks: make it differ
    assert N.load_node(request(data), loader) is not first and len(loader.calls) == 2


def test_the_cache_is_bounded_and_drops_the_least_recently_used_site(tmp_path, loader):
    data = tmp_path / "site.csv"
    data.write_text("a,b\n1,2\n")
    cache = N.NodeCache(max_entries=2)
    first = N.load_node(request(data, seed=0), loader, cache)
    N.load_node(request(data, seed=1), loader, cache)
    assert N.load_node(request(data, seed=0), loader, cache) is first  # seed 0 used last: seed 1 goes next
    N.load_node(request(data, seed=2), loader, cache)
    assert len(cache) == 2 and len(N.NODE_CACHE) == 0  # an explicit cache leaves the process-wide one alone
    assert N.load_node(request(data, seed=0), loader, cache) is first
    N.load_node(request(data, seed=1), loader, cache)
    assert [r.seed for r in loader.calls] == [0, 1, 2, 1]
    with pytest.raises(ValueError, match="max_entries"):
        N.NodeCache(max_entries=0)


def test_disk_cache_serves_a_new_process_and_not_other_code(tmp_path, loader, monkeypatch):
    """The deployment engine starts a process per message: the prepared site comes back from ``cache-dir``
    (no second load), but a node upgraded to other source prepares it again instead of unpickling the old."""
    data = tmp_path / "site.csv"
    data.write_text("a,b\n1,2\n")
    req = N.make_request({"site-id": "clinic-1", "data-path": str(data), "cache-dir": str(tmp_path / "cache")},
                         "tabular", "{}", 0)
    N.load_node(req, loader, N.NodeCache())
    assert len(loader.calls) == 1 and len(list((tmp_path / "cache").glob("site-*.pkl"))) == 1
    again = N.load_node(req, loader, N.NodeCache())  # a fresh process: empty memory, same disk
    assert len(loader.calls) == 1 and again.loaded.site.site_id == "clinic-1"
    monkeypatch.setattr(N, "code_fingerprint", lambda: "other-code")
    N.load_node(req, loader, N.NodeCache())
    assert len(loader.calls) == 2 and len(list((tmp_path / "cache").glob("site-*.pkl"))) == 2


def test_code_fingerprint_reads_the_toolkit_source():
    fingerprint = N.code_fingerprint()
    assert len(fingerprint) == 16 and fingerprint == N.code_fingerprint()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(N.__file__))))
    assert all(os.path.isdir(os.path.join(root, p)) for p in N.SOURCE_PACKAGES)
