"""The ``fml`` process's global settings, made in ONE place when a command starts (never at import).

Importing ``core``, ``data_adapters``, ``verticals`` or ``pipelines`` changes no warnings filter, logging
level, matplotlib backend or environment variable (``tests/test_process_state.py``): a library must not
silence its caller. The CLI, which owns its process, calls :func:`configure_process`:

- one torch thread (``FML_NUM_THREADS``): the toolkit's models are small;
- deprecation notices raised inside the toolkit's DEPENDENCIES about their own dependencies are hidden,
  each rule naming the library (:data:`QUIET_WARNINGS`); a deprecation in the toolkit's or the user's own
  code, and every other warning (data problems, a round that cannot be traced, ...), still shows;
- the chatty loggers are raised to ERROR by name (:data:`QUIET_LOGGERS`), and absl's one message per RDP
  order the privacy accountant cannot evaluate is dropped (:data:`DROPPED_LOG_MESSAGES`);
- MLflow's progress bars off and its HTTP retries short (``setdefault``: the user's settings win).
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class WarningRule:
    """Ignore ``category`` when the warning is attributed to a module matching ``module`` (a regex)."""

    category: type[Warning]
    module: str
    why: str


_DEPENDENCIES = r"(pytorch_lightning|lightning_fabric|lightning|mlflow|sqlalchemy|alembic|pandas|flwr|ray|monai" \
                r"|gymnasium|optuna|tyro|omegaconf|torch|torchvision|timm|pydantic|google|dp_accounting|absl" \
                r"|sklearn|scipy|nibabel|pydicom|matplotlib|PIL|pyarrow)\."

QUIET_WARNINGS: tuple[WarningRule, ...] = (
    *(WarningRule(category, _DEPENDENCIES, "a dependency's notice about an API it uses (e.g. Lightning's "
                  "LeafSpec FutureWarning, MLflow's SQLAlchemy noload and pandas Pandas4Warning)")
      for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning)),
    WarningRule(UserWarning, r"(pytorch_lightning|lightning_fabric|lightning)\.",
                "Lightning's advice for data loaders and loggers the toolkit does not use"),
)

QUIET_LOGGERS = ("lightning", "pytorch_lightning", "lightning.pytorch", "mlflow", "alembic")

#: (logger, start of the message): records dropped, the rest of the logger kept
DROPPED_LOG_MESSAGES = (("absl", "_compute_log_a_frac failed to converge"),)

#: Flower's SuperLink/SuperNode/app processes and Ray's workers start from this process's environment;
#: the environment's syntax cannot name a library, so there the deprecation categories are hidden whole
CHILD_PYTHONWARNINGS = "ignore::DeprecationWarning,ignore::FutureWarning"


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def configure_process() -> None:
    """Threads, warnings, logging and MLflow knobs of an ``fml`` command (see the module docstring)."""
    import torch

    # One torch thread is as fast on an idle CPU and up to 10x faster on a shared one (oversubscribed
    # OpenMP kernels spin). FML_NUM_THREADS=N overrides.
    torch.set_num_threads(int(os.environ.get("FML_NUM_THREADS", "1")))
    for rule in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", category=rule.category, module=rule.module)
    os.environ.setdefault("PYTHONWARNINGS", CHILD_PYTHONWARNINGS)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # an unreachable tracking server should fail in seconds, not after minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "6")
    # both set their loggers' levels when imported, so they are imported first and quieted after (every
    # command but `fml verticals` imports them anyway)
    import mlflow  # noqa: F401
    import pytorch_lightning  # noqa: F401

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, prefix in DROPPED_LOG_MESSAGES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))
