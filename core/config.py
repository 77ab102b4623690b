"""Typed run configuration: dataclasses with a docstring per field; the CLI is generated from them
(tyro) and YAML presets are merged into them (OmegaConf)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from core.algorithms.base import META_DROPOUT_SITES, InnerConfig
from core.federation.settings import FlowerSettings
from core.server import SERVER_OPTIMIZERS

#: What ``inner.group`` may name; a problem says which of its groups exist (``Problem.param_groups``).
INNER_GROUPS = ("all", "head", "body", "context")


@dataclass
class ServerConfig:
    """Server optimizer applied to the aggregated client direction."""

    optimizer: str = "adam"
    """sgd (FedAvg, lr 1 = textbook), adam (FedAdam), adagrad (FedAdagrad) or yogi (FedYogi)."""
    lr: float = 1e-3
    """Server learning rate."""


@dataclass
class FederatedConfig:
    """The federated rounds."""

    rounds: int = 500
    """Federated rounds of meta-training (one Lightning training step each)."""
    clients_per_round: int = 10
    """Training sites sampled per round."""
    sampler: str = "uniform"
    """Client sampling: uniform, size (weighted by site size) or diversity (spread over k-means clusters of the
    training sites' descriptors: input moments and label distribution, core/site_descriptors.py)."""
    dropout: float = 0.0
    """Simulated probability that a sampled client does not answer."""
    weighting: str = "uniform"
    """Aggregation weights: uniform, num_examples, or quality (num_examples times 1 + the client's relative loss
    improvement from adaptation clipped to [0, 1]: a site weighs at most 2x another of its size)."""
    aggregation: str = "mean"
    """Aggregation rule: mean, median or trimmed_mean."""
    vectorize: bool = True
    """Run a round's clients in one vmap call when their episode shapes agree."""
    trace_after: int = 10
    """From the round in which an episode shape recurs this many times, replay the vmap call as a graph traced
    once (core/replay.py: bitwise the same numbers, R1 rounds 1.2-1.6x faster, about 1 s of tracing); 0 = never
    (for a model whose forward reads state that changes between rounds)."""
    val_every: int = 50
    """Rounds between validation-site adaptation checks (ModelCheckpoint keeps the best)."""
    early_stopping_patience: int = 0
    """Validation checks without improvement before stopping (0 = never stop early)."""
    dp_clip: float = 0.0
    """Site-level DP-FedAvg: L2 bound of each site's direction per round (0 = no clipping, no DP)."""
    dp_noise: float = 0.0
    """Site-level DP-FedAvg: Gaussian noise multiplier (std = dp_noise * dp_clip / clients_per_round); 0 = off."""
    dp_delta: float = 1e-5
    """The delta of the (epsilon, delta) guarantee the run reports."""
    attack: str = "none"
    """SIMULATED poisoning (core/attacks.py): none, scale or sign_flip updates from a seeded share of sites."""
    attack_fraction: float = 0.0
    """Share of training sites that attack (fixed per seed)."""
    attack_scale: float = 10.0
    """Factor of a scale attack; a sign_flip attack sends -attack_scale times the honest direction."""

    def __post_init__(self) -> None:
        if self.trace_after < 0:
            raise ValueError(f"fed.trace_after must be >= 0 (0 = never trace), got {self.trace_after}")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise ValueError(f"fed.dp_noise={self.dp_noise} needs fed.dp_clip > 0 (the noise is scaled to the clip)")
        if self.dp_clip > 0 and (self.aggregation != "mean" or self.weighting != "uniform"):
            raise ValueError("fed.dp_clip (DP-FedAvg) needs fed.aggregation=mean and fed.weighting=uniform, got "
                             f"{self.aggregation} and {self.weighting}")


@dataclass
class EvalConfig:
    """The held-out-site evaluation protocol."""

    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    """Shots grid (per class for classification, units/rows for regression)."""
    steps: list[int] = field(default_factory=lambda: [0, 1, 5, 10])
    """Adaptation-steps grid."""
    draws: int = 10
    """Random support draws per (site, shots); every method sees the same draws."""
    lr_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3])
    """Adaptation step sizes searched on VALIDATION sites for every method (and the trained inner lr)."""
    select_shots: Optional[int] = None
    """Shots used for the validation lr/steps search (default: middle of the shots grid)."""
    select_draws: int = 5
    """Draws per validation site in the lr/steps search."""
    checkpoint_metric: Optional[str] = None
    """Validation metric that keeps the best round of meta-training (default: the vertical's headline). A vertical
    lists the others it allows (``Problem.checkpoint_metrics``, same direction as the headline), e.g. maintenance's
    ``rmse_all``: every window of the validation operators' query engines instead of one per engine."""
    checkpoint_draws: int = 2
    """Support draws per validation site at each validation round (checkpoint selection)."""
    checkpoint_average: int = 0
    """n > 0: keep the mean of the meta-parameters at the last n validation rounds (every ``fed.val_every`` rounds;
    stochastic weight averaging over rounds) instead of the round with the best validation metric."""
    guard: bool = True
    """Score a held-out adaptation as ``fml onboard`` gives it: a start whose adaptation raised its support loss
    (or left non-finite weights) is scored unadapted (core/guard.py). false: every adaptation as it comes (the
    protocol of the lines measured before 2026-12-07)."""
    choice_folds: int = 5
    """Most cross-validation folds of a site's support set when choosing its starting point (``auto``)."""
    recipes: list[str] = field(default_factory=list)
    """More adaptation recipes (core/recipes.py: head, body, lp-ft, newton-head) for every adapting initialization:
    each adds a row <init>+<recipe> (fedavg+<recipe> for the FedAvg model) with its own validation search, and
    a candidate for registration and the per-site choice. Every init always also adapts all parameters."""


@dataclass
class TrackingConfig:
    """MLflow tracking and registry."""

    experiment: Optional[str] = None
    """MLflow experiment (default: fml-<vertical>)."""
    register: bool = True
    """Register the best meta-initialization as fml-<vertical>."""
    model_name: Optional[str] = None
    """Registered model name (default: fml-<vertical>)."""


@dataclass
class RunConfig:
    """A full pipeline run: meta-train -> evaluate on held-out sites -> log -> register."""

    data: Any
    """Vertical-specific data options."""
    seed: int = 0
    """Seed of everything: site roles, sampling, episodes, initialization."""
    algorithms: list[str] = field(default_factory=lambda: ["fomaml", "reptile"])
    """FML algorithms to meta-train and compare (fedavg is always trained as the baseline)."""
    inner: InnerConfig = field(default_factory=InnerConfig)
    """Inner loop of meta-training (also FedAvg's local steps and lr)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Server optimizer of the FML algorithms."""
    baseline_server: ServerConfig = field(default_factory=lambda: ServerConfig("sgd", 1.0))
    """Server optimizer of the FedAvg baseline (SGD lr 1 = textbook FedAvg)."""
    baseline_lr: Optional[float] = None
    """FedAvg's local SGD step size (default: inner.lr); tune the baseline as carefully as FML."""
    baseline_rounds: Optional[int] = None
    """FedAvg's federated rounds (default: fed.rounds), so the baseline can be trained longer than the meta-learners.
    On maintenance a longer-trained FedAvg model was a worse warm start for them (verticals/recipes.md)."""
    algorithm_overrides: list[str] = field(default_factory=list)
    """Settings of one algorithm that differ from inner/server (FedAvg: baseline_server), as
    ALGORITHM:KEY=VALUE with KEY under inner. or server., e.g. reptile:server.optimizer=sgd
    reptile:server.lr=0.5 reptile:inner.steps=10."""
    warm_start: bool = False
    """Start every FML algorithm from the trained FedAvg model instead of a random initialization
    (site-specific parameters such as a per-site label head still start at zero)."""
    fed: FederatedConfig = field(default_factory=FederatedConfig)
    """Federated rounds."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow."""
    flower: FlowerSettings = field(default_factory=FlowerSettings)
    """How ``fml federate`` runs the rounds on Flower (``fml run`` trains in-process and ignores it)."""
    output_dir: str = "fml-output"
    """Local folder for tables, plots and checkpoints (also logged to MLflow)."""
    resume: bool = False
    """Continue the interrupted run whose folder is output_dir (same options): finished algorithms are restored,
    the one that was training continues from its last checkpoint, the same MLflow run is reopened."""
    device: str = "auto"
    """Where meta-training and evaluation compute: auto (a CUDA GPU when one is visible, else the CPU), cpu or
    cuda (an error when there is none). Site data stay on the CPU; episodes move to the device when drawn."""


@dataclass
class AlgorithmSettings:
    """The inner loop, server optimizer and federated rounds one algorithm is trained with."""

    inner: InnerConfig
    server: ServerConfig
    fed: FederatedConfig
    """The run's ``fed`` with this algorithm's rounds (FedAvg: ``baseline_rounds``)."""

    @property
    def rounds(self) -> int:
        return self.fed.rounds


def parse_algorithm_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """``["reptile:server.lr=0.5", ...]`` -> ``{"reptile": ["server.lr=0.5"], ...}``; malformed items are errors."""
    by_algorithm: dict[str, list[str]] = {}
    for item in overrides:
        name, sep, setting = item.partition(":")
        key = setting.partition("=")[0]
        if not sep or "=" not in setting or not key.startswith(("inner.", "server.")):
            raise ValueError(f"algorithm override {item!r} must read ALGORITHM:KEY=VALUE with KEY under inner. or "
                             "server., e.g. reptile:server.optimizer=sgd")
        by_algorithm.setdefault(name.strip(), []).append(setting.strip())
    return by_algorithm


def algorithm_settings(cfg: Any, algorithm: str) -> AlgorithmSettings:
    """What ``algorithm`` trains with: the run's ``inner``/``server``/``fed.rounds`` (FedAvg: ``baseline_server``,
    ``baseline_lr`` and ``baseline_rounds``), then its entries of ``algorithm_overrides``."""
    from dataclasses import replace

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from core.algorithms.base import get_algorithm

    is_meta = get_algorithm(algorithm).is_meta
    inner = cfg.inner if is_meta or cfg.baseline_lr is None else replace(cfg.inner, lr=cfg.baseline_lr)
    fed = cfg.fed if is_meta or cfg.baseline_rounds is None else replace(cfg.fed, rounds=cfg.baseline_rounds)
    settings = AlgorithmSettings(inner, cfg.server if is_meta else cfg.baseline_server, fed)
    dotlist = parse_algorithm_overrides(cfg.algorithm_overrides).get(algorithm)
    if not dotlist:
        return settings
    try:
        merged = OmegaConf.merge(OmegaConf.structured(settings), OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as err:
        raise ValueError(f"algorithm override for {algorithm!r} ({', '.join(dotlist)}): "
                         f"{str(err).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def inner_problems(inner: InnerConfig, option: str = "--inner.") -> list[str]:
    """The impossible values of ``inner``, each named as ``option`` + its key (``--inner.lr``, ``reptile:inner.lr``)."""
    problems = []
    for key, value, ok, need in [
        ("steps", inner.steps, inner.steps >= 0, ">= 0"),
        ("lr", inner.lr, inner.lr > 0, "> 0"),
        ("meta_dropout", inner.meta_dropout, 0 <= inner.meta_dropout < 1, "in [0, 1)"),
        ("meta_dropout_at", inner.meta_dropout_at, inner.meta_dropout_at in META_DROPOUT_SITES,
         ", ".join(META_DROPOUT_SITES)),
        ("group", inner.group, inner.group in INNER_GROUPS, ", ".join(INNER_GROUPS)),
    ]:
        if not ok:
            name = option + (key.replace("_", "-") if option.startswith("--") else key)
            problems.append(f"{name} {value} (must be {need})")
    return problems


def check_algorithm_overrides(cfg: Any, trained: list[str]) -> None:
    """Fail before training when an override names an algorithm the run does not train, a bad key or a bad value."""
    for name in parse_algorithm_overrides(cfg.algorithm_overrides):
        if name not in trained:
            raise ValueError(f"algorithm override for {name!r}, but this run trains {', '.join(trained)}")
        settings = algorithm_settings(cfg, name)
        SERVER_OPTIMIZERS.get(settings.server.optimizer)
        problems = inner_problems(settings.inner, f"{name}:inner.")
        if problems:
            raise ValueError("invalid algorithm override(s): " + "; ".join(problems))


def to_plain(cfg: Any) -> dict:
    """The resolved config as plain dict (for YAML and MLflow params)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def to_flat(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a flat ``{dotted key: value}`` table (a Flower run config); ``from_flat`` reverses it."""
    return flatten(to_plain(cfg))


def from_flat(base: Any, flat: Mapping[str, Any]) -> Any:
    """``base`` (a config dataclass or its class) with the dotted values of ``flat`` merged in, typed by OmegaConf as
    a preset is (``"true"`` -> True, ``"30"`` -> 30.0; ``-`` reads as ``_``). An unknown key or a value of the wrong
    type raises ``ValueError`` naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.replace("-", "_").split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(base), nested))
    except OmegaConfBaseException as err:
        raise ValueError(f"{getattr(err, 'full_key', '')}: {str(err).splitlines()[0]}") from None


def check_run_config(cfg: Any) -> None:
    """Refuse impossible settings before any data is read or any run is created, naming the option."""
    problems = []
    fed, ev = cfg.fed, cfg.eval
    for option, value, ok, need in [
        ("fed.rounds", fed.rounds, fed.rounds >= 1, ">= 1"),
        ("baseline_rounds", cfg.baseline_rounds, cfg.baseline_rounds is None or cfg.baseline_rounds >= 1, ">= 1"),
        ("fed.clients_per_round", fed.clients_per_round, fed.clients_per_round >= 1, ">= 1"),
        ("fed.val_every", fed.val_every, fed.val_every >= 1, ">= 1"),
        ("fed.dropout", fed.dropout, 0 <= fed.dropout < 1, "in [0, 1)"),
        ("fed.attack_fraction", fed.attack_fraction, 0 <= fed.attack_fraction < 1, "in [0, 1)"),
        ("eval.shots", ev.shots, bool(ev.shots) and min(ev.shots) >= 1, "non-empty, each >= 1"),
        ("eval.steps", ev.steps, bool(ev.steps) and min(ev.steps) >= 0, "non-empty, each >= 0"),
        ("eval.lr_grid", ev.lr_grid, bool(ev.lr_grid) and min(ev.lr_grid) > 0, "non-empty, each > 0"),
        ("eval.draws", ev.draws, ev.draws >= 1, ">= 1"),
        ("eval.select_draws", ev.select_draws, ev.select_draws >= 1, ">= 1"),
        ("eval.checkpoint_draws", ev.checkpoint_draws, ev.checkpoint_draws >= 1, ">= 1"),
        ("eval.checkpoint_average", ev.checkpoint_average, ev.checkpoint_average >= 0, ">= 0"),
        ("eval.select_shots", ev.select_shots, ev.select_shots is None or ev.select_shots >= 1, ">= 1"),
        ("eval.choice_folds", ev.choice_folds, ev.choice_folds >= 2, ">= 2"),
    ]:
        if not ok:
            problems.append(f"--{option.replace('_', '-')} {value} (must be {need})")
    problems += inner_problems(cfg.inner)
    from core.recipes import RECIPES
    from core.attacks import ATTACKS

    from core.aggregation import WEIGHTINGS
    from core.sampling import SAMPLERS

    if fed.sampler not in SAMPLERS:
        problems.append(f"--fed.sampler {fed.sampler} (choose from {', '.join(SAMPLERS.names())})")
    if fed.weighting not in WEIGHTINGS:
        problems.append(f"--fed.weighting {fed.weighting} (choose from {', '.join(WEIGHTINGS.names())})")
    if fed.attack not in ATTACKS:
        problems.append(f"--fed.attack {fed.attack} (choose from {', '.join(ATTACKS.names())})")

    unknown = [r for r in ev.recipes if r not in RECIPES]
    if unknown:
        problems.append(f"--eval.recipes {' '.join(unknown)} (choose from {', '.join(RECIPES.names())})")
    from core.devices import DEVICES, DeviceError, resolve_device

    if cfg.device not in DEVICES:
        problems.append(f"--device {cfg.device} (choose from {', '.join(DEVICES.names())})")
    else:
        try:
            resolve_device(cfg.device)
        except DeviceError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("invalid option(s): " + "; ".join(problems))
