"""Classic-control family: Gymnasium's Pendulum swing-up with per-robot physics.

Same equations as ``gymnasium.envs.classic_control.PendulumEnv`` (dt 0.05, speed clipped to 8 rad/s,
reward ``-(angle^2 + 0.1 speed^2 + 0.001 torque^2)``), with per-robot mass, length, joint damping and
actuator gain (maximum torque = 2 * gain). Observation ``(cos angle, sin angle, speed)``; start angle
uniform in ``[-pi, pi]``, speed in ``[-1, 1]``. Success: ending within 0.3 rad of upright.
"""
from __future__ import annotations

import numpy as np

from data_adapters.robot_envs.base import FAMILIES, BatchedRobotEnv, ParamSpec, RobotFamily, RobotParams

DT, MAX_SPEED, GRAVITY, MAX_TORQUE = 0.05, 8.0, 10.0, 2.0
SUCCESS_ANGLE = 0.3


def angle_normalize(x: np.ndarray) -> np.ndarray:
    return ((x + np.pi) % (2 * np.pi)) - np.pi


class PendulumEnv(BatchedRobotEnv):
    """Batched pendulums with per-robot mass, length, damping, gain."""

    def __init__(self, params: RobotParams, num_envs: int, horizon: int, robot_id: str) -> None:
        super().__init__(PENDULUM, params, horizon, robot_id)
        self.th = np.zeros(self.num_envs)
        self.thdot = np.zeros(self.num_envs)

    def _reset(self, rng: np.random.Generator, idx: np.ndarray) -> None:
        self.th[idx] = rng.uniform(-np.pi, np.pi, size=len(idx))
        self.thdot[idx] = rng.uniform(-1.0, 1.0, size=len(idx))

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, l = self.params["mass"][:, 0], self.params["length"][:, 0]
        u = MAX_TORQUE * self.params["gain"][:, 0] * actions[:, 0]
        cost = angle_normalize(self.th) ** 2 + 0.1 * self.thdot**2 + 0.001 * u**2
        acc = 3 * GRAVITY / (2 * l) * np.sin(self.th) + 3.0 / (m * l**2) * u - self.params["damping"][:, 0] * self.thdot
        self.thdot = np.clip(self.thdot + acc * DT, -MAX_SPEED, MAX_SPEED)
        self.th = self.th + self.thdot * DT
        return -cost, np.abs(angle_normalize(self.th)) < SUCCESS_ANGLE

    def _observe(self) -> np.ndarray:
        return np.stack([np.cos(self.th), np.sin(self.th), self.thdot], axis=1)


PENDULUM = FAMILIES.register("pendulum", RobotFamily(
    name="pendulum",
    description="Pendulum swing-up (Gymnasium classic control) with per-robot mass, length, damping, torque gain",
    params=(
        ParamSpec("mass", 1, (1.0,), (1e-3, 100.0), (0.5, 1.5), (0.2, 3.0), "bob mass, kg (> 0)"),
        ParamSpec("length", 1, (1.0,), (1e-2, 10.0), (0.6, 1.4), (0.3, 2.0), "rod length, m (> 0)"),
        ParamSpec("damping", 1, (0.0,), (0.0, 10.0), (0.0, 0.5), (0.0, 1.5), "joint damping, 1/s (>= 0)"),
        ParamSpec("gain", 1, (1.0,), (1e-2, 10.0), (0.7, 1.3), (0.3, 2.0), "actuator gain on the 2 N m torque"),
    ),
    obs_dim=3,
    act_dim=1,
    horizon=200,
    make=lambda params, n, horizon, rid: PendulumEnv(params, n, horizon, rid),
    success=f"final angle within {SUCCESS_ANGLE} rad of upright",
))
