"""A site served by two nodes: the roster keeps the first, refuses the second with a reason that names
both and the fix, and the run goes on with the first (issue 17)."""
from __future__ import annotations

import pytest

pytest.importorskip("flwr")

from flwr.app import Context, RecordDict  # noqa: E402

from core.federation.client import make_client_app  # noqa: E402
from core.federation.driver import FederationDriver  # noqa: E402
from pipelines.federate_node import load_site  # noqa: E402
from test_flower_driver import MemoryGrid, make_run, server_identity, sites  # noqa: E402,F401  (autouse fixture)


def test_a_second_node_for_a_served_site_is_refused_and_the_run_goes_on() -> None:
    grid = MemoryGrid(make_client_app(load_site), [*sites(), "train-002"])  # nodes 1000..1004, then 1005
    driver = FederationDriver(grid, Context(1, 0, {}, RecordDict(), {}), make_run(**{"fed.rounds": 1}))
    result = driver.run_all()
    assert driver.roster.refused == {1005: "site 'train-002' is already served by node 1002; a site has one node: "
                                           "stop this one or start it with another site-id"}
    assert sorted(n.site_id for n in driver.roster.nodes.values()) == sites()
    refused = [e for e in result.events if e["kind"] == "node_refused"]
    assert [(e["node"], e["site"]) for e in refused] == [(1005, "train-002")] and len(result.rounds) == 1
