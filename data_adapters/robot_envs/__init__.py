"""Robot environment families for the robotics vertical (importing this registers every family).

``point`` (default, fast, 2D navigation as in MAML), ``pendulum`` (classic control with per-robot
physics), ``cheetah`` (MuJoCo HalfCheetah velocity task; needs ``gymnasium[mujoco]``).
"""
from data_adapters.robot_envs import cheetah, pendulum, point  # noqa: F401  (registration)
from data_adapters.robot_envs.base import (FAMILIES, ParamSpec, RobotFamily, RobotParamError, RobotParams,
                                           SimulationError, SingleRobotEnv, example_robot, get_family,
                                           make_vector_env, parse_robot, robot_to_text)
from data_adapters.robot_envs.fleet import (ActFn, Rollouts, Simulator, build_robot_federation, collect_rollouts,
                                            robot_site, site_robot)

__all__ = [
    "FAMILIES", "ActFn", "ParamSpec", "RobotFamily", "RobotParamError", "RobotParams", "Rollouts", "SimulationError",
    "Simulator", "SingleRobotEnv", "build_robot_federation", "collect_rollouts", "example_robot", "get_family",
    "make_vector_env", "parse_robot", "robot_site", "robot_to_text", "site_robot",
]
