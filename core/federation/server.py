"""The FML ``ServerApp``: resolve the run, drive the rounds, log to MLflow, then the finish hook.

``make_server_app(resolve, finish, select=...)``: ``resolve(context) -> FederatedRun`` turns the Flower run
config into a run (the pipeline layer does it with the vertical's typed config); ``select(run) ->
RoundSelection | None`` validates the meta-parameters on the validation sites every ``fed.val_every`` rounds so
that the run keeps its best-validated round; ``finish(run, result, tracker)`` runs inside the same MLflow run
after the last round (the pipeline's held-out evaluation and registration, as ``fml run`` does). Both read the
held-out sites on the coordinator, so both are off with ``flower.finish=false``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from core.federation.settings import FederatedRun

if TYPE_CHECKING:
    from core.federation.selection import RoundSelection

Resolver = Callable[[Context], FederatedRun]
FinishHook = Callable[[FederatedRun, Any, Any], Any]
SelectHook = Callable[[FederatedRun], Optional["RoundSelection"]]


def run_federation(grid: Grid, context: Context, run: FederatedRun, finish: Optional[FinishHook] = None,
                   mode: str = "deployment", select: Optional[SelectHook] = None):
    """Drive ``run`` on ``grid`` inside one MLflow run; returns the ``DriverResult``.

    In a deployment, ``$FML_SITE_BINDINGS`` (set by ``fml federate superlink --supernode-keys``) binds each
    authenticated node to the one site it may serve (``core.federation.bindings``)."""
    from core.federation.bindings import bindings_from_env
    from core.federation.driver import FederationDriver
    from core.federation.tracking import MlflowTracker

    bindings = bindings_from_env() if mode == "deployment" else None  # read before any MLflow run is opened
    # built before the first round: a coordinator that cannot read the validation sites fails now, not after training
    selection = select(run) if select is not None and run.flower.finish else None
    with MlflowTracker(run, flower_run_id=getattr(context, "run_id", None), mode=mode) as tracker:
        driver = FederationDriver(grid, context, run, on_round=tracker.log_round, on_event=tracker.log_event,
                                  bindings=bindings, selection=selection)
        result = driver.run_all()
        tracker.log_summary()
        result.mlflow_run_id = tracker.run_id
        if finish is not None and run.flower.finish:
            result.finish = finish(run, result, tracker)
        else:  # no logged model: keep the meta-parameters as the run's artifact
            tracker.log_meta(result.meta)
    return result


def make_server_app(resolve: Resolver, finish: Optional[FinishHook] = None, mode: str = "deployment",
                    results: Optional[list] = None, select: Optional[SelectHook] = None) -> ServerApp:
    """The ``ServerApp``; ``results`` (if given) receives each run's ``DriverResult`` (simulation, tests)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        result = run_federation(grid, context, resolve(context), finish, mode, select)
        if results is not None:
            results.append(result)

    return app
