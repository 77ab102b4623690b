"""Maintenance vertical: registration, episodes (fixed shapes, vmap == loop), few-shot tasks, metrics,
a short MetaLearner run, onboarding, and (when the files exist) the real FD001 federation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import core.algorithms  # noqa: F401  (registers the algorithms)
from core.algorithms.base import InnerConfig, get_algorithm
from core.config import FederatedConfig, ServerConfig
from core.learner import MetaLearner, fit_meta_learner
from core.rounds import client_updates
from core.vertical import VERTICALS
from data_adapters.cmapss import default_data_dir
from verticals.maintenance import MaintenanceData, load_new_site, prepare
from verticals.maintenance.metrics import nasa_score, rul_metrics
from verticals.maintenance.problem import eval_mask


@pytest.fixture(scope="module")
def small_dir(small_cmapss_dir: Path) -> Path:
    return small_cmapss_dir


def small_cfg(folder: Path, **kw) -> MaintenanceData:
    base = dict(path=str(folder / "train_FD001.txt"), units_per_site=4, window=12, stride=2, validation_sites=1,
                test_sites=1, train_units=2, query_units=1, windows_per_unit=8, support_windows=8, channels=4,
                hidden=8)
    base.update(kw)
    return MaintenanceData(**base)


@pytest.fixture(scope="module")
def problem(small_dir: Path):
    return prepare(small_cfg(small_dir), seed=0)


def test_registered_with_onboard_flag_and_presets() -> None:
    spec = VERTICALS.get("maintenance")
    assert spec.onboard_flags == {"rul": "rul_path"}
    assert spec.preset_path("quick").is_file() and spec.preset_path("full").is_file()


def test_presets_resolve_against_the_config_schema() -> None:
    from pipelines.config import load_preset

    spec = VERTICALS.get("maintenance")
    for preset in ("quick", "full"):
        cfg = load_preset(spec, preset)
        assert isinstance(cfg.data, MaintenanceData) and cfg.data.units_per_site == 10 and cfg.data.window == 30


def test_problem_shapes_and_preprocessing_is_json(problem) -> None:
    import json

    json.dumps(problem.preprocessing)
    assert problem.headline == "rmse_last" and not problem.higher_is_better
    x = problem.input_example()
    model = problem.make_model()
    assert model(x).shape == (2,)
    assert len(problem.federation.roles["train"]) == 4


def test_training_episodes_have_equal_shapes_and_vmap_equals_loop(problem) -> None:
    model = problem.make_model()
    meta = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    episodes = [problem.train_episode(s, meta, gen) for s in problem.train_site_ids()]
    assert len({(e.support[0].shape, e.query[0].shape) for e in episodes}) == 1
    assert episodes[0].support[0].shape == (2 * 8, 12, model.conv[0].in_channels)
    loss_fn = problem.loss_fn(model)
    for alg in ("fomaml", "reptile"):
        vec = client_updates(get_algorithm(alg), loss_fn, meta, episodes, InnerConfig(3, 0.05), vectorize=True)
        loop = client_updates(get_algorithm(alg), loss_fn, meta, episodes, InnerConfig(3, 0.05), vectorize=False)
        assert vec.vectorized and not loop.vectorized
        for k in vec.directions:
            torch.testing.assert_close(vec.directions[k], loop.directions[k], atol=1e-5, rtol=1e-4)


def test_few_shot_task_support_units_disjoint_from_scored_units(problem) -> None:
    site = problem.federation.role("test")[0]
    model = problem.make_model()
    task = problem.few_shot_task(model, site, 2, torch.Generator().manual_seed(1))
    assert task.support_batch[0].shape[0] == 2 * 8  # support_windows per unit
    assert int(task.last_eval.sum()) == len(site.metadata["units"]) - 2  # one evaluation window per other unit
    params = {k: v.detach() for k, v in model.named_parameters()}
    scores = task.score(params)
    assert {"rmse_last", "rmse_all", "nasa_score", "nasa_per_unit"} <= set(scores)
    sup_x = task.support_batch[0]
    assert not any(torch.equal(sup_x[0], task.x_eval[i]) for i in range(task.x_eval.shape[0]))
    with pytest.raises(ValueError, match="leave none to score"):
        problem.few_shot_task(model, site, 4, torch.Generator().manual_seed(1))


def test_one_engine_support_is_cross_validated_over_contiguous_stretches_of_its_life(problem) -> None:
    site = problem.federation.role("test")[0]
    task = problem.few_shot_task(problem.make_model(), site, 1, torch.Generator().manual_seed(1))
    folds = task.support_folds(5)
    assert folds is not None and len(folds) == 4  # one engine, 8 windows: 4 blocks of 2
    x = task.support_batch[0]
    for train, held in folds:
        assert len(held) == 1 and held[0][0].shape[0] == 2
        assert train[0].shape[0] == 6
        assert not any(torch.equal(h, t) for h in held[0][0] for t in train[0])


def test_eval_mask_one_window_per_unit(problem) -> None:
    site = problem.federation.role("train")[0]
    mask = eval_mask(site)
    assert int(mask.sum()) == len(torch.unique(site.groups))


def test_metrics_known_values() -> None:
    pred, true = torch.tensor([10.0, 20.0, 30.0]), torch.tensor([20.0, 10.0, 30.0])
    np.testing.assert_allclose(nasa_score(pred, true).numpy(), [math.exp(10 / 13) - 1, math.exp(1.0) - 1, 0.0],
                               rtol=1e-6)
    m = rul_metrics(pred, true, torch.tensor([True, True, False]))
    assert m["rmse_last"] == pytest.approx(10.0) and m["rmse_all"] == pytest.approx(math.sqrt(200 / 3))
    assert m["nasa_score"] == pytest.approx(math.exp(10 / 13) + math.exp(1.0) - 2, rel=1e-6)
    assert m["units"] == 2
    # late (+10) and early (-10) cancel in the bias, not in the RMSE; a uniformly late model shows it
    assert m["bias_last"] == pytest.approx(0.0)
    assert rul_metrics(true + 5.0, true, torch.tensor([True, True, True]))["bias_last"] == pytest.approx(5.0)


def test_short_meta_learner_run_improves_training_loss(problem) -> None:
    fed = FederatedConfig(rounds=12, clients_per_round=3, val_every=12)
    learner = MetaLearner(problem, "reptile", InnerConfig(3, 0.1), fed, ServerConfig("sgd", 1.0), seed=0)
    before = {k: v.clone() for k, v in learner.meta_params().items()}
    fit_meta_learner(learner, progress=False)
    after = learner.meta_params()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    site = problem.federation.role("validation")[0]
    task = problem.few_shot_task(learner.model, site, 1, torch.Generator().manual_seed(0))
    assert task.score(after)["rmse_last"] < task.score(before)["rmse_last"]


@pytest.mark.parametrize("kind", ["gru", "dcnn"])
def test_other_models_run_in_a_vectorized_round(small_dir: Path, kind: str) -> None:
    prob = prepare(small_cfg(small_dir, model=kind), seed=0)
    model = prob.make_model()
    meta = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    eps = [prob.train_episode(s, meta, gen) for s in prob.train_site_ids()[:2]]
    res = client_updates(get_algorithm("fomaml"), prob.loss_fn(model), meta, eps, InnerConfig(1, 0.05))
    assert res.vectorized and all(torch.isfinite(v).all() for v in res.directions.values())


@pytest.mark.parametrize("kernel", [3, 4, 10])
def test_the_cnn_takes_an_even_kernel_too(small_dir: Path, kernel: int) -> None:
    """``--data.kernel`` of any size: an even one made the conv maps one step longer than the head expected
    (a shape error at the first forward pass)."""
    prob = prepare(small_cfg(small_dir, kernel=kernel), seed=0)
    model = prob.make_model()
    meta = {k: v.detach() for k, v in model.named_parameters()}
    ep = prob.train_episode(prob.train_site_ids()[0], meta, torch.Generator().manual_seed(0))
    out = model(ep.support[0])
    assert out.shape == ep.support[1].shape and torch.isfinite(out).all()


@pytest.mark.parametrize("kernel", [3, 4, 5, 10])
def test_same_conv_is_torchs_same_padding_bit_for_bit(kernel: int) -> None:
    """The maintenance models' own "same" padding gives torch's ``padding="same"`` outputs and gradients exactly
    (committed lines with an even kernel, the published DCNN's 10, reproduce), with the same parameters."""
    from verticals.maintenance.model import SameConv1d

    torch.manual_seed(0)
    ours, torchs = SameConv1d(3, 4, kernel), torch.nn.Conv1d(3, 4, kernel, padding="same")
    torchs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(torchs.state_dict())
    x = torch.randn(5, 3, 30, requires_grad=True)
    a, b = ours(x), torchs(x)
    assert a.shape == (5, 4, 30) and torch.equal(a, b)
    ga = torch.autograd.grad(a.square().sum(), [x, ours.weight])
    gb = torch.autograd.grad(b.square().sum(), [x, torchs.weight])
    assert all(torch.equal(u, v) for u, v in zip(ga, gb))


def test_an_even_kernel_prints_no_torch_warning() -> None:
    """torch warns about a padded copy for ``padding="same"`` with an even kernel (once per process, so checked
    in a fresh one, with warnings as errors): the models pad that zero themselves."""
    import subprocess
    import sys

    code = ("import torch; from verticals.maintenance.model import RulCNN, RulDCNN; x = torch.randn(2, 30, 14); "
            "RulCNN(14, 30, kernel=4)(x); RulDCNN(14, 30)(x); print('ok')")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_load_new_site_from_test_and_rul_files(small_dir: Path, problem) -> None:
    cfg = small_cfg(small_dir, path=str(small_dir / "test_FD001.txt"), rul_path=str(small_dir / "RUL_FD001.txt"),
                    short_units="pad")
    prob, site = load_new_site(cfg, problem.preprocessing, "new-fleet")
    assert site.site_id == "new-fleet" and prob.federation.roles["test"] == ["new-fleet"]
    model = prob.make_model()
    task = prob.few_shot_task(model, site, 2, torch.Generator().manual_seed(0))
    assert int(task.last_eval.sum()) == 6
    rul = np.loadtxt(small_dir / "RUL_FD001.txt")
    np.testing.assert_allclose(sorted(site.y[site.metadata["cut_rows"]].tolist()), sorted(np.minimum(rul, 125)))


def test_real_fd001_quick_federation_if_present() -> None:
    folder = default_data_dir()
    if not (folder / "train_FD001.txt").is_file():
        pytest.skip(f"C-MAPSS FD001 not found in {folder} (set FML_CMAPSS_DIR); the vertical logic is tested "
                    "on generated files")
    prob = prepare(MaintenanceData(data_dir=str(folder)), seed=0)
    assert len(prob.federation.sites) == 10 and prob.preprocessing["model"]["sensors"] == 14
    assert not prob.preprocessing["generated"]
    test_units = sum(len(s.metadata["units"]) for s in prob.federation.role("test"))
    assert test_units == 20


def test_default_config_runs_on_a_fresh_clone_with_generated_data(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FML_CMAPSS_DIR", str(tmp_path / "absent"))
    with pytest.warns(UserWarning, match="GENERATED"):
        prob = prepare(MaintenanceData(), seed=0)
    assert prob.preprocessing["generated"] and len(prob.federation.sites) == 10
    model = prob.make_model()
    meta = {k: v.detach() for k, v in model.named_parameters()}
    ep = prob.train_episode(prob.train_site_ids()[0], meta, torch.Generator().manual_seed(0))
    assert torch.isfinite(prob.loss_fn(model)(meta, ep.support))


def test_oracle_row_scores_the_same_units_without_the_operator_simulation(small_dir: Path, problem) -> None:
    from types import SimpleNamespace

    from core.config import EvalConfig
    from verticals.maintenance.reference import METHOD, reference_baselines, unsimulated_sites

    cfg = small_cfg(small_dir)
    plain = unsimulated_sites(cfg, 0, problem)
    assert set(plain) == set(problem.federation.sites)
    for sid, site in problem.federation.sites.items():
        assert plain[sid].metadata["cut_rows"] == site.metadata["cut_rows"]
        assert torch.equal(plain[sid].y, site.y) and not torch.allclose(plain[sid].x, site.x)
    run_cfg = SimpleNamespace(data=cfg, seed=0, eval=EvalConfig(shots=[1], steps=[0], draws=2))
    rows = reference_baselines(problem, run_cfg, problem.federation.role("test"))
    assert set(rows["method"]) == {METHOD} and set(rows["draw"]) == {0, 1} and set(rows["steps"]) == {0}
    assert "rmse_last" in set(rows["metric"])
    # without the simulation the oracle is scored on the run's OWN rows at its own cuts (other cuts than a
    # simulated build of the same seed), never on the simulated build's windows
    no_sim_cfg = small_cfg(small_dir, simulate=False)
    no_sim = prepare(no_sim_cfg, seed=0)
    own = unsimulated_sites(no_sim_cfg, 0, no_sim)
    assert set(own) == set(no_sim.federation.sites)
    for sid, site in no_sim.federation.sites.items():
        assert torch.equal(own[sid].x, site.x) and own[sid].metadata["cut_rows"] == site.metadata["cut_rows"]
    assert any(no_sim.federation.sites[s].metadata["cut_rows"] != problem.federation.sites[s].metadata["cut_rows"]
               for s in problem.federation.sites)
    no_sim_rows = reference_baselines(no_sim, SimpleNamespace(data=no_sim_cfg, seed=0, eval=run_cfg.eval),
                                      no_sim.federation.role("test"))
    assert set(no_sim_rows["method"]) == {METHOD} and len(no_sim_rows) == len(rows)


def test_a_fleets_own_sites_have_no_oracle_row(tmp_path: Path) -> None:
    """Sites named by the fleet's site column are real operators: there is no unshifted version to pool."""
    from types import SimpleNamespace

    from core.config import EvalConfig
    from data_adapters.cmapss import CMAPSS_SENSORS, generate_cmapss
    from verticals.maintenance.reference import reference_baselines, unsimulated_sites

    train, _, _ = generate_cmapss(12, 1, seed=2, min_life=40, max_life=50)
    frame = pd.DataFrame(train[:, [0, 1, *range(5, 26)]], columns=["unit", "time", *CMAPSS_SENSORS])
    frame["plant"] = np.where(frame["unit"] <= 4, "north", np.where(frame["unit"] <= 8, "south", "east"))
    frame.to_csv(tmp_path / "fleet.csv", index=False)
    for simulate in (True, False):  # a fleet's own sites are never simulated, whatever data.simulate says
        cfg = MaintenanceData(path=str(tmp_path / "fleet.csv"), site_column="plant", window=10, validation_sites=1,
                              test_sites=1, train_units=2, query_units=1, windows_per_unit=8, support_windows=8,
                              channels=4, hidden=8, simulate=simulate)
        prob = prepare(cfg, seed=0)
        assert unsimulated_sites(cfg, 0, prob) == {}
        run_cfg = SimpleNamespace(data=cfg, seed=0, eval=EvalConfig(shots=[1], steps=[0], draws=1))
        assert reference_baselines(prob, run_cfg, prob.federation.role("test")).empty


def test_the_oracle_keeps_the_learning_rate_and_step_with_the_lowest_validation_loss(small_dir: Path, problem) -> None:
    from verticals.maintenance.reference import fit_central, unsimulated_sites

    plain = unsimulated_sites(small_cfg(small_dir), 0, problem)
    roles = problem.federation.roles
    train, val = [plain[s] for s in roles["train"]], [plain[s] for s in roles["validation"]]
    fit = fit_central(problem, train, val, seed=0, lrs=(1e-3, 1e-2), max_steps=400, every=20, patience=3)
    losses = [loss for _, _, loss in fit.history]
    assert {lr for lr, _, _ in fit.history} == {1e-3, 1e-2}
    assert fit.val_loss == min(losses) and (fit.lr, fit.step, fit.val_loss) in fit.history
    loss_fn = problem.loss_fn(problem.make_model())
    val_xy = (torch.cat([s.x for s in val]), torch.cat([s.y for s in val]))
    assert float(loss_fn(fit.params, val_xy)) == pytest.approx(fit.val_loss, rel=1e-5)  # the kept weights ARE the best
    # a lr's run stops `patience` checks after its best: no lr ran past best + patience * every
    for lr in (1e-3, 1e-2):
        steps = [(step, loss) for r, step, loss in fit.history if r == lr]
        best_step = min(steps, key=lambda s: s[1])[0]
        assert steps[-1][0] <= best_step + 3 * 20
    again = fit_central(problem, train, val, seed=0, lrs=(1e-3, 1e-2), max_steps=400, every=20, patience=3)
    assert again.history == fit.history and all(torch.equal(again.params[k], v) for k, v in fit.params.items())


def test_generated_operators_are_lazy_seeded_by_id_and_train(small_dir: Path) -> None:
    from core.learner import MetaLearner
    from core.algorithms import InnerConfig
    from core.config import FederatedConfig, ServerConfig
    from core.tasks import LazySite

    cfg = small_cfg(small_dir, operators=3000, preprocessing_sites=20, cached_sites=4)
    prob = prepare(cfg, seed=0)
    fed = prob.federation
    assert len(fed.sites) == 3000 and all(isinstance(s, LazySite) for s in fed.sites.values())
    cache = next(iter(fed.sites.values())).cache
    assert len(cache._rows) <= 4 and prob.preprocessing["operators"] == {"count": 3000, "preprocessing_sites": 20}
    sid = fed.roles["train"][123]
    first = (fed.sites[sid].x.clone(), fed.sites[sid].metadata["cut_rows"], fed.sites[sid].metadata["simulation"])
    for other in fed.roles["train"][:6]:  # evicts sid from the 4-site cache
        fed.sites[other].x
    again = fed.sites[sid]
    assert torch.equal(again.x, first[0]) and again.metadata["cut_rows"] == first[1]
    assert again.metadata["simulation"] == first[2] and len(again.metadata["units"]) == cfg.units_per_site
    twin = prepare(cfg, seed=0).federation.sites[sid]  # a function of (seed, id): a fresh build is identical
    assert torch.equal(twin.x, first[0])
    assert not torch.equal(prepare(cfg, seed=1).federation.sites[sid].x[:5], first[0][:5])
    learner = MetaLearner(prob, "fomaml", InnerConfig(steps=1, lr=0.01), FederatedConfig(rounds=2, clients_per_round=3),
                          ServerConfig("adam", 1e-3), seed=0)
    opt = learner.configure_optimizers()
    learner.optimizers = lambda *a, **k: opt
    learner.run_round(0)
    built = [s for s in fed.sites.values() if s.size is not None]
    assert len(built) < 40  # a round built its clients (and the checks a few), never the whole federation
    from verticals.maintenance.reference import unsimulated_sites

    assert unsimulated_sites(cfg, 0, prob) == {}  # the oracle would pool every operator: no oracle row


def test_generated_operators_need_one_fleet_and_enough_units(small_dir: Path) -> None:
    from data_adapters.cmapss_io import FleetDataError

    with pytest.raises(FleetDataError, match="units_per_site=30 units but the fleet has 24"):
        prepare(small_cfg(small_dir, operators=10, units_per_site=30), seed=0)
    with pytest.raises(ValueError, match=r"data.operators \(-1\) must be >= 0"):
        small_cfg(small_dir, operators=-1)


def test_checkpoint_metric_keeps_the_round_with_the_best_value_of_that_metric(problem, tmp_path: Path, fml_home: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``--eval.checkpoint-metric rmse_all``: the kept round is the one with the lowest validation ``rmse_all``
    (not the headline ``rmse_last``), over ``--eval.checkpoint-draws`` support draws."""
    import mlflow
    import pytorch_lightning as pl

    import pipelines.run as run_module
    from core import tracking
    from core.config import RunConfig

    cfg = RunConfig(data=None, algorithms=["fomaml"])
    cfg.fed.rounds, cfg.fed.val_every, cfg.fed.clients_per_round = 6, 1, 2
    cfg.eval.shots, cfg.eval.checkpoint_metric, cfg.eval.checkpoint_draws = [1], "rmse_all", 3
    seen: list[dict[str, float]] = []

    class Record(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})

    draws: list[int] = []
    real_validation_fn = run_module.validation_fn

    def counting_validation_fn(*args, **kwargs):
        draws.append(kwargs["draws"])
        return real_validation_fn(*args, **kwargs)

    monkeypatch.setattr(run_module, "validation_fn", counting_validation_fn)
    mlflow.set_tracking_uri(tracking.tracking_uri())
    with mlflow.start_run() as run:
        learner = run_module.train_one(problem, "fomaml", cfg, run.info.run_id, tmp_path, False, callbacks=[Record()])
    kept = learner.trainer.checkpoint_callback
    assert kept.monitor == "val/rmse_all" and len(seen) == 6 and draws == [3]
    assert float(kept.best_model_score) == pytest.approx(min(s["val/rmse_all"] for s in seen))
    assert min(s["val/rmse_all"] for s in seen) != pytest.approx(min(s["val/rmse_last"] for s in seen))


def test_a_checkpoint_metric_the_vertical_does_not_allow_is_refused_naming_the_option(problem) -> None:
    from core.config import RunConfig, check_run_config
    from pipelines.run import checkpoint_monitor

    cfg = RunConfig(data=None)
    assert checkpoint_monitor(problem, cfg) == "val/rmse_last"
    cfg.eval.checkpoint_metric = "bias_last"  # signed: its minimum is not the best round
    with pytest.raises(ValueError, match=r"--eval.checkpoint-metric bias_last: .*rmse_last or rmse_all or mae_last"):
        checkpoint_monitor(problem, cfg)
    cfg.eval.checkpoint_metric, cfg.eval.checkpoint_draws = None, 0
    with pytest.raises(ValueError, match=r"--eval.checkpoint-draws 0 \(must be >= 1\)"):
        check_run_config(cfg)
