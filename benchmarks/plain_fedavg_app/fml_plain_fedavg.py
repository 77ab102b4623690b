"""The floor of ``engine_overhead.py``: a minimal plain-FedAvg Flower app of the R1 model.

Idiomatic Flower (``FedAvg.start``): the ClientApp builds the MLP 64-128-128-5, loads the global
weights, takes 5 SGD steps at lr 0.05 on 100 generated rows and returns the weights. No data loading,
no vertical, no MLflow: what is left is Flower plus torch. Run config: ``clients`` (per round),
``num-server-rounds``, ``output`` (a JSON file that receives each round's milliseconds).
"""
from __future__ import annotations

import json
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg


def make_mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5))


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    import torch

    model = make_mlp()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    gen = torch.Generator().manual_seed(int(context.node_config.get("partition-id", 0)))
    x, y = torch.rand(100, 64, generator=gen), torch.randint(0, 5, (100,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": 100})})
    return Message(content, reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that records the wall time of each round (configure_train -> aggregate_train)."""

    def __init__(self, clients: int) -> None:
        super().__init__(fraction_train=1e-9, fraction_evaluate=0.0, min_train_nodes=clients,
                         min_available_nodes=clients)
        self.round_ms: list[float] = []
        self._t0 = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._t0 = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        out = super().aggregate_train(server_round, replies)
        self.round_ms.append(1000.0 * (time.perf_counter() - self._t0))
        return out


def run_plain(grid: Grid, clients: int, rounds: int, output: str) -> list[float]:
    import torch

    torch.manual_seed(0)
    strategy = TimedFedAvg(clients)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(make_mlp().state_dict()), num_rounds=rounds)
    with open(output, "w") as fh:
        json.dump(strategy.round_ms, fh)
    return strategy.round_ms


def make_server(clients: int, rounds: int, output: str) -> ServerApp:
    """A ServerApp with fixed settings (Flower's Python simulation API passes no run config)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_plain(grid, clients, rounds, output)

    return app


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    run_plain(grid, int(cfg["clients"]), int(cfg["num-server-rounds"]), str(cfg["output"]))
