"""The model card: the Markdown description of a registered version, shown by the MLflow UI and
``MlflowClient.get_model_version(...).description``. It says what the model was trained on, how its
starting points compare with the tuned FedAvg baseline on held-out sites, and how to onboard with it."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import pandas as pd

from core.evaluation import BASELINE
from core.site_statistics import describe


def _cell(mean: float, low: float, high: float, signed: bool = False) -> str:
    fmt = "{:+.4f}" if signed else "{:.4f}"
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def heldout_table(summary: pd.DataFrame, paired: pd.DataFrame, headline: str, shots: int, steps: int) -> str:
    """Markdown rows: every method's held-out headline at (shots, steps), pooled over the test sites, with its
    paired difference against ``fedavg+ft`` on the same draws."""
    cells = summary[(summary["site"] == "ALL") & (summary["metric"] == headline) & (summary["shots"] == shots)
                    & (summary["steps"].isin([steps, 0]))]
    lines = [f"| method | {headline} [95% CI] | minus `{BASELINE}` [95% CI] |", "|---|---|---|"]
    for method, part in cells.groupby("method", sort=True):
        row = part[part["steps"] == steps] if (part["steps"] == steps).any() else part
        r = row.iloc[0]
        diff = paired[(paired["site"] == "ALL") & (paired["method"] == method) & (paired["shots"] == shots)
                      & (paired["steps"] == r["steps"])] if not paired.empty else paired
        d = _cell(*diff.iloc[0][["mean_diff", "ci95_low", "ci95_high"]], signed=True) if len(diff) else "-"
        d = "(the baseline)" if method == BASELINE else d
        lines.append(f"| `{method}` | {_cell(r['mean'], r['ci95_low'], r['ci95_high'])} | {d} |")
    return "\n".join(lines)


DEFAULT_DATA = "the vertical's default data"
OTHER_DATA = "not the vertical's default data: models trained on it register under their own name"


def schema_line(schema: dict[str, Any], limit: int = 12) -> str:
    """The schema in one Markdown line: each key with its value (lists shortened to ``limit`` items)."""
    def show(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            head = ", ".join(f"`{v}`" for v in value[:limit])
            return f"{len(value)} ({head}{' ...' if len(value) > limit else ''})"
        return f"`{value}`"

    return "; ".join(f"{key}: {show(value)}" for key, value in schema.items())


def model_card(*, vertical: str, name: str, version: str, fingerprint: dict[str, Any], bundle: list[Any],
               default_reason: str, summary: pd.DataFrame, paired: pd.DataFrame, headline: str,
               higher_is_better: bool, shots: int, run_id: str, site_statistics: Any = None,
               dataset: Any = None, onboard_args: str = "--data NEW_SITE_FILE",
               kept_rounds: Optional[Mapping[str, str]] = None) -> str:
    """The Markdown card of version ``version`` of ``name`` (``bundle``: the candidates, default first;
    ``dataset``: its :class:`pipelines.dataset_identity.DatasetIdentity`; ``onboard_args``: what a new site passes
    to ``fml onboard``, the vertical's ``VerticalSpec.onboard_args``; ``kept_rounds``: trained model -> the
    round(s) whose parameters it holds, in words: ``pipelines.run.kept_rounds``)."""
    best = bundle[0]
    roles = fingerprint.get("roles", {})
    sites = "; ".join(f"{role}: {', '.join(map(str, ids[:12]))}{' ...' if len(ids) > 12 else ''}"
                      for role, ids in roles.items() if ids)
    candidates = ", ".join(f"`{m.name}` ({m.best_steps} steps at {m.rate_text}, recipe `{m.recipe}`)" for m in bundle)
    inputs = (f"{describe(site_statistics)}: onboarding does the same with the new site's inputs (`--unlabeled FILE` "
              "adds more)" if site_statistics else "inputs use the preprocessing fitted on the training sites")
    verdict = ("the tuned FedAvg baseline is the default: no FML algorithm beat it clearly"
               if best.name == BASELINE else
               f"the FedAvg model with recipe `{best.recipe}` is the default: no FML algorithm beat it clearly"
               if best.name.startswith("fedavg+") else f"`{best.name}` is the default")
    direction = "higher" if higher_is_better else "lower"
    dataset_lines = "" if dataset is None else (
        f"- dataset: `{dataset.name}` ({DEFAULT_DATA if dataset.default else OTHER_DATA})\n"
        f"- schema (sha256 `{dataset.schema_sha256[:16]}...`): {schema_line(dataset.schema)}\n")
    kept = "".join(f"- `{algorithm}`: {words}\n" for algorithm, words in sorted((kept_rounds or {}).items()))
    training = f"\n## Meta-training: the parameters kept\n{kept}" if kept else ""
    return f"""# {name} v{version}: `{vertical}`

**Default starting point: `{best.name}`** ({best.best_steps} adaptation steps at {best.rate_text});
{verdict}. Why: {default_reason}.

**Candidates in this bundle:** {candidates}. `fml onboard` chooses one per new site by cross-validation on
that site's own labelled support set: the tuned FedAvg model unless another candidate is clearly better there,
and the default above when the support is too small to split.

## Data
{dataset_lines}- dataset fingerprint: sha256 `{fingerprint.get('sha256', '?')[:16]}...`, {fingerprint.get('rows', '?')} rows,
  {fingerprint.get('sites', '?')} sites
- inputs: {inputs}
- sites by role: {sites or 'not recorded'}
{training}
## Held-out test sites ({shots} shots, {best.best_steps} steps; {headline}, {direction} is better)
Pooled over the test sites and their support draws; `auto` is the per-site choice a new site gets;
`ensemble` (where listed) averages the bundle's adapted candidates: `--candidate ensemble` takes it.

{heldout_table(summary, paired, headline, shots, best.best_steps)}

## Onboard a new site
```
fml onboard {vertical} {onboard_args} --model models:/{name}/{version} --shots {shots}
```
(`fml onboard {vertical} --help` lists the vertical's data options.) Run `{run_id}` has every table and plot.
"""
