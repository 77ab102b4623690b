"""The medical-imaging vertical: models under torch.func, patient-disjoint episodes, thresholds,
metrics, augmentation, prepare/onboarding, a short meta-training run, and the real data (skipped
when absent)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import verticals.medical_imaging as mi
from core.algorithms.base import InnerConfig
from core.config import FederatedConfig, ServerConfig
from core.learner import MetaLearner, fit_meta_learner
from core.tasks import Site, SiteDataError
from core.vertical import VERTICALS
from data_adapters.clinic_simulation import ClinicSimulation
from data_adapters.medmnist import ImageDataError
from imaging_files import write_manifest, write_npz
from verticals.medical_imaging.augment import augment_support
from verticals.medical_imaging.metrics import imaging_metrics, youden_threshold
from verticals.medical_imaging.model import ModelSpec, build_model
from verticals.medical_imaging.problem import patient_split

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_real_data(tmp_path, monkeypatch):
    """Point the default data location at an empty folder (so the GENERATED fallback is used)."""
    monkeypatch.delenv("FML_PNEUMONIA_NPZ", raising=False)
    monkeypatch.setenv("FML_DATA_DIR", str(tmp_path / "empty"))


def small_cfg(**kw) -> mi.ImagingData:
    sim = ClinicSimulation(clinics=5, test_protocols=["standard", "inverted"], validation_clinics=1, min_per_class=16)
    base = dict(simulation=sim, width=4, generated_per_class=90, required_per_class=6, train_shots=2, train_query=4)
    base.update(kw)
    return mi.ImagingData(**base)


# ---------------------------------------------------------------- models
def _vmap_matches_loop(model: nn.Module, clients: int = 2, n: int = 4, size: int = 28) -> None:
    params = {k: v.detach() for k, v in model.named_parameters()}
    assert not list(model.named_buffers()), "running-stat buffers cannot run under vmap"
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(clients, n, 1, size, size, generator=gen), torch.randint(0, 2, (clients, n), generator=gen)

    def loss(p, xb, yb):
        return nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb)

    def client(xb, yb):  # one inner step, then the query gradient (FO-MAML shape)
        g = grad(loss)(params, xb, yb)
        return grad(loss)({k: params[k] - 0.1 * g[k] for k in params}, xb, yb)

    batched = vmap(client)(x, y)
    for i in range(clients):
        single = client(x[i], y[i])
        for k in single:
            scale = float(single[k].abs().max()) + 1e-6
            assert float((batched[k][i] - single[k]).abs().max()) <= 1e-4 * scale + 1e-6, k


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "monai_classifier"])
def test_models_work_under_functional_call_and_vmap(name):
    torch.manual_seed(0)
    _vmap_matches_loop(build_model(ModelSpec(name, 1, 2, 28, 8, "group")))


def test_timm_efficientnet_and_rgb_and_norm_choices():
    torch.manual_seed(0)
    eff = build_model(ModelSpec("efficientnet_b0", 3, 4, 28))
    assert not list(eff.named_buffers())
    assert functional_call(eff, dict(eff.named_parameters()), (torch.rand(2, 3, 28, 28),)).shape == (2, 4)
    for norm in ("instance", "batch"):
        assert not list(build_model(ModelSpec("small_cnn", 1, 2, norm=norm)).named_buffers())
    with pytest.raises(KeyError, match="unknown imaging model 'vgg'; choose one of"):
        build_model(ModelSpec("vgg", 1, 2))
    with pytest.raises(KeyError, match="unknown normalization 'layer'"):
        build_model(ModelSpec("small_cnn", 1, 2, norm="layer"))


# ---------------------------------------------------------------- episodes, thresholds, metrics
def test_patient_split_never_straddles_and_has_exact_shots():
    y = torch.arange(60) % 2
    groups = torch.arange(60) // 3  # 20 patients, 3 images each (mixed classes)
    site = Site("s", torch.zeros(60, 1, 4, 4), y, groups=groups)
    for seed in range(20):
        sup, qry = patient_split(site, 3, None, 2, torch.Generator().manual_seed(seed))
        assert torch.bincount(y[sup], minlength=2).tolist() == [3, 3]
        assert not set(groups[sup].tolist()) & set(groups[qry].tolist())
        assert set(torch.unique(y[qry]).tolist()) == {0, 1}
    sup, qry = patient_split(site, 2, 4, 2, torch.Generator().manual_seed(0))
    assert torch.bincount(y[qry], minlength=2).tolist() == [4, 4]
    tiny = Site("tiny", torch.zeros(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 0, 1]), groups=torch.tensor([0, 0, 1, 1, 2, 2]))
    with pytest.raises(SiteDataError, match="site 'tiny': after taking 3 shots"):
        patient_split(tiny, 3, None, 2, torch.Generator().manual_seed(0))


def test_threshold_is_chosen_on_support_and_metrics_are_correct():
    assert youden_threshold(torch.tensor([-1.0, 3.0]), torch.tensor([0, 1])) == pytest.approx(1.0)
    assert youden_threshold(torch.tensor([2.0, -2.0]), torch.tensor([0, 1])) == 0.0  # no information: stay at 0
    logits = torch.tensor([[0.0, -2.0], [0.0, 0.5], [0.0, 1.0], [0.0, 3.0]])  # log-odds -2, .5, 1, 3
    y = torch.tensor([0, 0, 1, 1])
    m = imaging_metrics(logits, y)  # cut-off 0: the 0.5 negative is a false positive
    assert m["auroc"] == pytest.approx(1.0) and m["sensitivity"] == 1.0 and m["specificity"] == 0.5
    assert m["balanced_accuracy"] == 0.75
    m = imaging_metrics(logits, y, threshold=0.75)
    assert m["balanced_accuracy"] == 1.0 and m["threshold"] == pytest.approx(float(torch.sigmoid(torch.tensor(0.75))))
    three = imaging_metrics(torch.eye(3)[[0, 1, 2, 0]] * 5, torch.tensor([0, 1, 2, 1]))
    assert three["auroc"] < 1.0 and three["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_support_augmentation_is_seeded():
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    a, ya = augment_support(x, y, 2, seed=5)
    b, _ = augment_support(x, y, 2, seed=5)
    c, _ = augment_support(x, y, 2, seed=6)
    assert a.shape == (12, 1, 16, 16) and ya.tolist() == [0, 1, 0, 1] * 3
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(a[:4], x)
    assert type(a) is torch.Tensor  # not MONAI's MetaTensor: its per-op bookkeeping slows every adaptation step


# ---------------------------------------------------------------- the vertical
def test_vertical_registered_with_presets():
    spec = VERTICALS.get("medical_imaging")
    assert spec.preset_path("quick").exists() and spec.preset_path("full").exists()
    from pipelines.config import load_preset

    cfg = load_preset(spec, "quick")
    assert isinstance(cfg.data, mi.ImagingData) and cfg.data.model == "small_cnn"


def test_generated_fallback_warns_and_short_meta_training_runs(no_real_data):
    with pytest.warns(UserWarning, match="GENERATED synthetic image dataset"):
        problem = mi.prepare(small_cfg(augment_copies=1), seed=0)
    assert problem.preprocessing["generated"] and "GENERATED" in problem.preprocessing["data_source"]
    assert problem.federation.roles["test"] == ["clinic-03", "clinic-04-inverted"]
    learner = MetaLearner(problem, "fomaml", InnerConfig(steps=1, lr=0.1),
                          FederatedConfig(rounds=3, clients_per_round=2, val_every=3), ServerConfig("adam", 1e-3), seed=0)
    before = {k: v.clone() for k, v in learner.meta_params().items()}
    fit_meta_learner(learner, progress=False)
    after = learner.meta_params()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    site = problem.federation.role("test")[1]
    task = problem.few_shot_task(learner.model, site, 2, torch.Generator().manual_seed(0))
    assert task.support(after)[0].shape[0] == 2 * 2 * 2  # 2 shots x 2 classes x (1 + 1 augmented copy)
    assert type(task.support(after)[0]) is torch.Tensor  # augmented by MONAI, yet no MetaTensor
    scores = task.score(after)
    assert {"auroc", "balanced_accuracy", "sensitivity", "specificity", "threshold"} <= set(scores)


def test_manifest_prepare_fails_before_training_on_small_clinic(tmp_path):
    path = write_manifest(tmp_path, sites=("a", "b", "c", "d"), per_class=6)
    cfg = mi.ImagingData(path=str(path), classes=["normal", "pneumonia"], image_size=16, validation_sites=1,
                         test_sites=1, required_per_class=3, train_shots=2, train_query=2, width=4)
    problem = mi.prepare(cfg, seed=0)
    assert sorted(problem.federation.sites) == ["a", "b", "c", "d"]
    assert all(s.groups is not None for s in problem.federation.sites.values())
    with pytest.raises(SiteDataError, match=r"site 'a'.*class 'normal': 6 image\(s\), needs >= 7"):
        mi.prepare(mi.ImagingData(**{**cfg.__dict__, "required_per_class": 7}), seed=0)
    with pytest.raises(SiteDataError, match=r"after taking 5 shots per class from \d+ patient\(s\), only 0 image"):  # counts pass, patients do not
        mi.prepare(mi.ImagingData(**{**cfg.__dict__, "required_per_class": 6}), seed=0)
    with pytest.raises(ImageDataError, match="unsupported file type '.txt'"):
        mi.prepare(mi.ImagingData(path=str(tmp_path / "x.txt")), seed=0)


def test_load_new_site_npz_and_manifest(tmp_path, no_real_data):
    with pytest.warns(UserWarning):
        problem = mi.prepare(small_cfg(), seed=0)
    prep = problem.preprocessing
    npz = write_npz(tmp_path / "clinic.npz", classes=2, n=10, size=28)
    new_problem, site = mi.load_new_site(small_cfg(path=str(npz), onboard_protocol="inverted"), prep, None)
    assert site.site_id == "clinic" and site.x.shape == (30, 1, 28, 28) and site.metadata["protocol"] == "inverted"
    _, small = mi.load_new_site(small_cfg(path=str(write_npz(tmp_path / "s20.npz", classes=2, n=10, size=20))), prep, None)
    assert small.x.shape == (30, 1, 28, 28) and type(small.x) is torch.Tensor  # resized to the model's size by MONAI
    task = new_problem.few_shot_task(problem.make_model(), site, 3, torch.Generator().manual_seed(0))
    assert 0.0 <= task.score(dict(problem.make_model().named_parameters()))["auroc"] <= 1.0
    with pytest.raises(ImageDataError, match=r"outside the declared classes \(0..1\)"):
        mi.load_new_site(small_cfg(path=str(write_npz(tmp_path / "k3.npz", classes=3, size=28))), prep, None)
    with pytest.raises(ImageDataError, match="expects 1"):
        mi.load_new_site(small_cfg(path=str(write_npz(tmp_path / "rgb.npz", rgb=True, classes=2, size=28))), prep, None)
    manifest = write_manifest(tmp_path, sites=("north", "south"), per_class=3, labels=("0", "1"))
    with pytest.raises(SiteDataError, match=r"holds sites \['north', 'south'\]; choose one with --site"):
        mi.load_new_site(small_cfg(path=str(manifest)), prep, None)
    _, south = mi.load_new_site(small_cfg(path=str(manifest)), prep, "south")
    assert south.site_id == "south" and south.x.shape == (6, 1, 28, 28) and south.groups is not None


# ---------------------------------------------------------------- real data (skipped when absent)
def real_npz() -> Path:
    if os.environ.get("FML_PNEUMONIA_NPZ"):
        return Path(os.environ["FML_PNEUMONIA_NPZ"])
    data_dir = Path(os.environ.get("FML_DATA_DIR") or REPO / ".." / "shared" / "data")
    return data_dir / "pneumoniamnist" / "pneumoniamnist.npz"


def test_real_pneumoniamnist_clinics():
    path = real_npz()
    if not path.is_file():
        pytest.skip(f"PneumoniaMNIST not found at {path}; set FML_PNEUMONIA_NPZ or FML_DATA_DIR to run this test")
    problem = mi.prepare(mi.ImagingData(path=str(path)), seed=0)
    fed = problem.federation
    assert len(fed.sites) == 16 and len(fed.roles["test"]) == 4 and len(fed.roles["validation"]) == 2
    assert "clinic-15-inverted" in fed.roles["test"]
    assert sum(len(s) for s in fed.sites.values()) == 2428 + 270 + 468
    assert not problem.preprocessing["generated"] and problem.preprocessing["channels"] == 1


def _anatomy_npz(path: Path) -> Path:
    """A MedMNIST-format clinic of 30 generated chest-like images (write_npz's are noise: no anatomy to orient by)."""
    from data_adapters.generated_images import generate_images

    images = generate_images(per_class=15, size=28, seed=5)
    pixels, labels = (images.x[:, 0] * 255).round().to(torch.uint8).numpy(), images.y.view(-1, 1).numpy()
    splits = {f"{split}_{kind}": array[10 * i: 10 * (i + 1)] for i, split in enumerate(("train", "val", "test"))
              for kind, array in (("images", pixels), ("labels", labels))}
    return write_npz(path, classes=2, n=10, size=28, **splits)


def test_site_statistics_orient_an_inverted_clinic_by_the_training_clinics_mean_image(tmp_path, no_real_data):
    """Standardizing removes a clinic's gain and offset but not its sign: an inverted export must be
    flipped back (labels never read), in the federation and at onboarding, as the model recorded."""
    with pytest.warns(UserWarning, match="GENERATED"):
        problem = VERTICALS.get("medical_imaging").build(small_cfg(site_statistics=True), 0)
    signs = {sid: s.metadata["site_statistics"]["sign"] for sid, s in problem.federation.sites.items()}
    assert signs == {sid: [-1.0] if sid.endswith("inverted") else [1.0] for sid in problem.federation.sites}
    with pytest.warns(UserWarning, match="GENERATED"):
        plain = VERTICALS.get("medical_imaging").build(small_cfg(), 0)
    for sid, site in problem.federation.sites.items():
        raw = plain.federation.sites[sid].x
        if sid.endswith("inverted"):  # reflected about its own mean, labels never read
            torch.testing.assert_close(site.x, 2 * raw.mean() - raw, atol=1e-5, rtol=1e-5)
        else:  # every other clinic exactly as without site statistics
            assert torch.equal(site.x, raw), sid
    recorded = problem.preprocessing["site_statistics"]
    assert recorded["orient"] and len(recorded["reference"]) == 1 and len(recorded["reference"][0]) == 16 * 16
    npz = _anatomy_npz(tmp_path / "clinic.npz")
    for protocol, sign in [("inverted", -1.0), ("standard", 1.0)]:
        _, site = VERTICALS.get("medical_imaging").new_site(small_cfg(path=str(npz), onboard_protocol=protocol),
                                                             problem.preprocessing, None)
        assert site.metadata["site_statistics"]["sign"] == [sign], protocol
    _, unoriented = VERTICALS.get("medical_imaging").new_site(  # a model trained before orienting records no reference
        small_cfg(path=str(npz), onboard_protocol="inverted"),
        {**problem.preprocessing, "site_statistics": {"scale": True, "first_rows": 0}}, None)
    assert "sign" not in unoriented.metadata["site_statistics"]


def test_run_records_the_orientation_and_onboarding_reflects_an_inverted_clinic(tmp_path, no_real_data, fml_home, capsys):
    """The presets orient clinics (site statistics): ``fml run`` registers the training clinics' reference
    mean image with the model, its card says what it does, and ``fml onboard`` of an inverted export says the
    site was reflected, and keeps the sign for scoring the site's future images."""
    from core import tracking
    from pipelines.config import load_preset
    from pipelines.onboard import onboard
    from pipelines.run import run_pipeline

    spec = VERTICALS.get("medical_imaging")
    cfg = load_preset(spec, "quick")
    assert cfg.data.site_statistics  # the presets' default
    cfg.data = small_cfg(site_statistics=True)
    cfg.fed.rounds, cfg.fed.val_every, cfg.fed.clients_per_round = 4, 2, 2
    cfg.eval.shots, cfg.eval.steps, cfg.eval.draws, cfg.eval.select_draws = [2], [0, 2], 2, 1
    cfg.output_dir = str(tmp_path / "out")
    with pytest.warns(UserWarning, match="GENERATED"):
        result = run_pipeline(spec, cfg, progress=False)
    loaded = tracking.load_meta_init(f"models:/{result.registered['name']}@champion")
    recorded = loaded.info["preprocessing"]["site_statistics"]
    assert recorded["orient"] and recorded["centre"] is False and len(recorded["reference"][0]) == 16 * 16
    card = tracking.MlflowClient().get_model_version(result.registered["name"], result.registered["version"]).description
    assert "oriented by the training sites' mean image" in card, card
    npz = _anatomy_npz(tmp_path / "clinic.npz")
    capsys.readouterr()
    out = onboard(spec, data=str(npz), shots=2, overrides={"onboard_protocol": "inverted"})
    assert "channel(s) [0] were REFLECTED" in " ".join(capsys.readouterr().out.split())
    assert tracking.load_meta_init(out.model_uri).info["site_moments"]["sign"] == [-1.0]


def test_a_multi_class_clinic_counts_wrong_rows_and_is_chosen_by_the_wrong_classes_probability() -> None:
    from verticals.medical_imaging.problem import ImagingFewShotTask

    torch.manual_seed(0)
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    params = {k: v.detach() for k, v in model.named_parameters()}
    task = ImagingFewShotTask(model, "clinic", 2, (x, y), (x, y), (x, y))
    logits = torch.func.functional_call(model, params, (x,))
    assert task.support_errors(params) == int((logits.argmax(-1) != y).sum())
    held = [(x[i:i + 1], y[i:i + 1]) for i in range(6)]
    expected = 1 - logits.softmax(-1)[torch.arange(6), y]
    assert task.choice_criterion(None)(params, held) == pytest.approx(expected.tolist())
    binary = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))  # ranked by AUROC: the loss alone judges divergence
    two = ImagingFewShotTask(binary, "clinic", 2, (x, y % 2), (x, y % 2), (x, y % 2))
    binary_params = {k: v.detach() for k, v in binary.named_parameters()}
    assert two.support_errors(binary_params) is None
    from benchmarks.guard_signals import misordered_pairs, support_error

    z = torch.func.functional_call(binary, binary_params, (x,))
    assert support_error(two, binary_params) == pytest.approx(misordered_pairs(z[:, 1] - z[:, 0], y % 2))
