"""DP-FedAvg together with SecAgg+ on Flower: the sites clip their own directions before masking, the server
adds the noise to the secure sum (``core.federation.secure_dp``). Run through the real ClientApp, Flower's
``secaggplus_mod`` and ``SecAggPlusWorkflow`` on the in-memory Grid of ``test_flower_driver`` (no Ray, no
processes), against the in-process DP-FedAvg of ``MetaLearner.run_round``.

The server's noise is secret (not seeded by the run), so with noise the comparison is in distribution: the
released direction minus the in-process noise-free DP mean must be zero-mean noise with the in-process
per-coordinate variance ``(dp_noise * dp_clip / clients_per_round)^2`` -- twice the noise, per-client noise
or no noise all fail it.
"""
from __future__ import annotations

import math
import types

import pytest
import torch

pytest.importorskip("flwr")

from core.federation.client import make_client_app  # noqa: E402
from core.privacy import noise_std, run_epsilon  # noqa: E402
from pipelines.config import ConfigError  # noqa: E402
from pipelines.federate_node import data_config, load_site, vertical_spec  # noqa: E402
from pipelines.federate_server import privacy_spent, resolve_run  # noqa: E402
from tests.test_flower_driver import (  # noqa: E402,F401  (server_identity: the autouse fixture)
    DATA,
    MemoryGrid,
    drive,
    in_process,
    make_run,
    server_identity,
    sites,
)

CLIP = 0.05  # the digits sites' FO-MAML directions have L2 norm ~0.11: the clip binds
SGD_LR1 = {"server.optimizer": "sgd", "server.lr": 1.0}  # meta_before - meta_after = the released direction


def secure_dp_run(**overrides):
    return make_run(**{"flower.secagg": True, "fed.dp_clip": CLIP, **SGD_LR1, **overrides})


def released(before: dict, after: dict) -> torch.Tensor:
    return torch.cat([(before[k] - after[k]).reshape(-1) for k in before])


def test_noise_free_secure_dp_rounds_equal_in_process_dp_fedavg():
    """Noise 0: site-side clipping + SecAgg+ + server-side division by clients_per_round is the in-process
    clipped DP-FedAvg mean, to SecAgg+'s quantization (2 * secagg_clip / 2**22 per entry and site). A round
    with a dropped-out site checks the FIXED denominator."""
    common = {"fed.rounds": 3, "fed.clients_per_round": 4, "fed.dropout": 0.3}
    run = secure_dp_run(**common)
    result = drive(run, MemoryGrid(make_client_app(load_site), sites()))
    reference = in_process(make_run(**{"fed.dp_clip": CLIP, **SGD_LR1, **common}), 3)
    assert all(r.applied for r in result.rounds)
    assert any(len(r.accepted) < 4 for r in result.rounds)  # dropout: divided by 4 all the same
    for k in reference:
        torch.testing.assert_close(result.meta[k], reference[k], rtol=0, atol=3e-5)
    unclipped = in_process(make_run(**{**SGD_LR1, **common}), 3)
    gap = max(float((unclipped[k] - reference[k]).abs().max()) for k in reference)
    assert gap > 1e-3  # the clip binds: a site that did not clip would fail the comparison above


def test_noisy_secure_dp_equals_in_process_in_distribution():
    """Noise > 0, several seeds: the released direction is the in-process noise-free DP mean plus zero-mean
    noise whose per-coordinate variance is the in-process one (measured on in-process DP-FedAvg too)."""
    z, per_round = 1.0, 4
    std = noise_std(per_round, z, CLIP)  # 0.0125 per coordinate
    flower_noise, local_noise, signal = [], [], []
    for seed in (5, 6, 7):
        common = {"seed": seed, "fed.rounds": 1, "fed.clients_per_round": per_round}
        run = secure_dp_run(**common, **{"fed.dp_noise": z})
        start = in_process(run, 0)
        result = drive(run, MemoryGrid(make_client_app(load_site), sites()))
        assert result.rounds[0].applied and len(result.rounds[0].accepted) == per_round
        clean = released(start, in_process(make_run(**{"fed.dp_clip": CLIP, **SGD_LR1, **common}), 1))
        noisy = released(start, in_process(make_run(**{"fed.dp_clip": CLIP, "fed.dp_noise": z, **SGD_LR1,
                                                       **common}), 1))
        flower_noise.append(released(start, result.meta) - clean)
        local_noise.append(noisy - clean)
        signal.append(clean)
    e, f, d = (torch.cat(x).double() for x in (flower_noise, local_noise, signal))
    n = e.numel()  # 3 x 25477 coordinates, i.i.d. noise
    assert abs(float(e.mean())) < 5 * std / math.sqrt(n)  # zero-mean ...
    assert abs(float(e @ d) / float(d.norm())) < 5 * std  # ... and no multiple of the signal (right scale)
    tolerance = 5 * math.sqrt(2 / n)  # relative standard error of a variance estimate: sqrt(2/n)
    assert abs(float(e.var()) / std**2 - 1) < tolerance  # 2x (noise twice) or 4x (per site) would fail
    assert abs(float(f.var()) / std**2 - 1) < tolerance  # the in-process variance, measured
    assert abs(float(e.var()) / float(f.var()) - 1) < 2 * tolerance
    assert not torch.allclose(e, f, atol=1e-3)  # not the in-process noise: not predictable from the seed


def test_server_noise_is_not_reproducible_from_the_seed():
    run = secure_dp_run(**{"fed.rounds": 1, "fed.dp_noise": 1.0})
    one = drive(run, MemoryGrid(make_client_app(load_site), sites()))
    two = drive(run, MemoryGrid(make_client_app(load_site), sites()))
    gap = max(float((one.meta[k] - two.meta[k]).abs().max()) for k in one.meta)
    assert gap > noise_std(3, 1.0, CLIP)  # same seed, same sites, different noise (max of 25477 draws ~ 6 std)


def test_epsilon_of_secure_dp_run_equals_in_process():
    """The accountant's epsilon of a SecAgg+ DP run is ``fml run``'s for the same rounds and sites."""
    from pipelines.run import privacy_spent as in_process_privacy

    run = secure_dp_run(**{"fed.rounds": 2, "fed.dp_noise": 1.1})
    result = drive(run, MemoryGrid(make_client_app(load_site), sites()))
    spec = vertical_spec("digits")
    problem = spec.prepare(data_config(spec, DATA), run.seed)
    trained = types.SimpleNamespace(global_step=2)  # what privacy_spent reads of a fitted MetaLearner
    expected = in_process_privacy(problem, run.fed, {run.algorithm: trained})
    got = privacy_spent(run, result, len(problem.train_site_ids()))
    assert got == pytest.approx(expected) and 0 < got[run.algorithm] < math.inf
    assert got[run.algorithm] == pytest.approx(run_epsilon(run.fed, 5, 2))
    started = next(e for e in result.events if e["kind"] == "run_started")
    assert started["secagg"] and started["privacy"].startswith("secagg+ & dp-fedavg")


def test_a_sum_beyond_the_clip_bound_is_not_released():
    """A site that tampers with SecAgg+'s weight factor scales the aggregate (and the other sites' share
    of it); the server refuses to release a sum that n clipped directions cannot make."""
    from core.federation.secure_dp import check_bound, release

    run = secure_dp_run(**{"fed.dp_noise": 1.0, "fed.clients_per_round": 3})
    mean = {"w": torch.full((10,), CLIP / math.sqrt(10))}  # norm CLIP: every site sent the bound exactly
    check_bound({"w": mean["w"] * 3}, 3, run.fed, run.flower)
    out = release(mean, 2, run.fed, run.flower, torch.Generator().manual_seed(0))
    assert out["w"].shape == (10,)
    with pytest.raises(ValueError, match="tampered"):
        release({"w": mean["w"] * 2}, 3, run.fed, run.flower, torch.Generator().manual_seed(0))


def test_dp_with_secagg_is_accepted_and_a_conflicting_clip_names_the_fix():
    config = {"vertical": "digits", "preset": "quick", "data": DATA, "fed.dp_clip": 0.5, "fed.dp_noise": 1.0,
              "flower.secagg": True}
    assert resolve_run(config).flower.secagg
    with pytest.raises(ConfigError, match=r"fed.dp_clip=9 exceeds flower.secagg_clip=8.*flower.secagg_clip=9"):
        resolve_run({**config, "fed.dp_clip": 9.0})
    assert resolve_run({**config, "fed.dp_clip": 9.0, "flower.secagg_clip": 9.0}).fed.dp_clip == 9.0
    with pytest.raises(ConfigError, match="needs flower.strategy=core"):
        resolve_run({**config, "flower.secagg": False, "flower.strategy": "fedavg"})
