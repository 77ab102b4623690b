"""The FML round on Flower: a ``ClientApp`` per site and a ``ServerApp`` that drives the rounds.

The same client update (``core.algorithms``), aggregation (``core.aggregation``) and server optimizer
(``core.server``) as the in-process engine, but each site computes its update on its own SuperNode and
only the update (a direction or adapted weights), its weight and scalar metrics leave the node.

Modules (import them directly; this package imports nothing heavy so a ClientApp process starts fast):

- ``settings``: ``FederatedRun`` (what to train) and ``FlowerSettings`` (how to run it on Flower).
- ``records``: parameters <-> ``ArrayRecord``, message config, update validation.
- ``node``: which site a node serves (node config) and its data, loaded once per process.
- ``client``: ``make_client_app(loader)`` -> the ``ClientApp`` (train / evaluate / query handlers).
- ``roster``: the server's view of the nodes (site, role, size; lost nodes).
- ``bindings``: node id -> site fixed by the node's registered key (SuperNode authentication).
- ``strategies``: the server rule: core aggregation + core optimizer, or a Flower strategy.
- ``secagg``: one round's secure aggregate through Flower's SecAgg+ workflow.
- ``selection``: which round's meta-parameters a run keeps (averaged, best-validated or last), as ``fml run``.
- ``driver``: the round loop (sampling, fault handling, logging).
- ``server``: ``make_server_app(resolve, finish, select=...)`` -> the ``ServerApp``.
"""
