"""A fleet of robots as a :class:`~core.tasks.Federation`, and seeded rollouts on a robot's own environment.

Sites are robots: ``train-NNN`` (meta-training), ``val-NNN`` (adaptation-settings search, checkpoint
selection), ``test-NNN`` (never seen, parameters in the training range) and ``extrap-NNN`` (never seen,
one dynamics parameter OUTSIDE the training range). A site carries no rows: ``x`` is its parameter
vector ``[1, P]`` (for fingerprints), the robot itself is in ``metadata``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from core.tasks import Federation, Site, SiteDataError
from data_adapters.robot_envs.base import (BatchedRobotEnv, RobotFamily, RobotParams, get_family, make_vector_env,
                                           robot_to_text, sample_robot)

#: ``act(obs [n, obs_dim] float32) -> actions [n, act_dim]`` (sampled by the policy; clipped by the env).
ActFn = Callable[[Tensor], Tensor]


@dataclass
class Rollouts:
    """Fixed-length episodes of one robot.

    Attributes:
        obs: observations the actions were taken at, ``[n, T, obs_dim]``.
        actions: actions as sampled (before the env's clipping), ``[n, T, act_dim]``.
        rewards: ``[n, T]``.
        success: whether each episode ended in the family's success state, ``[n]``.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    success: Tensor

    @property
    def returns(self) -> Tensor:
        return self.rewards.sum(dim=1)


def collect_rollouts(env: BatchedRobotEnv, act: ActFn, seed: int) -> Rollouts:
    """Run every env of ``env`` for one full episode from ``env.reset(seed=seed)``."""
    obs, _ = env.reset(seed=int(seed))
    obs_l, act_l, rew_l = [], [], []
    success = np.zeros(env.num_envs, dtype=bool)
    for _ in range(env.horizon):
        o = torch.from_numpy(obs)
        a = act(o)
        obs, r, _, _, info = env.step(a.detach().numpy())
        obs_l.append(o)
        act_l.append(a.detach())
        rew_l.append(torch.from_numpy(r))
        success = info["success"]
    return Rollouts(torch.stack(obs_l, 1), torch.stack(act_l, 1), torch.stack(rew_l, 1), torch.from_numpy(success))


def site_robot(site: Site) -> RobotParams:
    try:
        return {k: np.asarray(v, dtype=np.float64) for k, v in site.metadata["robot"].items()}
    except KeyError:
        raise SiteDataError(f"site {site.site_id!r} is not a robot (no metadata['robot'])") from None


class Simulator:
    """Rollouts of robot sites; keeps one vector env per (site, batch size) and reseeds it per call.

    Args:
        family: the robot family.
        horizon: episode length (``None``: the family's default).
    """

    def __init__(self, family: str | RobotFamily, horizon: Optional[int] = None) -> None:
        self.family = get_family(family) if isinstance(family, str) else family
        self.horizon = int(horizon or self.family.horizon)
        self._envs: dict[tuple[str, int], BatchedRobotEnv] = {}

    def __call__(self, site: Site, act: ActFn, episodes: int, seed: int) -> Rollouts:
        key = (site.site_id, int(episodes))
        if key not in self._envs:
            self._envs[key] = make_vector_env(self.family, site_robot(site), int(episodes), self.horizon, site.site_id)
        return collect_rollouts(self._envs[key], act, seed)


def robot_site(site_id: str, family: RobotFamily, robot: RobotParams, outside: Sequence[str] = ()) -> Site:
    """A site for ``robot``; ``outside`` lists its parameters outside the training range."""
    vec = torch.tensor(np.concatenate([robot[p.name] for p in family.params]), dtype=torch.float32)[None]
    meta = {"family": family.name, "robot": {k: v.tolist() for k, v in robot.items()},
            "robot_text": robot_to_text(robot), "extrapolated": list(outside),
            "kind": "extrapolation" if outside else "in-range"}
    return Site(site_id, vec, torch.zeros(1), metadata=meta)


def build_robot_federation(
    family: str,
    *,
    train: int,
    validation: int,
    test: int,
    extrapolation: int,
    vary: Sequence[str],
    seed: int,
    validation_extrapolation: int = 0,
) -> Federation:
    """Draw the fleet with ``seed``: train/validation/test robots in the training range, extrapolation
    robots (test role) with one dynamics parameter outside it, and ``validation_extrapolation`` validation robots
    outside it too, drawn last so that every other robot is the same with or without them.

    Raises:
        UnknownNameError: unknown family. RobotParamError: unknown parameter in ``vary``.
        SiteDataError: no training robots, or a negative count of robots.
    """
    fam = get_family(family)
    for name in vary:
        fam.spec(name)
    if train < 1:
        raise SiteDataError(f"family {family!r}: train_robots must be >= 1, got {train}")
    for name, count in (("validation_robots", validation), ("test_robots", test),
                        ("extrapolation_robots", extrapolation), ("validation_extrapolation", validation_extrapolation)):
        if count < 0:
            raise SiteDataError(f"family {family!r}: {name} must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    sites: list[Site] = []
    roles: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for prefix, role, count, extrap in [("train", "train", train, False), ("val", "validation", validation, False),
                                        ("test", "test", test, False), ("extrap", "test", extrapolation, True),
                                        ("val-extrap", "validation", validation_extrapolation, True)]:
        for i in range(count):
            robot, outside = sample_robot(fam, rng, vary, extrap)
            site = robot_site(f"{prefix}-{i:03d}", fam, robot, outside)
            sites.append(site)
            roles[role].append(site.site_id)
    return Federation({s.site_id: s for s in sites}, roles)
