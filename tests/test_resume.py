"""``fml run --resume``: a run interrupted during meta-training continues in the same MLflow run and ends
with exactly the tables of an uninterrupted run; a fresh run never trips over a stale checkpoint."""
from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import verticals
from core.learner import MetaLearner
from core.vertical import VERTICALS
from pipelines.config import load_preset
from pipelines.run import run_pipeline
from pipelines.run_state import STATE_FILE, ResumeError

verticals.load_all()


def tiny(out, **kw):
    spec = VERTICALS.get("sine")
    cfg = load_preset(spec, "quick")
    cfg.data.train_sites, cfg.data.validation_sites, cfg.data.test_sites = 12, 2, 2
    cfg.algorithms = ["fomaml", "reptile"]
    cfg.fed.rounds, cfg.fed.val_every, cfg.fed.clients_per_round = 20, 5, 4
    cfg.eval.shots, cfg.eval.steps, cfg.eval.draws, cfg.eval.select_draws = [5], [0, 1], 2, 1
    cfg.tracking.register = False
    cfg.output_dir = str(out)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return spec, cfg


def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path, fml_home, monkeypatch):
    spec, cfg = tiny(tmp_path / "whole")
    whole = run_pipeline(spec, cfg, progress=False)

    spec, cfg = tiny(tmp_path / "cut")
    original = MetaLearner.training_step

    def interrupt(self, batch, batch_idx):
        if self.algorithm.name == "reptile" and self.global_step == 12:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(MetaLearner, "training_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(spec, cfg, progress=False)
    monkeypatch.setattr(MetaLearner, "training_step", original)
    assert (tmp_path / "cut" / "checkpoints" / "reptile" / "last.ckpt").exists()
    with pytest.raises(ResumeError, match="options differ"):
        run_pipeline(spec, tiny(tmp_path / "cut", seed=5, resume=True)[1], progress=False)

    spec, cfg = tiny(tmp_path / "cut", resume=True)
    resumed = run_pipeline(spec, cfg, progress=False)
    interrupted = [r for r in MlflowClient().search_runs([MlflowClient().get_experiment_by_name("fml-sine").experiment_id])
                   if r.info.run_id != whole.run_id]
    assert [r.info.run_id for r in interrupted] == [resumed.run_id]  # the same MLflow run, reopened
    pd.testing.assert_frame_equal(whole.summary, resumed.summary)
    pd.testing.assert_frame_equal(whole.paired, resumed.paired)
    run = MlflowClient().get_run(resumed.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    with pytest.raises(ResumeError, match="finished; nothing to resume"):
        run_pipeline(spec, cfg, progress=False)


def test_resume_without_an_interrupted_run_says_so(tmp_path, fml_home):
    spec, cfg = tiny(tmp_path / "empty", resume=True)
    with pytest.raises(ResumeError, match=f"{STATE_FILE} does not exist"):
        run_pipeline(spec, cfg, progress=False)


def test_a_fresh_run_clears_stale_checkpoints(tmp_path, fml_home):
    spec, cfg = tiny(tmp_path / "again")
    run_pipeline(spec, cfg, progress=False)
    run_pipeline(spec, cfg, progress=False)
    names = sorted(p.name for p in (tmp_path / "again" / "checkpoints" / "fedavg").iterdir())
    assert "last.ckpt" in names and not any(n.startswith("last-v") for n in names)
