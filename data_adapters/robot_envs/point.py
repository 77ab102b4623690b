"""2D point-robot navigation (the MAML paper's "2D navigation", Finn et al. 2017), with per-robot dynamics.

A point robot starts near the origin and must reach its own goal, which it does not observe (the
observation is its position): it learns the goal from rewards. Per step,
``p <- p + 0.1 * gain * R(rotation) * clip(a, -1, 1) + drift`` and the reward is ``-||p - goal||``.
So robots differ by goal (the MAML task), actuator gain, actuator misalignment (rotation) and a
constant drift (a slope, a worn wheel). Success: ending within 0.1 of the goal.
"""
from __future__ import annotations

import numpy as np

from data_adapters.robot_envs.base import FAMILIES, BatchedRobotEnv, ParamSpec, RobotFamily, RobotParams, deg2rad

STEP = 0.1
SUCCESS_RADIUS = 0.1
START_NOISE = 0.02


class PointNavEnv(BatchedRobotEnv):
    """Batched point robots; see the module docstring for the dynamics."""

    def __init__(self, params: RobotParams, num_envs: int, horizon: int, robot_id: str) -> None:
        super().__init__(POINT, params, horizon, robot_id)
        theta = deg2rad(self.params["rotation"][:, 0])
        c, s = np.cos(theta), np.sin(theta)
        self._rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # [n, 2, 2]
        self.pos = np.zeros((self.num_envs, 2))

    def _reset(self, rng: np.random.Generator, idx: np.ndarray) -> None:
        self.pos[idx] = rng.uniform(-START_NOISE, START_NOISE, size=(len(idx), 2))

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        move = STEP * self.params["gain"] * (self._rot @ actions[:, :, None])[:, :, 0]
        self.pos = self.pos + move + self.params["drift"]
        diff = self.pos - self.params["goal"]
        dist = np.sqrt((diff * diff).sum(axis=1))
        return -dist, dist < SUCCESS_RADIUS

    def _observe(self) -> np.ndarray:
        return self.pos.copy()


POINT = FAMILIES.register("point", RobotFamily(
    name="point",
    description="2D point-robot navigation to a per-robot goal (MAML), per-robot actuator gain, rotation, drift",
    params=(
        ParamSpec("goal", 2, (0.0, 0.0), (-5.0, 5.0), (-0.5, 0.5), (-0.8, 0.8),
                  "goal position (unobserved), metres", dynamics=False),
        ParamSpec("gain", 1, (1.0,), (0.01, 10.0), (0.5, 1.5), (0.2, 2.5), "actuator gain (> 0)"),
        ParamSpec("rotation", 1, (0.0,), (-180.0, 180.0), (-30.0, 30.0), (-90.0, 90.0),
                  "actuator misalignment, degrees"),
        ParamSpec("drift", 2, (0.0, 0.0), (-0.1, 0.1), (-0.01, 0.01), (-0.03, 0.03),
                  "constant displacement per step (slope, worn wheel), metres"),
    ),
    obs_dim=2,
    act_dim=2,
    horizon=100,
    make=lambda params, n, horizon, rid: PointNavEnv(params, n, horizon, rid),
    success=f"final distance to the goal < {SUCCESS_RADIUS}",
))
