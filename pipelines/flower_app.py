"""The Flower app objects named in ``pipelines/flwr_app/pyproject.toml``.

``client``: the FML ClientApp reading its site through the vertical (``pipelines.federate_node.load_site``).
``server``: the FML ServerApp; the run config is resolved with the vertical's typed config, the run keeps its
best-validated round (``round_selection``) and ends with the held-out evaluation and registration of ``fml run``
(``finish_federated_run``).

Only Flower and the light ``core.federation`` modules are imported here: every message a deployed
SuperNode handles starts a fresh process that imports this module.
"""
from __future__ import annotations

from core.federation.client import make_client_app
from core.federation.server import make_server_app
from pipelines.federate_node import load_site
from pipelines.federate_server import finish_federated_run, resolve_run, round_selection

client = make_client_app(load_site)
server = make_server_app(lambda context: resolve_run(dict(context.run_config)), finish_federated_run,
                         select=round_selection)
