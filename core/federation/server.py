"""The FML ``ServerApp``: resolve the run, drive the rounds, log to MLflow, then the finish hook.

``make_server_app(resolve, finish)``: ``resolve(context) -> FederatedRun`` turns the Flower run config
into a run (the pipeline layer does it with the vertical's typed config); ``finish(run, result,
tracker)`` runs inside the same MLflow run after the last round (the pipeline's held-out evaluation and
registration, as ``fml run`` does).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from core.federation.settings import FederatedRun

Resolver = Callable[[Context], FederatedRun]
FinishHook = Callable[[FederatedRun, Any, Any], Any]


def run_federation(grid: Grid, context: Context, run: FederatedRun, finish: Optional[FinishHook] = None,
                   mode: str = "deployment"):
    """Drive ``run`` on ``grid`` inside one MLflow run; returns the ``DriverResult``.

    In a deployment, ``$FML_SITE_BINDINGS`` (set by ``fml federate superlink --supernode-keys``) binds each
    authenticated node to the one site it may serve (``core.federation.bindings``)."""
    from core.federation.bindings import bindings_from_env
    from core.federation.driver import FederationDriver
    from core.federation.tracking import MlflowTracker

    bindings = bindings_from_env() if mode == "deployment" else None  # read before any MLflow run is opened
    with MlflowTracker(run, flower_run_id=getattr(context, "run_id", None), mode=mode) as tracker:
        driver = FederationDriver(grid, context, run, on_round=tracker.log_round, on_event=tracker.log_event,
                                  bindings=bindings)
        result = driver.run_all()
        tracker.log_summary()
        result.mlflow_run_id = tracker.run_id
        if finish is not None and run.flower.finish:
            result.finish = finish(run, result, tracker)
        else:  # no logged model: keep the meta-parameters as the run's artifact
            tracker.log_meta(result.meta)
    return result


def make_server_app(resolve: Resolver, finish: Optional[FinishHook] = None, mode: str = "deployment",
                    results: Optional[list] = None) -> ServerApp:
    """The ``ServerApp``; ``results`` (if given) receives each run's ``DriverResult`` (simulation, tests)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        result = run_federation(grid, context, resolve(context), finish, mode)
        if results is not None:
            results.append(result)

    return app
