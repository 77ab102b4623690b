"""Robotics vertical: federated meta-RL for a fleet of robots whose dynamics differ (MAML for RL).

Each site is a robot (a Gymnasium environment parameterized per robot, ``data_adapters/robot_envs``);
the meta-initialization is a Gaussian MLP policy that a new robot adapts with a few policy-gradient
steps on a few episodes of its own experience. Runs with no data files.

Files: ``config.py``, ``policy.py`` (the model), ``problem.py``, ``presets/``, this module (registration),
``pg.py`` (policy-gradient math) and ``recipes.py`` (the ``reinforce`` and ``context-reinforce`` adaptation
recipes); no ``metrics.py``: the metrics are the rollouts' return and success rate, two lines of ``problem.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from core.tasks import Federation, Site
from core.vertical import VerticalSpec, register_vertical
from data_adapters.robot_envs import (Simulator, build_robot_federation, example_robot, get_family, parse_robot,
                                      robot_site)
from verticals.robotics import recipes  # noqa: F401  (registers `reinforce` and `context-reinforce`)
from verticals.robotics.config import RoboticsData
from verticals.robotics.problem import RoboticsProblem, RolloutSettings


def preprocessing_for(cfg: RoboticsData) -> dict[str, Any]:
    """Everything onboarding needs to rebuild the policy and its rollouts (saved as JSON with the model)."""
    fam = get_family(cfg.family)
    return {
        "family": fam.name, "horizon": int(cfg.horizon or fam.horizon), "obs_dim": fam.obs_dim,
        "act_dim": fam.act_dim, "hidden": list(cfg.hidden), "init_log_std": cfg.init_log_std,
        "train_rollouts": cfg.train_rollouts, "eval_rollouts": cfg.eval_rollouts, "gamma": cfg.gamma,
        "gae_lambda": cfg.gae_lambda, "surrogate": cfg.surrogate,
        "vary": list(cfg.vary) or [p.name for p in fam.params],
        "train_ranges": {p.name: list(p.train) for p in fam.params}, "has_success": bool(fam.success),
        **({"context_dim": int(cfg.context_dim)} if cfg.context_dim else {}),
    }


def problem_for(federation: Federation, pre: dict[str, Any]) -> RoboticsProblem:
    settings = RolloutSettings(
        obs_dim=int(pre["obs_dim"]), act_dim=int(pre["act_dim"]), horizon=int(pre["horizon"]), hidden=tuple(int(h) for h in pre["hidden"]),
        init_log_std=float(pre["init_log_std"]), context_dim=int(pre.get("context_dim", 0)),
        train_rollouts=int(pre["train_rollouts"]),
        eval_rollouts=int(pre["eval_rollouts"]), gamma=float(pre["gamma"]), gae_lambda=float(pre["gae_lambda"]),
        surrogate=str(pre["surrogate"]), has_success=bool(pre["has_success"]),
    )
    return RoboticsProblem(federation, Simulator(pre["family"], int(pre["horizon"])), settings, pre)


def prepare(cfg: RoboticsData, seed: int) -> RoboticsProblem:
    """Draw the fleet (seeded) and build the problem."""
    pre = preprocessing_for(cfg)
    fed = build_robot_federation(cfg.family, train=cfg.train_robots, validation=cfg.validation_robots,
                                 test=cfg.test_robots, extrapolation=cfg.extrapolation_robots, vary=pre["vary"],
                                 seed=seed, validation_extrapolation=cfg.validation_extrapolation)
    return problem_for(fed, pre)


def load_new_site(cfg: RoboticsData, preprocessing: dict, site_id: Optional[str]) -> tuple[RoboticsProblem, Site]:
    """A new robot from ``--robot 'goal=0.3,-0.2;gain=1.5'`` with the SAVED family and policy settings."""
    pre = dict(preprocessing) if preprocessing else preprocessing_for(cfg)
    fam = get_family(pre["family"])
    sid = site_id or "new-robot"
    if not cfg.robot:
        raise ValueError(f"robotics onboarding needs the new robot's parameters: --robot '{example_robot(fam)}' "
                         f"(family {fam.name!r}; parameters: "
                         + "; ".join(f"{p.name}: {p.doc}" for p in fam.params) + ")")
    robot = parse_robot(cfg.robot, fam, sid)
    site = robot_site(sid, fam, robot, fam.is_extrapolation(robot))
    return problem_for(Federation({sid: site}, {"test": [sid]}), pre), site


SPEC = register_vertical(
    VerticalSpec(
        name="robotics",
        description="Federated meta-RL: a fleet of robots (Gymnasium envs) with per-robot dynamics; no data files",
        data_config=RoboticsData,
        prepare=prepare,
        load_new_site=load_new_site,
        presets_dir=Path(__file__).parent / "presets",
        onboard_args="--robot 'goal=0.3,-0.2;gain=1.5'",
        onboard_flags={"robot": "robot"},
        rows_based=False,
    )
)
