"""The robotics :class:`~core.problem.Problem`: sites are robots, data are rollouts of the policy itself.

A meta-training episode of robot r with meta-parameters theta is

- ``support``: K rollouts of theta in r's environment, as a policy-gradient batch;
- ``query``: K more rollouts of theta (a FIXED batch: FedAvg/Reptile train on support + query, which
  makes ``fedavg`` the pretrained multi-task policy-gradient baseline);
- ``query_fn(adapted)``: K fresh rollouts of the ADAPTED policy (first-order MAML / Per-FedAvg take the
  meta-gradient on them, as MAML for RL does).

Second-order algorithms (``maml``, ``metasgd``, ``perfedavg-hf``) differentiate a FIXED query and are
refused by the core for rollout episodes: a query of pre-adaptation rollouts makes the meta-objective
reward collapsing the adapted policy's noise (measured: after-adaptation return fell from -10 to -150
within 25 rounds), so it is not offered.

A batch is ``(obs [M, o], actions [M, a], advantages [M], logp_old [M])`` with ``M = episodes * horizon``;
the loss is a policy-gradient surrogate through ``functional_call``, so the core's ``adapt()`` is the
inner loop and every robot adapts with the same code at onboarding.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from core.devices import device_of, to_device
from core.problem import FewShotTask, Problem
from core.tasks import Federation, Site, SiteDataError
from core.types import Batch, Episode, LossFn, Params
from verticals.robotics.pg import SURROGATES, advantages, gaussian_logp
from verticals.robotics.policy import GaussianMLPPolicy, sampling_actor

#: ``simulate(site, act, episodes, seed) -> rollouts`` with ``.obs [n,T,o] .actions [n,T,a] .rewards [n,T]
#: .success [n] .returns [n]`` (supplied by the data adapter, see ``data_adapters/robot_envs``).
Simulate = Callable[[Site, Callable[[Tensor], Tensor], int, int], Any]


@dataclass(frozen=True)
class RolloutSettings:
    """Everything that shapes rollouts, batches and the policy (saved with the model as preprocessing).

    Args:
        obs_dim: observation size. act_dim: action size. horizon: steps per episode.
        hidden: policy hidden widths. init_log_std: initial action log-std.
        context_dim: the policy's context vector (0 = none).
        train_rollouts: episodes per support / query batch in meta-training.
        eval_rollouts: episodes scoring a policy on a held-out robot.
        gamma: discount. gae_lambda: GAE lambda.
        surrogate: registered surrogate loss name.
        has_success: whether the family defines success (adds ``success_rate``).
    """

    obs_dim: int
    act_dim: int
    horizon: int
    hidden: tuple[int, ...] = (64, 64)
    init_log_std: float = -0.5
    context_dim: int = 0
    train_rollouts: int = 20
    eval_rollouts: int = 20
    gamma: float = 0.99
    gae_lambda: float = 1.0
    surrogate: str = "ppo"
    has_success: bool = True

    def __post_init__(self) -> None:
        SURROGATES.get(self.surrogate)
        if self.train_rollouts < 1 or self.eval_rollouts < 1:
            raise ValueError("robotics: train_rollouts and eval_rollouts must be >= 1")
        if self.context_dim < 0:
            raise ValueError(f"robotics: --data.context-dim must be >= 0, got {self.context_dim}")


@dataclass(frozen=True, eq=False)
class PolicyLoss:
    """The pure policy-gradient loss ``(params, (obs, actions, adv, logp_old)) -> scalar`` under the registered
    ``surrogate``; :meth:`with_surrogate` gives the same loss under another (the ``reinforce`` recipe)."""

    model: nn.Module
    surrogate: str

    def __post_init__(self) -> None:
        SURROGATES.get(self.surrogate)

    def __call__(self, params: Params, batch: Batch) -> Tensor:
        obs, actions, adv, logp_old = batch
        mean = functional_call(self.model, params, (obs,))
        return SURROGATES.get(self.surrogate)(gaussian_logp(mean, params["log_std"], actions), logp_old, adv)

    def with_surrogate(self, surrogate: str) -> "PolicyLoss":
        return replace(self, surrogate=surrogate)


#: Seed offset between the starts' trial episodes (:meth:`RobotFewShotTask.trial_scores`): a vector env seeds its
#: i-th episode with ``seed + i``, so starts further apart than any batch never share an episode.
TRIAL_SEED_STRIDE = 7919


def draw_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


@dataclass
class RobotFewShotTask(FewShotTask):
    """One (robot, shots, draw): the support is ``shots`` rollouts of the policy being adapted, the score
    the mean return of ``eval_rollouts`` rollouts; env and action-noise seeds are fixed per draw, so every
    method sees the same starts and noise (common random numbers)."""

    problem: "RoboticsProblem"
    site: Site
    shots: int
    support_seed: int
    score_seed: int
    site_id: str = ""
    support_loss_falls: ClassVar[bool] = False  # a policy-gradient step aims at the return, not the surrogate

    def __post_init__(self) -> None:
        self.site_id = self.site.site_id

    def support(self, params: Params) -> Batch:
        return self.problem.rollout_batch(self.site, self.shots, self.support_seed, params)

    def episode_trials(self) -> Callable[[Params, int, int], list[float]]:
        return self.trial_scores

    def episode_support(self) -> Callable[[Params, int, int], Batch]:
        return self.trial_support

    def trial_support(self, params: Params, episodes: int, trial: int) -> Batch:
        """``episodes`` rollouts of ``params`` as a support batch, seeded half a stride after the ``trial``-th start's
        trial episodes (:meth:`trial_scores`): the rollouts that start adapts on before its adapted episodes."""
        if episodes > TRIAL_SEED_STRIDE // 2:
            raise ValueError(f"{episodes} rollouts per start would reuse another batch's seeds (at most "
                             f"{TRIAL_SEED_STRIDE // 2})")
        seed = self.support_seed + TRIAL_SEED_STRIDE * (trial + 1) + TRIAL_SEED_STRIDE // 2
        return self.problem.rollout_batch(self.site, episodes, seed, params)

    def trial_scores(self, params: Params, episodes: int, trial: int) -> list[float]:
        """The return of each of ``episodes`` rollouts of ``params``, from seeds of the draw's support set apart per
        start (``trial``) by :data:`TRIAL_SEED_STRIDE`: each start runs its own episodes, as on a real robot. A
        policy that cannot run (non-finite parameters or actions) returns ``-inf`` for each."""
        try:
            if not all(torch.isfinite(v).all() for v in params.values()):
                raise FloatingPointError("non-finite policy parameters")
            seed = self.support_seed + TRIAL_SEED_STRIDE * (trial + 1)
            rollouts = self.problem.rollouts(self.site, params, episodes, seed)
        except FloatingPointError:
            return [float("-inf")] * episodes
        return [float(r) for r in rollouts.returns]

    def score(self, params: Params) -> dict[str, float]:
        """Mean return (and success rate) of ``eval_rollouts`` episodes. A policy whose adaptation diverged
        (non-finite parameters or actions, e.g. too large a step size in the validation search) scores
        ``-inf``: it is never chosen, and shows as such if it happens on a test robot."""
        try:
            if not all(torch.isfinite(v).all() for v in params.values()):
                raise FloatingPointError("non-finite policy parameters")
            rollouts = self.problem.rollouts(self.site, params, self.problem.settings.eval_rollouts, self.score_seed)
        except FloatingPointError:  # includes the simulator's SimulationError on NaN actions
            return {"return": float("-inf"), **({"success_rate": 0.0} if self.problem.settings.has_success else {})}
        metrics = {"return": float(rollouts.returns.mean())}
        if self.problem.settings.has_success:
            metrics["success_rate"] = float(rollouts.success.float().mean())
        return metrics


@dataclass
class RoboticsProblem(Problem):
    """Meta-RL over a fleet: see the module docstring.

    Args:
        federation: robots as sites (``metadata['robot']``), roles train / validation / test.
        simulate: rollouts of a site's robot.
        settings: rollout, batch and policy settings.
        preprocessing: JSON state saved with the model (family, horizon, settings) for onboarding.
    """

    federation: Federation
    simulate: Simulate
    settings: RolloutSettings
    preprocessing: dict[str, Any] = field(default_factory=dict)
    headline: str = "return"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        self._template: Optional[nn.Module] = None

    @property
    def template(self) -> nn.Module:
        """A policy module whose architecture ``functional_call`` uses for rollouts (its weights are unused)."""
        if self._template is None:
            with torch.random.fork_rng():
                self._template = self.make_model()
        return self._template

    def make_model(self) -> nn.Module:
        s = self.settings
        return GaussianMLPPolicy(s.obs_dim, s.act_dim, s.hidden, s.init_log_std, s.context_dim)

    def loss_fn(self, model: nn.Module) -> LossFn:
        return PolicyLoss(model, self.settings.surrogate)

    def rollouts(self, site: Site, params: Params, episodes: int, seed: int):
        """``episodes`` rollouts of ``params`` on ``site``'s robot. They always run on the CPU, whatever the
        device of ``params``: the simulators step NumPy/MuJoCo one small observation at a time, where a GPU
        round trip per step would cost more than the policy's forward pass."""
        if episodes < 1:
            raise SiteDataError(f"robot {site.site_id!r}: needs at least 1 rollout per batch, got {episodes}")
        actor = sampling_actor(self.template, to_device(params, "cpu"), torch.Generator().manual_seed(seed), episodes,
                               self.settings.horizon)
        return self.simulate(site, actor, episodes, seed)

    def batch(self, site: Site, params: Params, rollouts: Any) -> Batch:
        """The policy-gradient batch ``(obs, actions, adv, logp_old)`` of ``rollouts`` collected by ``params``."""
        s = self.settings
        adv = advantages(rollouts.obs, rollouts.rewards, s.gamma, s.gae_lambda)
        obs = rollouts.obs.reshape(-1, s.obs_dim)
        actions = rollouts.actions.reshape(-1, s.act_dim)
        with torch.no_grad():
            p = {k: v.detach() for k, v in params.items()}
            logp_old = gaussian_logp(functional_call(self.template, p, (obs,)), p["log_std"], actions)
        batch = (obs, actions, adv.reshape(-1), logp_old)
        if not all(torch.isfinite(t).all() for t in batch):
            raise FloatingPointError(f"robot {site.site_id!r}: non-finite values in the policy-gradient batch; "
                                     "the policy parameters diverged (lower the learning rates)")
        return batch

    def rollout_batch(self, site: Site, episodes: int, seed: int, params: Params) -> Batch:
        """The policy-gradient batch of fresh rollouts of ``params``, built on the CPU and returned on the device
        of ``params`` (where the inner loop and the meta-gradient run)."""
        cpu = to_device(params, "cpu")
        return to_device(self.batch(site, cpu, self.rollouts(site, cpu, episodes, seed)), device_of(params))

    def train_episode(self, site_id: str, meta: Params, gen: torch.Generator) -> Episode:
        site = self.federation.sites[site_id]
        k = self.settings.train_rollouts
        s_sup, s_qry, s_adapted = draw_seed(gen), draw_seed(gen), draw_seed(gen)
        return Episode(support=self.rollout_batch(site, k, s_sup, meta), query=self.rollout_batch(site, k, s_qry, meta),
                       site_id=site_id, query_fn=partial(self.rollout_batch, site, k, s_adapted))

    def few_shot_task(self, model: nn.Module, site: Site, shots: int, gen: torch.Generator) -> FewShotTask:
        return RobotFewShotTask(self, site, shots, draw_seed(gen), draw_seed(gen))

    def input_example(self) -> Tensor:
        return torch.zeros(2, self.settings.obs_dim)
