"""Cross-check: FO-MAML on R1 in plain PyTorch autograd, independent of ``core/``.

Same workload as ``r1_quality.py`` (100 training sites, 10 clients per round, 5 inner SGD steps at lr
0.05, server Adam 1e-3, 500 rounds) but one client at a time with ``torch.autograd.grad`` and its own
episode draws; scored on 5-shot support + 15-per-class query of the 200 held-out tasks. It tells whether
a figure comes from ``core`` or from the workload itself; ``--no-zero-head`` shows what the zero head
initialization (``core/initialization.py``) is worth.

    python benchmarks/r1_plain_fomaml.py --seed 0
    python benchmarks/r1_plain_fomaml.py --seed 0 --no-zero-head
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from r1_workload import r1_problem  # noqa: E402


@dataclass
class Config:
    """Plain FO-MAML cross-check."""

    seed: int = 0
    """Seeds the sites, the initialization and the round draws."""
    rounds: int = 500
    """Federated rounds."""
    threads: int = 2
    """torch threads."""
    zero_head: bool = True
    """Start the classifier head at zero, as the engine does (``--no-zero-head``: PyTorch's default init)."""


def episode(site, shots: int, query: int, gen: torch.Generator):
    xs, ys, xq, yq = [], [], [], []
    for c in range(5):
        idx = torch.nonzero(site.y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        xs.append(site.x[idx[:shots]]); ys.append(site.y[idx[:shots]])
        xq.append(site.x[idx[shots:shots + query]]); yq.append(site.y[idx[shots:shots + query]])
    return torch.cat(xs), torch.cat(ys), torch.cat(xq), torch.cat(yq)


def main(cfg: Config) -> dict:
    torch.set_num_threads(cfg.threads)
    fed = r1_problem(seed=cfg.seed).federation
    train, test = fed.role("train"), fed.role("test")
    torch.manual_seed(cfg.seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 5))
    if cfg.zero_head:  # as core.initialization does for meta-learners on digits (per-site label mappings)
        torch.nn.init.zeros_(model[4].weight)
        torch.nn.init.zeros_(model[4].bias)
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    ce = torch.nn.functional.cross_entropy

    def adapt(params, x, y, steps, lr=0.05):
        p = [t.detach().clone().requires_grad_(True) for t in params]
        for _ in range(steps):
            g = torch.autograd.grad(ce(functional_call(model, dict(zip(names, p)), (x,)), y), p)
            p = [(a - lr * b).detach().requires_grad_(True) for a, b in zip(p, g)]
        return p

    gen = torch.Generator().manual_seed(cfg.seed + 7)
    for _ in range(cfg.rounds):
        ids = torch.randperm(len(train), generator=gen)[:10].tolist()
        grads = [torch.zeros_like(p) for p in model.parameters()]
        for i in ids:
            xs, ys, xq, yq = episode(train[i], 5, 15, gen)
            p = adapt(list(model.parameters()), xs, ys, 5)
            for acc, g in zip(grads, torch.autograd.grad(ce(functional_call(model, dict(zip(names, p)), (xq,)), yq), p)):
                acc += g / len(ids)
        opt.zero_grad()
        for prm, g in zip(model.parameters(), grads):
            prm.grad = g
        opt.step()
    eval_gen = torch.Generator().manual_seed(12345)
    accs: dict[int, list[float]] = {0: [], 5: [], 10: []}
    for site in test:
        xs, ys, xq, yq = episode(site, 5, 15, eval_gen)
        for steps in accs:
            p = adapt(list(model.parameters()), xs, ys, steps)
            with torch.no_grad():
                pred = functional_call(model, dict(zip(names, p)), (xq,)).argmax(-1)
            accs[steps].append(float((pred == yq).float().mean()))
    result = {str(s): round(float(np.mean(v)), 4) for s, v in accs.items()}
    print(f"plain FO-MAML, seed {cfg.seed}, {cfg.rounds} rounds, {'zero' if cfg.zero_head else 'default'} head: held-out accuracy after 0/5/10 steps "
          f"{result['0']} / {result['5']} / {result['10']} (reference .201 / .928 / .957)")
    out = {"workload": "R1", "rounds": cfg.rounds, "seed": cfg.seed, "zero_head": cfg.zero_head,
           "accuracy": {"fomaml_plain": result}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
