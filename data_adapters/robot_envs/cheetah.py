"""MuJoCo family: HalfCheetah with a per-robot target velocity and body-mass / friction scaling.

The velocity task of the meta-RL literature (MAML's "HalfCheetahVel"): reward
``-|forward velocity - target| - 0.05 ||a||^2``, on Gymnasium's ``HalfCheetah-v5`` whose body masses and
ground friction are scaled per robot. Needs ``pip install "gymnasium[mujoco]"`` (MuJoCo wheels from
PyPI); the family is registered regardless and says so when built without it. Each of the ``num_envs``
copies is its own MuJoCo model, stepped in a loop (MuJoCo itself is the cost, ~20k steps/s here).
MuJoCo 4 warns that Gymnasium's model uses a deprecated attribute and writes that to ./MUJOCO_LOG.TXT.
"""
from __future__ import annotations

import numpy as np
from gymnasium.error import DependencyNotInstalled

from data_adapters.robot_envs.base import FAMILIES, BatchedRobotEnv, ParamSpec, RobotFamily, RobotParams

CTRL_COST = 0.05


class HalfCheetahVelEnv(BatchedRobotEnv):
    """Batched HalfCheetah-v5 models with per-robot masses, friction and target velocity."""

    def __init__(self, params: RobotParams, num_envs: int, horizon: int, robot_id: str) -> None:
        super().__init__(CHEETAH, params, horizon, robot_id)
        try:
            from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
        except (ImportError, DependencyNotInstalled) as err:  # pragma: no cover - depends on the install
            raise ModuleNotFoundError(
                f"robot family 'cheetah' needs MuJoCo: pip install \"gymnasium[mujoco]\" ({err})"
            ) from err
        self.sims = []
        for i in range(num_envs):
            sim = HalfCheetahEnv()
            sim.model.body_mass[:] = sim.model.body_mass * self.params["mass_scale"][i, 0]
            sim.model.geom_friction[:, 0] = sim.model.geom_friction[:, 0] * self.params["friction_scale"][i, 0]
            self.sims.append(sim)
        self.obs = np.zeros((num_envs, CHEETAH.obs_dim))

    def _reset(self, rng: np.random.Generator, idx: np.ndarray) -> None:
        for i in idx:
            self.obs[i] = self.sims[i].reset(seed=int(rng.integers(2**31 - 1)))[0]

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reward = np.zeros(self.num_envs)
        for i, sim in enumerate(self.sims):
            obs, _, _, _, info = sim.step(actions[i].astype(np.float32))
            self.obs[i] = obs
            target = self.params["target_velocity"][i, 0]
            reward[i] = -abs(info["x_velocity"] - target) - CTRL_COST * float(np.sum(actions[i] ** 2))
        return reward, np.zeros(self.num_envs, dtype=bool)

    def _observe(self) -> np.ndarray:
        return self.obs.copy()

    def close_extras(self, **kwargs) -> None:
        for sim in self.sims:
            sim.close()


CHEETAH = FAMILIES.register("cheetah", RobotFamily(
    name="cheetah",
    description="MuJoCo HalfCheetah-v5, per-robot target velocity, body-mass and friction scaling (needs gymnasium[mujoco])",
    params=(
        ParamSpec("target_velocity", 1, (1.0,), (-10.0, 10.0), (0.0, 2.0), (0.0, 3.0),
                  "forward velocity to track, m/s", dynamics=False),
        ParamSpec("mass_scale", 1, (1.0,), (0.05, 20.0), (0.75, 1.25), (0.4, 2.0), "scale of every body mass (> 0)"),
        ParamSpec("friction_scale", 1, (1.0,), (0.0, 20.0), (0.75, 1.25), (0.3, 2.0), "scale of ground friction"),
    ),
    obs_dim=17,
    act_dim=6,
    horizon=200,
    make=lambda params, n, horizon, rid: HalfCheetahVelEnv(params, n, horizon, rid),
    requires="mujoco",
))
