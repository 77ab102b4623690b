"""MLflow logging of a federated run through ``core.tracking``: params, per-round metrics, events.

Per round: ``train/*`` (clients' mean metrics), ``fed/clients`` (accepted updates), ``fed/sampled``,
``fed/rejected``, ``fed/lost``, ``fed/round_ms``; per federated evaluation ``val/<metric>/steps<s>``; per validation on the
coordinator (the round selection) ``val/<metric>``.
Every event (node joined/lost, update rejected, round skipped) goes to ``federation/events.json`` and,
if ``flower.event_log`` is set, to that JSON-lines file as it happens. Lost nodes and rejected updates
are also summarized in the run's tags ``fed.lost_nodes`` and ``fed.rejected_updates``; the tag ``fed.privacy``
says how the updates were protected (SecAgg+, DP-FedAvg, both or none).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional


def run_params(run: Any) -> dict[str, Any]:
    """The flat parameter table of a federated run (what MLflow shows)."""
    out: dict[str, Any] = {"vertical": run.vertical, "algorithm": run.algorithm, "seed": run.seed,
                           "engine": "flower"}
    for prefix, obj in (("inner", run.inner), ("fed", run.fed), ("server", run.server), ("flower", run.flower)):
        out.update({f"{prefix}.{f.name}": getattr(obj, f.name) for f in dataclasses.fields(obj)})
    out.update({f"data.{k}": v for k, v in run.data.items()})
    return out


class MlflowTracker:
    """Opens one MLflow run for the federated run (``with tracker: ...``)."""

    def __init__(self, run: Any, flower_run_id: Optional[int] = None, mode: str = "deployment") -> None:
        self.run, self.flower_run_id, self.mode = run, flower_run_id, mode
        self.run_id: Optional[str] = None
        self._events: list[dict[str, Any]] = []
        path = run.flower.event_log
        self._event_file = Path(path) if path else None

    def __enter__(self) -> "MlflowTracker":
        import mlflow

        from core import tracking
        from core.federation.secure_dp import privacy_mode

        tracking.setup_tracking()
        experiment = self.run.experiment or f"fml-{self.run.vertical}"
        exp_id = tracking.ensure_experiment(experiment)
        name = self.run.run_name or f"{self.run.vertical}-{self.run.algorithm}-seed{self.run.seed}-flower"
        active = mlflow.start_run(experiment_id=exp_id, run_name=name)
        self.run_id = active.info.run_id
        mlflow.log_params({k: str(v)[:500] for k, v in run_params(self.run).items()})
        mlflow.set_tags({"engine": "flower", "flower.mode": self.mode, "vertical": self.run.vertical,
                         "algorithm": self.run.algorithm, "flower.run_id": str(self.flower_run_id or ""),
                         "fed.privacy": privacy_mode(self.run.fed, self.run.flower)})
        if self.run.extra is not None:
            from core.config import to_plain

            mlflow.log_dict(to_plain(self.run.extra), "config.yaml")
        if self._event_file is not None:
            self._event_file.parent.mkdir(parents=True, exist_ok=True)
        return self

    def log_round(self, server_round: int, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics({_key(k): float(v) for k, v in metrics.items()}, step=server_round)

    def log_event(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        if self._event_file is not None:
            with self._event_file.open("a") as fh:
                fh.write(json.dumps(event, default=str) + "\n")

    def log_summary(self) -> None:
        import mlflow

        lost = [f"round {e.get('round')}: {e.get('site')} (node {e.get('node')}): {e.get('reason')}"
                for e in self._events if e.get("kind") == "node_lost"]
        rejected = [f"round {e.get('round')}: {e.get('site')}: {e.get('reason')}"
                    for e in self._events if e.get("kind") == "update_rejected"]
        mlflow.set_tags({"fed.lost_nodes": "; ".join(lost)[:4900] or "none",
                         "fed.rejected_updates": "; ".join(rejected)[:4900] or "none"})
        mlflow.log_dict(self._events, "federation/events.json")

    def log_meta(self, meta: dict) -> None:
        """The final meta-parameters as ``federation/meta.pt`` (``torch.load`` gives ``{name: Tensor}``)."""
        import tempfile

        import mlflow
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "meta.pt"
            torch.save({k: v.detach().cpu() for k, v in meta.items()}, path)
            mlflow.log_artifact(str(path), "federation")

    def __exit__(self, exc_type, exc, tb) -> None:
        import mlflow

        if self._events:
            try:
                self.log_summary()
            except Exception:  # never mask the run's own error
                pass
        mlflow.end_run(status="FAILED" if exc_type is not None else "FINISHED")


def _key(name: str) -> str:
    """MLflow metric names allow ``/`` but not every character a vertical's metric might use."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
