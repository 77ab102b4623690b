"""No process-wide side effects at import; the CLI sets its warnings and logging by name (issue 17)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import _process_probe as probe

PROBE = Path(probe.__file__)


def _python(*args: str, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "PYTHONWARNINGS", "FML_NUM_THREADS")}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=probe.ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_importing_the_toolkit_changes_no_global_state(tmp_path) -> None:
    """Importing every module of core, data_adapters, verticals and pipelines (their dependencies imported
    first: what those set is theirs) leaves warnings filters, matplotlib's backend, logging levels, filters
    and handlers, the environment and torch's threads as they were."""
    deps = tmp_path / "deps.txt"
    deps.write_text(_python(str(PROBE), "dependencies"))
    assert "torch" in deps.read_text().split()
    assert json.loads(_python(str(PROBE), "imports", str(deps)).strip().splitlines()[-1]) == {}


def test_the_probe_sees_each_kind_of_change() -> None:
    before = probe.state()
    after = json.loads(json.dumps(before))
    after["warnings.filters"].insert(0, "('ignore', None, <class 'Warning'>, None, 0)")
    after["matplotlib backend"] = "'agg'"
    after["logging levels"]["absl"] = 40
    after["logging filters"][""] += 1
    after["environment"]["PYTHONWARNINGS"] = "ignore"
    changed = probe.diff(before, after)
    assert set(changed) == {"warnings.filters", "matplotlib backend", "logging levels", "logging filters",
                            "environment"}


CLI_SETUP = r"""
import logging, warnings
import mlflow, pytorch_lightning, torch  # their own import-time filters are theirs
from pipelines.process_setup import configure_process
before = list(warnings.filters)
configure_process()
added = [f for f in warnings.filters if f not in before]
assert added and all(f[0] == "ignore" and f[3] is not None for f in added), added  # each names its libraries

def shown(category, module):
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit("notice", category, module.replace(".", "/") + ".py", 1, module=module, registry={})
    return bool(seen)

assert not shown(DeprecationWarning, "mlflow.store.tracking.sqlalchemy_store")
assert not shown(FutureWarning, "pytorch_lightning.utilities._pytree")
assert not shown(UserWarning, "lightning.pytorch.trainer.connectors.data_connector")
assert shown(FutureWarning, "core.learner")               # the toolkit's own deprecations still show
assert shown(FutureWarning, "my_site_script")             # and the user's
assert shown(UserWarning, "mlflow.models.signature")      # a library's warning about the user's data
assert shown(RuntimeWarning, "torch.nn.modules.module")

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
absl = logging.getLogger("absl")
absl.addHandler(Keep())
absl.warning("_compute_log_a_frac failed to converge after %d iterations", 1000)
absl.warning("another absl warning")
assert records == ["another absl warning"], records
assert logging.getLogger("mlflow").level == logging.ERROR and logging.getLogger("core").level == logging.NOTSET
assert torch.get_num_threads() == 1
configure_process()  # twice (tests, a REPL): no duplicate filters on loggers
assert len([f for f in absl.filters]) == 1
print("ok")
"""


def test_the_cli_quiets_named_warnings_and_loggers_only() -> None:
    assert _python("-c", CLI_SETUP).strip().endswith("ok")
