"""MLflow: the one place the engine talks to tracking and the Model Registry.

Embedded default (no server): tracking and registry in ``sqlite:///$FML_HOME/mlflow.db`` with
artifacts under ``$FML_HOME/artifacts`` (``FML_HOME`` defaults to ``~/.fml``). ``MLFLOW_TRACKING_URI``
overrides it (e.g. a team server started with ``mlflow/serve.sh``).

A meta-initialization is an ``mlflow.pytorch`` model with signature and input example, plus
``extra_files/fml.json`` (vertical, algorithm, chosen adaptation settings, preprocessing) and, for
Meta-SGD, ``extra_files/inner_lrs.pt``. A run's model is a small BUNDLE: the model itself is the
default candidate and ``extra_files/candidates.pt`` holds the other starting points a new site chooses
among (their recipes are in ``fml.json``). Loading needs only the registry.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from torch import nn

from core.devices import to_device
from core.types import Params

META_FILE = "fml.json"
LRS_FILE = "inner_lrs.pt"
CANDIDATES_FILE = "candidates.pt"


class RegistryError(RuntimeError):
    """A registry lookup failed (unknown model, alias, or unreachable server)."""


def fml_home() -> Path:
    return Path(os.environ.get("FML_HOME", Path.home() / ".fml")).expanduser()


def embedded_uri() -> str:
    return f"sqlite:///{fml_home() / 'mlflow.db'}"


def tracking_uri() -> str:
    """The configured store's URI (no side effect: error messages use it too)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri()


def setup_tracking() -> str:
    """Point MLflow (tracking + registry) at the configured store; returns the URI. The embedded store's
    folder must be writable (one clear error otherwise), and the store is created (or migrated) under a
    file lock, so two first runs at once do not both build its schema."""
    uri = tracking_uri()
    if uri == embedded_uri():
        home = fml_home()
        try:
            home.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=home, prefix=".write-check-"):
                pass
        except OSError as err:
            raise RegistryError(f"FML_HOME {home} is not a writable folder ({err.strerror}): the embedded MLflow "
                                "store needs one; set FML_HOME to a writable folder or MLFLOW_TRACKING_URI to a "
                                "server") from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri == embedded_uri():
        import fcntl

        with open(fml_home() / ".mlflow-store.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            MlflowClient().search_experiments(max_results=1)
    return uri


def ensure_experiment(name: str) -> str:
    """Experiment id of ``name``, created with a predictable artifact folder for the embedded store."""
    client = MlflowClient()
    try:
        exp = client.get_experiment_by_name(name)
    except MlflowException as err:
        raise RegistryError(f"MLflow tracking store {tracking_uri()} is unreachable: {err}") from err
    if exp is not None:
        return exp.experiment_id
    location = None
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so compare with the embedded address itself
    if tracking_uri() == embedded_uri():
        location = (fml_home() / "artifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as err:
        # another process created it first, or a timed-out request was retried after it had succeeded
        exp = client.get_experiment_by_name(name) if err.error_code == "RESOURCE_ALREADY_EXISTS" else None
        if exp is None:
            raise
        return exp.experiment_id


def owner_tags() -> dict[str, str]:
    """Tags naming the process that runs an MLflow run, so a later start can tell a run that was killed
    (SIGKILL, a crash of the machine) from one still running: :func:`close_orphaned_runs`."""
    import socket

    return {"fml.host": socket.gethostname(), "fml.pid": str(os.getpid())}


def close_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of ``experiment_id`` started on this host by a process that no longer
    exists (it cannot have finished: a finished run is never left RUNNING). Returns their run ids."""
    import socket

    client, host, closed = MlflowClient(), socket.gethostname(), []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("fml.host") != host or not tags.get("fml.pid", "").isdigit():
            continue
        try:
            os.kill(int(tags["fml.pid"]), 0)
            continue  # still alive (or the pid was reused): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        client.set_terminated(run.info.run_id, status="KILLED")
        client.set_tag(run.info.run_id, "fml.closed_by", f"pid {os.getpid()}: its process had ended")
        closed.append(run.info.run_id)
    return closed


def log_meta_init(model: nn.Module, meta: Params, info: dict[str, Any], input_example: torch.Tensor,
                  name: str = "meta_init", others: Optional[dict[str, Params]] = None) -> str:
    """Log ``model`` carrying ``meta`` as an MLflow model in the active run; returns its model URI.
    ``others`` (candidate name -> meta-parameters) are stored beside it as the bundle's other candidates.
    Everything is saved from the CPU, whatever device the run computed on: the model loads anywhere."""
    meta, others = to_device(meta, "cpu"), to_device(others, "cpu")
    model = _with_params(model, meta).cpu()  # a copy: the caller's model stays where it is
    with torch.no_grad():
        out = model(input_example)
    signature = infer_signature(input_example.numpy(), out.numpy())
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / META_FILE]
        files[0].write_text(json.dumps(info, indent=2, default=str))
        lrs = {k[len("inner_lr/"):]: v for k, v in meta.items() if k.startswith("inner_lr/")}
        if lrs:
            torch.save(lrs, Path(tmp) / LRS_FILE)
            files.append(Path(tmp) / LRS_FILE)
        if others:
            torch.save({n: {k: v.detach() for k, v in p.items()} for n, p in others.items()}, Path(tmp) / CANDIDATES_FILE)
            files.append(Path(tmp) / CANDIDATES_FILE)
        model_info = mlflow.pytorch.log_model(
            model, name=name, signature=signature, input_example=input_example.numpy(),
            extra_files=[str(f) for f in files],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    return model_info.model_uri


def _with_params(model: nn.Module, meta: Params) -> nn.Module:
    import copy

    clone = copy.deepcopy(model)
    state = {k: v for k, v in meta.items() if not k.startswith("inner_lr/")}
    clone.load_state_dict({**clone.state_dict(), **state})
    return clone.eval()


@dataclass
class LoadedModel:
    """A downloaded model. ``candidates`` maps every starting point of the bundle (the default
    ``info["algorithm"]`` included) to its meta-parameters."""

    model: nn.Module
    meta: Params
    info: dict[str, Any]
    name: Optional[str]
    version: Optional[str]
    uri: str
    candidates: dict[str, Params]
    size_bytes: int
    load_seconds: float


def resolve_version(uri: str) -> tuple[Optional[str], Optional[str]]:
    """(name, version) of a ``models:/name@alias`` or ``models:/name/version`` URI; errors are readable.

    A logged model's own URI (``models:/m-<id>``, the run's ``meta_init_uri`` tag) is not a registry entry:
    ``(None, None)``."""
    if not uri.startswith("models:/"):
        return None, None
    rest = uri[len("models:/"):]
    if "/" not in rest and "@" not in rest and rest.startswith("m-"):
        return None, None
    client = MlflowClient()
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return name, client.get_model_version_by_alias(name, alias).version
        name, _, version = rest.partition("/")
        if not version:
            raise RegistryError(f"model URI {uri!r} needs an alias or version: models:/{name}@champion")
        return name, client.get_model_version(name, version).version
    except MlflowException as err:
        msg = str(err).splitlines()[0]
        raise RegistryError(
            f"cannot resolve {uri!r} in the registry at {tracking_uri()}: {msg}. "
            "Run `fml models` to list registered models, or `fml run <vertical>` to create one."
        ) from None


def load_meta_init(uri: str) -> LoadedModel:
    """Download a logged meta-initialization (or personalized model) with its FML metadata."""
    start = time.perf_counter()
    name, version = resolve_version(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as err:
        raise RegistryError(f"cannot download {uri!r} from {tracking_uri()}: {str(err).splitlines()[0]}") from None
    model = mlflow.pytorch.load_model(str(local), map_location="cpu")
    info = json.loads((local / "extra_files" / META_FILE).read_text())
    meta: Params = {k: v.detach() for k, v in model.named_parameters()}
    lrs_path = local / "extra_files" / LRS_FILE
    if lrs_path.exists():
        meta.update({f"inner_lr/{k}": v for k, v in torch.load(lrs_path, map_location="cpu", weights_only=True).items()})
    candidates = {str(info.get("algorithm", "default")): meta}
    others_path = local / "extra_files" / CANDIDATES_FILE
    if others_path.exists():
        candidates.update(torch.load(others_path, map_location="cpu", weights_only=True))
    size = sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
    return LoadedModel(model, meta, info, name, version, uri, candidates, size, time.perf_counter() - start)


def register(model_uri: str, name: str, tags: dict[str, Any], headline: str, value: float,
             higher_is_better: bool, describe: Optional[Callable[[str], str]] = None) -> tuple[str, str, str]:
    """Register ``model_uri`` as a new version of ``name``; alias ``champion`` if it beats the current
    champion's held-out headline, else ``challenger``; ``describe(version)`` gives the version's Markdown
    description (its model card). Returns (version, alias, reason). A failure after the version was
    created deletes it, so no partial version remains."""
    client = MlflowClient()
    mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    try:
        if describe is not None:
            client.update_model_version(name, mv.version, description=describe(mv.version))
        client.set_model_version_tag(name, mv.version, "headline_metric", headline)
        client.set_model_version_tag(name, mv.version, "headline_value", repr(float(value)))
        client.set_model_version_tag(name, mv.version, "higher_is_better", str(higher_is_better))
        alias, reason = decide_alias(client, name, value, higher_is_better, tags.get(IDENTITY_TAG))
        client.set_registered_model_alias(name, alias, mv.version)
        client.set_model_version_tag(name, mv.version, "alias_decision", reason)
        return mv.version, alias, reason
    except Exception:
        client.delete_model_version(name, mv.version)
        raise


IDENTITY_TAG = "evaluation_identity"


def decide_alias(client: MlflowClient, name: str, value: float, higher_is_better: bool,
                 identity: Optional[str] = None) -> tuple[str, str]:
    """``champion`` when ``value`` beats the current champion's held-out headline, else ``challenger``.
    Held-out values compare only between versions with the same evaluation ``identity`` (dataset, held-out
    sites and protocol, :func:`evaluation_identity`): a version evaluated otherwise is a challenger, and
    the reason says why."""
    try:
        champ = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return "champion", "first version with a held-out score"
    theirs = champ.tags.get(IDENTITY_TAG)
    if identity and theirs and theirs != identity:
        return "challenger", (f"not comparable with champion v{champ.version}: evaluated on another dataset, other "
                              f"held-out sites or another protocol ({IDENTITY_TAG} {identity} vs {theirs}); register "
                              "under another --tracking.model-name, or move @champion by hand")
    best = float(champ.tags.get("headline_value", "nan"))
    if math.isnan(best):
        return "champion", f"current champion v{champ.version} has no held-out score"
    better = value > best if higher_is_better else value < best
    verdict = "beats" if better else "does not beat"
    return ("champion" if better else "challenger"), f"{value:.4f} {verdict} champion v{champ.version} ({best:.4f})"


def evaluation_identity(**facts: Any) -> str:
    """A short hash of what makes two held-out values comparable (dataset fingerprint, roles, protocol)."""
    import hashlib

    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _short(value: str) -> str:
    try:
        return f"{float(value):.4f}"
    except ValueError:
        return value


def _dataset_columns(tags: dict[str, str]) -> dict[str, str]:
    """``dataset`` (its name) and ``fingerprint`` (the data's sha256, 12 characters) of a version; versions
    registered before datasets had names carry the fingerprint alone, in their ``dataset`` tag."""
    if "data_sha256" in tags:
        return {"dataset": tags.get("dataset", ""), "fingerprint": tags["data_sha256"][:12]}  # a site model's is whole
    return {"dataset": "", "fingerprint": tags.get("dataset", "")[:12]}


def dataset_models(vertical: str) -> list[str]:
    """Names of the registered models of ``vertical`` that ``fml run`` registered (one per dataset; onboarded
    site models excluded) and that have a ``champion``: ``fml-<vertical>`` first, then by name."""
    client = MlflowClient()
    try:
        models = client.search_registered_models(filter_string=f"name LIKE 'fml-{vertical}%'")
    except MlflowException as err:
        raise RegistryError(f"registry at {tracking_uri()} is unreachable: {str(err).splitlines()[0]}") from None
    names = []
    for rm in models:
        version = (rm.aliases or {}).get("champion")
        if version is None:
            continue
        tags = client.get_model_version(rm.name, version).tags
        if tags.get("vertical") == vertical and "run_id" in tags and "site_id" not in tags:
            names.append(rm.name)
    return sorted(names, key=lambda n: (n != f"fml-{vertical}", n))


def list_models(prefix: str = "fml-") -> list[dict[str, Any]]:
    client = MlflowClient()
    try:
        models = client.search_registered_models()
    except MlflowException as err:
        raise RegistryError(f"registry at {tracking_uri()} is unreachable: {str(err).splitlines()[0]}") from None
    out = []
    for rm in models:
        if not rm.name.startswith(prefix):
            continue
        aliases = {v: a for a, v in (rm.aliases or {}).items()}
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            out.append({"name": rm.name, "version": mv.version, "alias": aliases.get(mv.version, ""),
                        "algorithm": mv.tags.get("algorithm", ""), "candidates": mv.tags.get("candidates", ""),
                        "metric": mv.tags.get("headline_metric", ""),
                        "value": _short(mv.tags.get("headline_value", "")), "site": mv.tags.get("site_id", ""),
                        **_dataset_columns(mv.tags), "identity": mv.tags.get(IDENTITY_TAG, "")[:8],
                        "size_mb": mv.tags.get("bundle_mb", ""), "load_s": mv.tags.get("load_seconds", "")})
    return sorted(out, key=lambda r: (r["name"], -int(r["version"])))
