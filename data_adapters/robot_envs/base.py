"""Robot families: Gymnasium vector environments whose dynamics are parameterized per robot.

A *family* (point navigation, pendulum, half-cheetah) declares its per-robot parameters with their
physical limits, the range meta-training robots are drawn from, and a wider extrapolation range. A
*robot* is one validated assignment of those parameters; it is one federated site. Environments are
batched (``num_envs`` copies of the same robot stepped together) behind ``gymnasium.vector.VectorEnv``,
with fixed-length episodes (truncated at ``horizon``) and next-step autoreset.

Every step checks its input actions and output observations/rewards: a non-finite value raises
:class:`SimulationError` naming the robot, the step and the environment index, so training never
silently continues on NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from core.registry import Registry

#: Robot parameters: name -> array of shape ``[dim]`` (one robot) or ``[num_envs, dim]`` (batched).
RobotParams = dict[str, np.ndarray]


class RobotParamError(ValueError):
    """A robot's parameters are malformed or outside the family's physical limits."""


class SimulationError(FloatingPointError):
    """The simulator produced (or was given) a non-finite value."""


@dataclass(frozen=True)
class ParamSpec:
    """One per-robot parameter of a family.

    Args:
        name: key in robot strings (``gain=1.5``) and in site metadata.
        dim: number of values (2 for a planar goal).
        default: value used when a robot string omits the parameter.
        limits: inclusive physical limits ``(lo, hi)`` every value must satisfy (``None`` = unbounded).
        train: range meta-training, validation and in-range test robots draw each value from.
        extrapolation: wider range; extrapolation robots draw this parameter from the part of it
            outside ``train`` (``None``: the parameter never extrapolates).
        doc: one line for the CLI and README.
        dynamics: whether the parameter changes the dynamics (goals do not).
    """

    name: str
    dim: int
    default: tuple[float, ...]
    limits: tuple[Optional[float], Optional[float]]
    train: tuple[float, float]
    extrapolation: Optional[tuple[float, float]] = None
    doc: str = ""
    dynamics: bool = True

    def check(self, value: np.ndarray, robot_id: str) -> None:
        lo, hi = self.limits
        if value.shape[-1] != self.dim:
            raise RobotParamError(f"robot {robot_id!r}: parameter {self.name!r} needs {self.dim} value(s), "
                                  f"got {value.shape[-1]} ({value.tolist()})")
        if not np.all(np.isfinite(value)):
            raise RobotParamError(f"robot {robot_id!r}: parameter {self.name!r} is not finite ({value.tolist()})")
        if (lo is not None and np.any(value < lo)) or (hi is not None and np.any(value > hi)):
            raise RobotParamError(
                f"robot {robot_id!r}: {self.name}={_fmt(value)} is outside its physical limits "
                f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}] ({self.doc}); "
                "fix the robot's parameters"
            )

    def in_train_range(self, value: np.ndarray) -> bool:
        return bool(np.all((value >= self.train[0]) & (value <= self.train[1])))


def _fmt(value: np.ndarray) -> str:
    return ",".join(f"{v:g}" for v in np.asarray(value).reshape(-1))


@dataclass(frozen=True)
class RobotFamily:
    """A family of robots sharing observation/action spaces; dynamics differ per robot.

    Args:
        name: registry name (``--family``).
        description: one line.
        params: the per-robot parameters.
        obs_dim: observation size.
        act_dim: action size (actions are normalized to ``[-1, 1]``).
        horizon: default episode length.
        make: ``make(params, num_envs, horizon, robot_id) -> VectorEnv`` with batched params ``[num_envs, dim]``.
        success: what counts as success (empty if the family defines none).
        requires: optional module the family needs (checked when an environment is built).
    """

    name: str
    description: str
    params: tuple[ParamSpec, ...]
    obs_dim: int
    act_dim: int
    horizon: int
    make: Callable[[RobotParams, int, int, str], VectorEnv]
    success: str = ""
    requires: Optional[str] = None

    def spec(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise RobotParamError(f"family {self.name!r} has no parameter {name!r}; parameters: "
                              f"{', '.join(p.name for p in self.params)}")

    def validate(self, values: dict[str, Sequence[float]], robot_id: str) -> RobotParams:
        """Fill defaults, check dimensions, finiteness and physical limits; returns arrays ``[dim]``."""
        for name in values:
            self.spec(name)
        robot: RobotParams = {}
        for p in self.params:
            value = np.asarray(values.get(p.name, p.default), dtype=np.float64).reshape(-1)
            p.check(value, robot_id)
            robot[p.name] = value
        return robot

    def is_extrapolation(self, robot: RobotParams) -> list[str]:
        """Names of the parameters outside the training range (empty: an in-range robot)."""
        return [p.name for p in self.params if not p.in_train_range(robot[p.name])]


FAMILIES: Registry[RobotFamily] = Registry("robot family")


def get_family(name: str) -> RobotFamily:
    return FAMILIES.get(name)


def parse_robot(text: str, family: RobotFamily, robot_id: str = "new-robot") -> RobotParams:
    """Parse ``"goal=0.3,-0.2;gain=1.5"`` (``;``-separated ``name=v1,v2``) and validate it.

    Raises:
        RobotParamError: malformed text, unknown parameter, wrong size, non-finite or out-of-limit value.
    """
    values: dict[str, list[float]] = {}
    for part in filter(None, (s.strip() for s in text.replace("\n", ";").split(";"))):
        name, sep, rhs = part.partition("=")
        if not sep or not name.strip():
            raise RobotParamError(f"robot {robot_id!r}: cannot read {part!r}; write name=value[,value] pairs "
                                  f"separated by ';', e.g. " + example_robot(family))
        try:
            values[name.strip()] = [float(v) for v in rhs.split(",")]
        except ValueError:
            raise RobotParamError(f"robot {robot_id!r}: {part!r} has a value that is not a number") from None
    if not values:
        raise RobotParamError(f"robot {robot_id!r}: empty robot description; e.g. " + example_robot(family))
    return family.validate(values, robot_id)


def example_robot(family: RobotFamily) -> str:
    return ";".join(f"{p.name}={_fmt(np.asarray(p.default))}" for p in family.params)


def robot_to_text(robot: RobotParams) -> str:
    return ";".join(f"{k}={_fmt(v)}" for k, v in robot.items())


def sample_robot(family: RobotFamily, rng: np.random.Generator, vary: Sequence[str], extrapolate: bool) -> tuple[RobotParams, list[str]]:
    """Draw one robot: the ``vary`` parameters from their training range (others default).

    With ``extrapolate``, ONE parameter among ``vary`` (drawn at random among the dynamics parameters,
    or among the others, e.g. the goal, if none varies) comes from the part of its extrapolation range
    outside the training range. Returns the robot and the extrapolated names.
    """
    robot: RobotParams = {}
    for p in family.params:
        robot[p.name] = (rng.uniform(p.train[0], p.train[1], size=p.dim) if p.name in vary
                         else np.asarray(p.default, dtype=np.float64))
    outside: list[str] = []
    if extrapolate:
        candidates = [p for p in family.params if p.name in vary and p.extrapolation is not None]
        candidates = [p for p in candidates if p.dynamics] or candidates  # dynamics first, else e.g. far goals
        if not candidates:
            raise RobotParamError(f"family {family.name!r}: none of the varied parameters {list(vary)} has an "
                                  "extrapolation range; vary another parameter or set extrapolation_robots=0 (and "
                                  "validation_extrapolation=0)")
        p = candidates[int(rng.integers(len(candidates)))]
        robot[p.name] = outer_band(rng, p.train, p.extrapolation, p.dim)  # type: ignore[arg-type]
        outside.append(p.name)
    for p in family.params:
        p.check(robot[p.name], "sampled robot")
    return robot, outside


def outer_band(rng: np.random.Generator, inner: tuple[float, float], outer: tuple[float, float], dim: int) -> np.ndarray:
    """Uniform draws from ``[outer_lo, inner_lo) U (inner_hi, outer_hi]``."""
    left, right = max(inner[0] - outer[0], 0.0), max(outer[1] - inner[1], 0.0)
    u = rng.uniform(0.0, left + right, size=dim)
    return np.where(u < left, outer[0] + u, inner[1] + (u - left))


# ----------------------------------------------------------------------------- batched environment
class BatchedRobotEnv(VectorEnv):
    """``num_envs`` copies of robots stepped together in numpy, fixed horizon, next-step autoreset.

    Subclasses implement ``_reset(rng, idx)`` (new state for the envs ``idx``), ``_advance(actions)``
    (-> reward ``[n]``, success ``[n]``) and ``_observe()`` (-> ``[n, obs_dim]``).

    Args:
        family: the robot family.
        params: batched robot parameters ``{name: [num_envs, dim]}``.
        horizon: steps per episode (truncation).
        robot_id: names the robot in error messages.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, family: RobotFamily, params: RobotParams, horizon: int, robot_id: str) -> None:
        self.family, self.robot_id, self.horizon = family, robot_id, int(horizon)
        if self.horizon < 1:
            raise ValueError(f"robot {robot_id!r}: horizon must be >= 1, got {horizon}")
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        self.num_envs = int(next(iter(self.params.values())).shape[0])
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (family.obs_dim,), np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (family.act_dim,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    # -- subclass hooks
    def _reset(self, rng: np.random.Generator, idx: np.ndarray) -> None:
        raise NotImplementedError

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _observe(self) -> np.ndarray:
        raise NotImplementedError

    # -- gymnasium API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed, options=options)
        idx = np.arange(self.num_envs)
        self._reset(self.np_random, idx)
        self.t[:] = 0
        self._autoreset[:] = False
        obs = self._checked_obs(step=0)
        return obs, {}

    def step(self, actions: Any):
        a = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, self.family.act_dim)
        if not np.isfinite(a).all():
            bad = int(np.argmax(~np.isfinite(a).all(axis=1)))
            raise SimulationError(f"robot {self.robot_id!r} ({self.family.name}): non-finite action for env {bad} "
                                  f"at step {int(self.t.max())}; the policy produced NaN/inf (diverged parameters? "
                                  "lower the learning rates)")
        a = np.minimum(np.maximum(a, -1.0), 1.0)
        reward, success = self._advance(a)
        self.t += 1
        truncated = self.t >= self.horizon
        if self._autoreset.any():  # next-step autoreset: these envs start a new episode instead
            idx = np.nonzero(self._autoreset)[0]
            self._reset(self.np_random, idx)
            self.t[idx] = 0
            reward[idx], success[idx], truncated[idx] = 0.0, False, False
        obs = self._checked_obs(step=int(self.t.max()))
        if not np.isfinite(reward).all():
            raise SimulationError(f"robot {self.robot_id!r} ({self.family.name}): non-finite reward at step "
                                  f"{int(self.t.max())}; check the robot's parameters")
        self._autoreset = truncated
        return obs, reward.astype(np.float32), np.zeros(self.num_envs, dtype=bool), truncated, {"success": success}

    def _checked_obs(self, step: int) -> np.ndarray:
        obs = self._observe()
        if not np.isfinite(obs).all():
            bad = ~np.isfinite(obs).all(axis=1)
            raise SimulationError(
                f"robot {self.robot_id!r} ({self.family.name}): the simulator returned a non-finite observation "
                f"for env {int(np.argmax(bad))} at step {step} (robot {robot_to_text(self.robot_params(int(np.argmax(bad))))}); "
                "training stops here: check the robot's parameters against the family's limits"
            )
        return obs.astype(np.float32)

    def robot_params(self, i: int) -> RobotParams:
        return {k: v[i] for k, v in self.params.items()}


def broadcast_robot(robot: RobotParams, num_envs: int) -> RobotParams:
    """``{name: [dim]}`` -> ``{name: [num_envs, dim]}``."""
    return {k: np.broadcast_to(np.asarray(v, dtype=np.float64), (num_envs, len(v))).copy() for k, v in robot.items()}


def make_vector_env(family: str | RobotFamily, robot: RobotParams, num_envs: int, horizon: Optional[int] = None,
                    robot_id: str = "robot") -> VectorEnv:
    """A seeded-on-reset vector environment of ``num_envs`` copies of ``robot``."""
    fam = get_family(family) if isinstance(family, str) else family
    robot = fam.validate({k: np.asarray(v).reshape(-1).tolist() for k, v in robot.items()}, robot_id)
    if num_envs < 1:
        raise ValueError(f"robot {robot_id!r}: num_envs must be >= 1, got {num_envs}")
    return fam.make(broadcast_robot(robot, num_envs), num_envs, horizon or fam.horizon, robot_id)


class SingleRobotEnv(gym.Env):
    """One robot as a plain ``gymnasium.Env`` (a 1-env batch), for tools that expect a single env."""

    metadata = {"render_modes": []}

    def __init__(self, family: str, robot: RobotParams, horizon: Optional[int] = None, robot_id: str = "robot"):
        self.vec = make_vector_env(family, robot, 1, horizon, robot_id)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        obs, info = self.vec.reset(seed=seed)
        return obs[0], info

    def step(self, action):
        obs, r, term, trunc, info = self.vec.step(np.asarray(action)[None])
        self.vec._autoreset[:] = False  # a single env is reset by its caller
        return obs[0], float(r[0]), bool(term[0]), bool(trunc[0]), {"success": bool(info["success"][0])}


def deg2rad(x: np.ndarray) -> np.ndarray:
    return x * (math.pi / 180.0)
