"""Robot environment families (data_adapters/robot_envs): seeding, the vector API, dynamics, bad input."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from core.registry import UnknownNameError
from core.tasks import SiteDataError
from data_adapters.robot_envs import (FAMILIES, RobotParamError, SimulationError, SingleRobotEnv,
                                      build_robot_federation, collect_rollouts, get_family, make_vector_env,
                                      parse_robot)
from data_adapters.robot_envs.point import PointNavEnv

ALL_POINT = ["goal", "gain", "rotation", "drift"]


def zero_actor(obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(obs.shape[0], 2)


def test_families_are_registered() -> None:
    assert {"point", "pendulum", "cheetah"} <= set(FAMILIES.names())


@pytest.mark.parametrize("family", ["point", "pendulum"])
def test_reset_is_seeded_and_rollouts_deterministic(family: str) -> None:
    env = make_vector_env(family, {}, num_envs=4, horizon=20)
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    act_dim = get_family(family).act_dim

    def actor(seed: int):
        gen = torch.Generator().manual_seed(seed)
        return lambda obs: torch.randn(obs.shape[0], act_dim, generator=gen)

    r1, r2 = collect_rollouts(env, actor(0), seed=7), collect_rollouts(env, actor(0), seed=7)
    assert torch.equal(r1.obs, r2.obs) and torch.equal(r1.rewards, r2.rewards)
    assert r1.obs.shape == (4, 20, get_family(family).obs_dim) and r1.rewards.shape == (4, 20)
    r3 = collect_rollouts(env, actor(1), seed=7)
    assert not torch.equal(r1.rewards, r3.rewards)


@pytest.mark.parametrize("family", ["point", "pendulum"])
def test_single_env_passes_gymnasium_checker(family: str) -> None:
    check_env(SingleRobotEnv(family, {}, horizon=10), skip_render_check=True)


def test_vector_env_truncates_at_horizon_and_autoresets_next_step() -> None:
    env = make_vector_env("point", {"goal": [0.3, 0.0]}, num_envs=2, horizon=3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 2) and obs.dtype == np.float32
    for t in range(3):
        obs, r, term, trunc, info = env.step(np.ones((2, 2), dtype=np.float32))
        assert trunc.all() == (t == 2) and not term.any()
    obs, r, term, trunc, _ = env.step(np.ones((2, 2), dtype=np.float32))  # next-step autoreset
    assert np.all(np.abs(obs) <= 0.02 + 1e-6) and np.all(r == 0) and not trunc.any()


def test_point_dynamics_gain_rotation_drift_and_reward() -> None:
    robot = {"goal": [0.0, 0.5], "gain": [2.0], "rotation": [90.0], "drift": [0.01, 0.0]}
    env = make_vector_env("point", robot, num_envs=1, horizon=5)
    env.reset(seed=0)
    start = env.pos.copy()
    obs, r, *_ = env.step(np.array([[1.0, 0.0]]))
    # action +x, rotated by 90 deg -> +y, times 0.1 * gain 2, plus drift +0.01 in x
    np.testing.assert_allclose(obs[0] - start[0], [0.01, 0.2], atol=1e-6)
    assert r[0] == pytest.approx(-np.linalg.norm(obs[0] - np.array([0.0, 0.5])), abs=1e-6)
    obs2, *_ = env.step(np.array([[5.0, 0.0]]))  # actions are clipped to [-1, 1]
    np.testing.assert_allclose(obs2[0] - obs[0], [0.01, 0.2], atol=1e-6)


def test_pendulum_mass_changes_the_dynamics() -> None:
    rollouts = {}
    for mass in (0.5, 2.0):
        env = make_vector_env("pendulum", {"mass": [mass]}, num_envs=2, horizon=30)
        rollouts[mass] = collect_rollouts(env, lambda o: torch.ones(o.shape[0], 1), seed=1)
    assert torch.equal(rollouts[0.5].obs[:, 0], rollouts[2.0].obs[:, 0])  # same seeded start
    assert not torch.allclose(rollouts[0.5].obs[:, -1], rollouts[2.0].obs[:, -1])


def test_unknown_family_lists_choices() -> None:
    with pytest.raises(UnknownNameError, match="unknown robot family 'hexapod'; choose one of: cheetah, pendulum, point"):
        make_vector_env("hexapod", {}, 1)
    with pytest.raises(UnknownNameError, match="robot family"):
        build_robot_federation("hexapod", train=2, validation=0, test=0, extrapolation=0, vary=[], seed=0)


@pytest.mark.parametrize(
    "text, match",
    [
        ("mass=-1", r"mass=-1 is outside its physical limits \[0.001, 100.0\]"),
        ("length=0", "length=0 is outside its physical limits"),
        ("mass=nan", "'mass' is not finite"),
        ("mass=1,2", "'mass' needs 1 value"),
        ("wheels=4", "has no parameter 'wheels'; parameters: mass, length, damping, gain"),
        ("mass", "cannot read 'mass'"),
        ("mass=heavy", "not a number"),
        ("", "empty robot description"),
    ],
)
def test_bad_robot_parameters_are_clear_errors(text: str, match: str) -> None:
    with pytest.raises(RobotParamError, match=match):
        parse_robot(text, get_family("pendulum"), "robot-7")


def test_parse_robot_fills_defaults() -> None:
    robot = parse_robot("goal=0.3,-0.2; gain=1.5", get_family("point"))
    np.testing.assert_allclose(robot["goal"], [0.3, -0.2])
    assert robot["gain"][0] == 1.5 and robot["rotation"][0] == 0.0 and robot["drift"].tolist() == [0.0, 0.0]
    with pytest.raises(RobotParamError, match="gain=-2 is outside its physical limits"):
        make_vector_env("point", {"gain": [-2.0]}, 1)


def test_nan_action_and_nan_observation_stop_the_simulation() -> None:
    env = make_vector_env("point", {}, num_envs=3, horizon=10, robot_id="r-1")
    env.reset(seed=0)
    with pytest.raises(SimulationError, match=r"robot 'r-1' \(point\): non-finite action for env 1 at step 0"):
        env.step(np.array([[0.0, 0.0], [np.nan, 0.0], [0.0, 0.0]]))

    class BrokenSimulator(PointNavEnv):
        def _advance(self, actions):
            reward, success = super()._advance(actions)
            self.pos[2] = np.nan
            return reward, success

    params = {k: np.repeat(np.asarray(v, dtype=float)[None], 3, 0) for k, v in
              get_family("point").validate({}, "r-2").items()}
    broken = BrokenSimulator(params, 3, 10, "r-2")
    broken.reset(seed=0)
    with pytest.raises(SimulationError, match=r"non-finite observation for env 2 at step 1.*training stops here"):
        collect_rollouts(broken, zero_actor, seed=0)


def test_federation_roles_and_extrapolation_robots() -> None:
    fed = build_robot_federation("point", train=6, validation=2, test=3, extrapolation=4, vary=ALL_POINT, seed=5)
    again = build_robot_federation("point", train=6, validation=2, test=3, extrapolation=4, vary=ALL_POINT, seed=5)
    assert fed.roles["train"] == [f"train-{i:03d}" for i in range(6)]
    assert fed.roles["test"] == [*(f"test-{i:03d}" for i in range(3)), *(f"extrap-{i:03d}" for i in range(4))]
    assert all(torch.equal(fed.sites[s].x, again.sites[s].x) for s in fed.sites)
    fam = get_family("point")
    for sid, site in fed.sites.items():
        robot = {k: np.asarray(v) for k, v in site.metadata["robot"].items()}
        outside = fam.is_extrapolation(robot)
        if sid.startswith("extrap-"):
            assert len(outside) == 1 and outside == site.metadata["extrapolated"]
            assert fam.spec(outside[0]).dynamics and site.metadata["kind"] == "extrapolation"  # dynamics first
        else:
            assert outside == [] and site.metadata["kind"] == "in-range"
    # validation robots outside the range join the validation role and leave every other robot as it was
    wider = build_robot_federation("point", train=6, validation=2, test=3, extrapolation=4, vary=ALL_POINT, seed=5,
                                   validation_extrapolation=3)
    assert wider.roles["validation"] == [*fed.roles["validation"], *(f"val-extrap-{i:03d}" for i in range(3))]
    assert all(torch.equal(fed.sites[s].x, wider.sites[s].x) for s in fed.sites)
    for i in range(3):
        extra = wider.sites[f"val-extrap-{i:03d}"].metadata
        assert extra["kind"] == "extrapolation" and len(extra["extrapolated"]) == 1
    with pytest.raises(SiteDataError, match=r"family 'point': validation_extrapolation must be >= 0, got -2"):
        build_robot_federation("point", train=6, validation=2, test=3, extrapolation=4, vary=ALL_POINT, seed=5,
                               validation_extrapolation=-2)
    goal_only = build_robot_federation("point", train=3, validation=0, test=0, extrapolation=0, vary=["goal"], seed=0)
    assert all(s.metadata["robot"]["gain"] == [1.0] for s in goal_only.sites.values())
    far = build_robot_federation("point", train=3, validation=0, test=0, extrapolation=2, vary=["goal"], seed=0)
    for sid in far.roles["test"]:  # goal-only fleets extrapolate with goals outside the training square
        goal = np.asarray(far.sites[sid].metadata["robot"]["goal"])
        assert far.sites[sid].metadata["extrapolated"] == ["goal"] and np.all(np.abs(goal) > 0.5)
    with pytest.raises(RobotParamError, match="has no parameter 'mass'"):
        build_robot_federation("point", train=3, validation=0, test=0, extrapolation=0, vary=["mass"], seed=0)


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None,
                    reason='MuJoCo not installed: pip install "gymnasium[mujoco]" to test the cheetah family')
def test_cheetah_family_scales_masses_and_tracks_velocity(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings to ./MUJOCO_LOG.TXT
    env = make_vector_env("cheetah", {"mass_scale": [1.5], "target_velocity": [1.0]}, num_envs=2, horizon=5)
    base = make_vector_env("cheetah", {}, num_envs=1, horizon=5)
    assert math.isclose(float(env.sims[0].model.body_mass.sum()), 1.5 * float(base.sims[0].model.body_mass.sum()),
                        rel_tol=1e-9)
    rollouts = collect_rollouts(env, lambda o: torch.zeros(o.shape[0], 6), seed=0)
    again = collect_rollouts(env, lambda o: torch.zeros(o.shape[0], 6), seed=0)
    assert rollouts.obs.shape == (2, 5, 17) and torch.equal(rollouts.rewards, again.rewards)
    assert torch.all(rollouts.rewards < 0)
