"""Options of the robotics vertical (``data:`` in presets, ``--data.<field>`` on the command line)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class RoboticsData:
    """The fleet of robots, their rollouts and the policy."""

    family: str = "point"
    """Robot family: point (2D navigation, fast), pendulum (classic control), cheetah (MuJoCo)."""
    vary: list[str] = field(default_factory=list)
    """Parameters that differ between robots (empty = all of the family's; goal alone = MAML's goal-only task)."""
    train_robots: int = 40
    """Meta-training robots (parameters drawn from the family's training range)."""
    validation_robots: int = 8
    """Validation robots (adaptation-settings search, checkpoint selection)."""
    test_robots: int = 8
    """Held-out robots with parameters in the training range (ids test-NNN)."""
    extrapolation_robots: int = 8
    """Held-out robots with one dynamics parameter outside the training range (ids extrap-NNN)."""
    validation_extrapolation: int = 0
    """More validation robots, each with one dynamics parameter outside the training range (ids val-extrap-NNN),
    for a fleet that expects new robots outside it: they join every choice the validation robots make. Drawn after
    every other robot, so the rest of the fleet is the same with or without them."""
    horizon: int = 0
    """Steps per episode (0 = the family's default: point 100, pendulum 200, cheetah 200)."""
    train_rollouts: int = 20
    """Episodes per support (and per query) batch of a meta-training episode (K)."""
    eval_rollouts: int = 20
    """Episodes of the (adapted) policy that score a held-out robot (fixed seeds, same for every method)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0 = REINFORCE with a linear baseline)."""
    surrogate: str = "ppo"
    """Policy-gradient loss: ppo (clipped ratio; the default: its first step on a batch is REINFORCE's, first and
    second derivative, and later steps on the same batch stay near it), reinforce (-logp*A), ratio
    (importance-weighted, unclipped)."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden widths of the Gaussian MLP policy."""
    init_log_std: float = -0.5
    """Initial log standard deviation of the policy's actions (actions live in [-1, 1])."""
    context_dim: int = 0
    """Context vector the policy reads beside the observation (CAVIA; the `cavia` algorithm and the `context`
    recipe adapt only it); 0 = none."""
    robot: Optional[str] = None
    """Onboarding only (fml onboard robotics --robot ...): the new robot, e.g. 'goal=0.3,-0.2;gain=1.5;rotation=20';
    parameters left out take the family's defaults."""
