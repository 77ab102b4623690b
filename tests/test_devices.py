"""``--device auto|cpu|cuda`` (issue 16, item 3): resolution, moving batches, and the guard that every tensor
of a round and of an evaluation draw is on the model's device.

This machine kind has no GPU, so the placement tests use torch's ``meta`` device as the second device: it
computes shapes without data, and an op that mixes it with the CPU raises, as CUDA does. A round run
with the learner on ``meta`` therefore fails if any tensor is left on the CPU. The ``cuda`` tests at the end
compare GPU and CPU numbers and run only where a GPU is visible.
"""
from __future__ import annotations

import pytest
import torch

from core.algorithms import InnerConfig
from core.config import FederatedConfig, RunConfig, ServerConfig, check_run_config
from core.devices import (DeviceError, check_devices, device_of, lightning_accelerator, named_tensors,
                          resolve_device, same_device, to_device)
from core.evaluation import Method, evaluate_sites, on_device, validation_fn
from core.learner import MetaLearner, fit_meta_learner
from core.recipes import RECIPES, RecipeNotApplicable, recipe_trajectory
from core.registry import UnknownNameError
from core.types import Episode
from data_adapters.digits import DigitsData
from verticals.digits import prepare

META = torch.device("meta")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device: GPU runs are untested on this machine")


@pytest.fixture(scope="module")
def problem():
    return prepare(DigitsData(train_sites=8, validation_sites=2, test_sites=2), seed=0)


def learner_for(problem, algorithm: str, validate=None, **fed) -> MetaLearner:
    cfg = FederatedConfig(rounds=3, clients_per_round=4, val_every=3, **fed)
    return MetaLearner(problem, algorithm, InnerConfig(steps=2, lr=0.05), cfg, ServerConfig("adam", 1e-3), seed=0,
                       validate=validate)


def devices_in(obj) -> set[str]:
    return {t.device.type for _, t in named_tensors(obj, "x")}


# ------------------------------------------------------------------------------------------ resolution


def test_auto_takes_a_gpu_only_when_there_is_one() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device(META) == META
    with pytest.raises(UnknownNameError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    assert lightning_accelerator(torch.device("cpu")) == ("cpu", 1)
    assert lightning_accelerator(torch.device("cuda", 1)) == ("gpu", [1])


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(capsys, fml_home) -> None:
    with pytest.raises(DeviceError, match="--device cuda: .*use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="invalid option.*--device cuda"):
        check_run_config(RunConfig(data=None, device="cuda"))
    from pipelines.cli import main

    assert main(["evaluate", "sine", "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda" in err and "--device cpu" in err, err


def test_run_config_lists_the_device_choices() -> None:
    check_run_config(RunConfig(data=None, device="cpu"))
    with pytest.raises(ValueError, match=r"--device gpu \(choose from auto, cpu, cuda\)"):
        check_run_config(RunConfig(data=None, device="gpu"))


# ------------------------------------------------------------------------------------------ moving and checking


def test_to_device_moves_every_tensor_and_keeps_the_rest() -> None:
    query_fn = lambda params: (torch.zeros(1),)  # noqa: E731
    episode = Episode(support=(torch.ones(3, 2), torch.zeros(3)), query=(torch.ones(1, 2),), site_id="a",
                      query_fn=query_fn)
    moved = to_device(episode, META)
    assert devices_in(moved) == {"meta"} and moved.site_id == "a" and moved.query_fn is query_fn
    assert devices_in(episode) == {"cpu"}  # the input is not mutated
    assert to_device(moved, META) is moved  # nothing to move: no copy
    params = to_device({"w": torch.ones(2), "b": torch.zeros(1)}, META)
    assert devices_in(params) == {"meta"} and device_of(params) == META
    assert to_device(None, META) is None
    assert isinstance(to_device([torch.ones(1)], META), list)
    with pytest.raises(TypeError, match="cannot move a str"):
        to_device("x", META)


def test_check_devices_names_the_tensors_left_behind() -> None:
    on_meta = {"w": torch.ones(2, device=META)}
    check_devices(META, meta=on_meta, episodes=[Episode((torch.ones(1, device=META),), ())])
    left = Episode(support=(torch.ones(1, device=META), torch.zeros(1)), query=())
    with pytest.raises(DeviceError, match=r"1 tensor\(s\) .* meta: episodes\[0\]\.support\[1\] on cpu"):
        check_devices(META, meta=on_meta, episodes=[left])
    assert same_device(torch.device("cuda"), torch.device("cuda", 0))  # what "cuda" resolves to
    assert not same_device(torch.device("cuda", 0), torch.device("cuda", 1))


# ------------------------------------------------------------------------------------------ rounds on a second device


@pytest.mark.parametrize("algorithm", ["fedavg", "fomaml", "maml", "reptile", "metasgd", "perfedavg"])
@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("fed", [{}, {"dp_clip": 0.5, "dp_noise": 0.8},
                                 {"weighting": "num_examples", "aggregation": "median", "attack": "scale",
                                  "attack_fraction": 0.5}], ids=["mean", "dp", "median-attack"])
def test_every_tensor_of_a_round_is_on_the_model_device(problem, algorithm: str, vectorize: bool, fed: dict) -> None:
    learner = learner_for(problem, algorithm, vectorize=vectorize, **fed).to(META)
    ids, result, direction = learner.client_round(0)  # runs check_devices on meta, episodes, directions
    assert len(ids) == 4 and result.vectorized == vectorize
    assert devices_in(result.directions) == devices_in(result.metrics) == devices_in(direction) == {"meta"}
    assert devices_in(learner.meta_params()) == {"meta"}


def test_a_round_whose_episodes_stay_on_the_cpu_fails(problem, monkeypatch) -> None:
    """The negative control: without the move to the device the round does not silently run elsewhere."""
    import core.learner

    monkeypatch.setattr(core.learner, "to_device", lambda obj, device: obj)
    learner = learner_for(problem, "fomaml").to(META)
    with pytest.raises((DeviceError, RuntimeError), match="device"):
        learner.client_round(0)


# ------------------------------------------------------------------------------------------ evaluation draws


def test_an_evaluation_draw_adapts_on_the_model_device(problem) -> None:
    model = problem.make_model().to(META)
    params = {k: v.detach() for k, v in model.named_parameters()}
    head = problem.param_groups(model)["head"]
    site = problem.federation.role("test")[0]
    task = problem.few_shot_task(model, site, 5, torch.Generator().manual_seed(0))
    support = task.support(params)
    assert devices_in(support) == {"meta"}
    assert devices_in(task.heldout) == {"cpu"}  # scored rows stay with the site; chunks move when predicted
    for recipe in RECIPES.names():
        try:
            adapted = recipe_trajectory(recipe, problem.loss_fn(model), params, support, [1, 2], 0.1, head=head)
        except RecipeNotApplicable:
            continue  # e.g. `context` needs a context vector: tests/test_context.py
        assert devices_in(adapted) == {"meta"}, recipe
    cpu_params = {k: v.detach() for k, v in problem.make_model().named_parameters()}
    moved = on_device([Method("m", cpu_params, lr_by_steps={1: 0.1})], META)
    assert devices_in(moved[0].meta) == {"meta"} and moved[0].lr_by_steps == {1: 0.1}


# ------------------------------------------------------------------------------------------ CPU runs


def test_fit_on_cpu_names_the_accelerator_and_evaluates(problem) -> None:
    learner = learner_for(problem, "fomaml")
    trainer = fit_meta_learner(learner, progress=False, device="cpu")
    assert trainer.accelerator.__class__.__name__ == "CPUAccelerator" and trainer.global_step == 3
    rows = evaluate_sites(problem, learner.model, [Method("fomaml", learner.meta_params(), lr_by_steps={1: 0.1})],
                          problem.federation.role("test"), shots_grid=[5], steps_grid=[0, 1], draws=1, seed=0,
                          inner=InnerConfig())
    assert len(rows) and rows["value"].notna().all()


# ------------------------------------------------------------------------------------------ a real GPU


@needs_cuda
def test_cuda_rounds_and_evaluation_match_the_cpu(problem) -> None:
    validate = validation_fn(problem, problem.federation.role("validation"), shots=5, steps=1, lr=0.1, draws=1,
                             seed=0, inner=InnerConfig())
    cpu, gpu = learner_for(problem, "fomaml", validate=validate), learner_for(problem, "fomaml", validate=validate)
    fit_meta_learner(cpu, progress=False, device="cpu")
    fit_meta_learner(gpu, progress=False, device="cuda")  # validation adapts on the GPU too
    a, b = cpu.meta_params(), gpu.meta_params()
    assert devices_in(b) == {"cpu"}  # Lightning hands the learner back on the CPU
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    device = resolve_device("cuda")
    sites = problem.federation.role("test")
    grid = dict(shots_grid=[5], steps_grid=[0, 2], draws=2, seed=0, inner=InnerConfig())
    methods = [Method("fomaml", a, lr_by_steps={2: 0.1})]
    on_cpu = evaluate_sites(problem, cpu.model, methods, sites, **grid)
    on_gpu = evaluate_sites(problem, cpu.model.to(device), on_device(methods, device), sites, **grid)
    loss = lambda rows: torch.tensor(rows[rows["metric"] == "loss"]["value"].values)  # noqa: E731 (accuracy may flip on a tie)
    assert len(on_cpu) == len(on_gpu) and torch.allclose(loss(on_cpu), loss(on_gpu), rtol=1e-4, atol=1e-5)


@needs_cuda
def test_cuda_round_tensors_are_on_the_gpu(problem) -> None:
    learner = learner_for(problem, "maml", dp_clip=0.5, dp_noise=0.8).to(resolve_device("cuda"))
    _, result, direction = learner.client_round(0)
    assert devices_in(result.directions) == devices_in(direction) == {"cuda"}


@needs_cuda
def test_a_model_logged_from_the_gpu_loads_on_the_cpu(problem, fml_home) -> None:
    import mlflow

    from core import tracking

    device = resolve_device("cuda")
    model = problem.make_model().to(device)
    meta = {k: v.detach() + 1 for k, v in model.named_parameters()}
    tracking.setup_tracking()
    with mlflow.start_run():
        uri = tracking.log_meta_init(model, meta, {"algorithm": "fomaml"}, problem.input_example(),
                                     others={"fedavg+ft": meta})
    assert device_of(model) == device  # the caller's model stays on the GPU
    loaded = tracking.load_meta_init(uri)
    assert devices_in(loaded.meta) == devices_in(loaded.candidates) == {"cpu"}
    assert all(torch.equal(loaded.meta[k], meta[k].cpu()) for k in meta)
