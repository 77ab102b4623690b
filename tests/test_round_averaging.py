"""``--eval.checkpoint-average``: the kept model is the mean of the meta-parameters at the last n validation
rounds, and a resumed run averages the same rounds as an uninterrupted one."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from core.learner import fit_meta_learner
from tests.test_core_learner import make_learner, problem  # noqa: F401  (the module's sine fixture)


class RecordEpochEnds(pl.Callback):
    """The meta-parameters at the end of every epoch (``val_every`` rounds), as the averaging sees them."""

    def __init__(self) -> None:
        self.states: list[tuple[int, dict[str, torch.Tensor]]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states.append((trainer.global_step, {k: v.clone() for k, v in pl_module.meta_params().items()}))


def test_the_kept_model_is_the_mean_of_the_last_validated_rounds(problem, tmp_path: Path) -> None:  # noqa: F811
    learner = make_learner(problem, "fomaml", 16)  # val_every 4: rounds 4, 8, 12, 16
    seen = RecordEpochEnds()
    fit_meta_learner(learner, progress=False, checkpoint_dir=str(tmp_path), monitor="val/mse", mode="min",
                     extra_callbacks=[seen], average_last=3)
    assert [step for step, _ in seen.states] == [4, 8, 12, 16] and learner.kept_rounds == [8, 12, 16]
    kept = learner.meta_params()
    for k, v in kept.items():
        mean = sum(state[k] for _, state in seen.states[1:]) / 3
        torch.testing.assert_close(v, mean, atol=1e-6, rtol=0, msg=lambda m: f"{k}: {m}")
    # the mean, not the last round (nor the best-validated round the checkpoint callback would restore)
    assert any(not torch.equal(kept[k], seen.states[-1][1][k]) for k in kept)
    best = [p for p in tmp_path.iterdir() if p.name.startswith("round")]
    best_state = torch.load(best[0], map_location="cpu", weights_only=False)["state_dict"]
    assert any(not torch.equal(v, best_state[k]) for k, v in learner.state_dict().items())
    # the checkpoint folder holds the kept (averaged) model too
    averaged = torch.load(tmp_path / "averaged.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert averaged.keys() == learner.state_dict().keys()
    for k, v in learner.state_dict().items():
        assert torch.equal(averaged[k], v), k


def test_a_resumed_run_averages_the_same_rounds(problem, tmp_path: Path) -> None:  # noqa: F811
    full = make_learner(problem, "fomaml", 16)
    fit_meta_learner(full, progress=False, average_last=3)
    first = make_learner(problem, "fomaml", 8)
    fit_meta_learner(first, progress=False, checkpoint_dir=str(tmp_path), average_last=3)
    resumed = make_learner(problem, "fomaml", 16)
    fit_meta_learner(resumed, progress=False, resume_from=str(tmp_path / "last.ckpt"), average_last=3)
    assert resumed.kept_rounds == full.kept_rounds == [8, 12, 16]
    a, b = full.meta_params(), resumed.meta_params()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=lambda m: f"{k}: {m}")


def test_a_negative_average_is_refused_naming_the_option() -> None:
    from core.config import RunConfig, check_run_config

    cfg = RunConfig(data=None)
    cfg.eval.checkpoint_average = -1
    with pytest.raises(ValueError, match=r"--eval.checkpoint-average -1 \(must be >= 0\)"):
        check_run_config(cfg)


def test_a_run_tags_the_rounds_each_model_keeps(tmp_path: Path, fml_home) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.run import run_pipeline
    from tests.test_resume import tiny

    spec, cfg = tiny(tmp_path / "best")  # 20 rounds, validated every 5
    run_id = run_pipeline(spec, cfg, progress=False).run_id  # sets the tracking URI the client reads
    tags = MlflowClient().get_run(run_id).data.tags
    for algorithm in ("fedavg", "fomaml", "reptile"):
        best = [p.name for p in (tmp_path / "best" / "checkpoints" / algorithm).iterdir() if p.name.startswith("round")]
        assert best == [f"roundstep={tags[f'{algorithm}.kept_rounds']}.ckpt"], algorithm  # the best-validated round
        assert tags[f"{algorithm}.kept_by"] == "validation"
    spec, cfg = tiny(tmp_path / "mean")
    cfg.eval.checkpoint_average = 2
    run_id = run_pipeline(spec, cfg, progress=False).run_id  # sets the tracking URI the client reads
    tags = MlflowClient().get_run(run_id).data.tags
    assert {tags[f"{a}.kept_rounds"] for a in ("fedavg", "fomaml", "reptile")} == {"15, 20"}
    assert {tags[f"{a}.kept_by"] for a in ("fedavg", "fomaml", "reptile")} == {"average"}
    assert (tmp_path / "mean" / "checkpoints" / "fomaml" / "averaged.ckpt").exists()
