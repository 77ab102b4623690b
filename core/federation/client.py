"""The FML ``ClientApp``: one site's client update, few-shot evaluation and self-description.

Handlers (the server's instructions arrive in the message's ``config`` record, see ``records``):

- ``query``: describe the node (site id, role, size, position among training sites); with
  ``fml.include-init`` also the seeded initial meta-parameters (same seed => same init as in-process).
- ``train``: draw this site's episode for the round from ``site_generator(seed, round, site)``, run the
  registered algorithm's client update (``core.rounds.client_updates``) and return ONLY the direction
  (or ``init - direction`` for Flower's strategies), ``num-examples``, ``weight`` and scalar metrics.
  In a SecAgg+ round with ``fml.dp-clip`` set, the direction is first clipped to that L2 norm (DP-FedAvg's
  clipping moved to the site, ``core.federation.secure_dp``).
- ``evaluate``: few-shot adaptation on this site (``problem.few_shot_task`` + ``core.adapt``), scored on
  the site's remaining rows; returns the mean metrics.

Top-level imports are Flower's only; torch and the vertical load on the first message.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from core.federation import records as R
from core.federation.node import NodeConfigError, NodeData, NodeRequest, SiteLoader, load_node, make_request

SECAGG_CONFIGS = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS
LEGACY_FITINS = "fitins.parameters"


def secagg_when_requested(msg: Message, ctx: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` for messages of the SecAgg+ protocol; other messages pass through, so
    one ClientApp serves plain and secure rounds."""
    if SECAGG_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctx)
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, ctx, call_next)


def _node(config: Any, context: Context, loader: SiteLoader) -> NodeData:
    request: NodeRequest = make_request(context.node_config, str(config[R.VERTICAL]), str(config.get(R.DATA, "{}")),
                                        int(config[R.SEED]))
    return load_node(request, loader)


def initial_meta(node: NodeData, algorithm: str, inner: Any, seed: int):
    """The seeded meta-initialization, exactly as ``MetaLearner`` builds it."""
    from core.algorithms.base import get_algorithm
    from core.initialization import initial_meta as seeded_meta

    return seeded_meta(node.problem, get_algorithm(algorithm), inner, seed)


def describe(msg: Message, context: Context, loader: SiteLoader) -> Message:
    config = msg.content[R.CONFIG]
    node = _node(config, context, loader)
    info = {"site-id": node.site_id, "role": node.loaded.role, "size": len(node.loaded.site),
            "order": int(node.loaded.order)}
    content = RecordDict({R.CONFIG: ConfigRecord(info)})
    if config.get(R.INCLUDE_INIT):
        inner = R.inner_from_config(config)
        content[R.ARRAYS] = R.params_to_record(initial_meta(node, str(config[R.ALGORITHM]), inner, int(config[R.SEED])))
    return Message(content, reply_to=msg)


def client_update(node: NodeData, meta, config: Any) -> tuple[dict, int, dict[str, float]]:
    """This site's update for the round: ``(direction, num_examples, metrics)``."""
    import torch

    from core.algorithms.base import get_algorithm
    from core.learner import with_group
    from core.rounds import client_updates
    from core.meta_dropout import meta_dropout_for

    if node.loaded.role != "train":
        raise NodeConfigError(f"site {node.site_id!r} has role {node.loaded.role!r} and was asked to train: only "
                              "training sites compute updates (held-out sites stay out of meta-training); serve a "
                              "training site from this node, or set its node config role='train'")
    seed, round_index = int(config[R.SEED]), int(config[R.ROUND])
    algorithm = get_algorithm(str(config[R.ALGORITHM]))
    inner = with_group(R.inner_from_config(config), node.problem, node.model, algorithm.inner_group)
    dropout = meta_dropout_for(node.problem, node.model, algorithm, inner)
    episode = dropout.episode(node.problem, node.site_id, meta, seed, round_index)
    # one episode: nothing to vectorize (the direct call gives the in-process vmap's numbers, and is faster)
    result = client_updates(algorithm, dropout.loss(node.loss_fn), meta, [episode], inner, vectorize=False)
    direction = {k: v[0].detach() for k, v in result.directions.items()}
    if not all(torch.isfinite(v).all() for v in direction.values()):
        raise FloatingPointError(f"site {node.site_id!r}: the update is not finite at round {round_index}; "
                                 "lower the inner learning rate")
    metrics = {k: float(v[0]) for k, v in result.metrics.items()}
    return direction, int(result.num_examples[0]), metrics


def _weight(config: Any, num_examples: int) -> float:
    return 1.0 if str(config.get(R.WEIGHTING, "uniform")) == "uniform" else float(num_examples)


def train(msg: Message, context: Context, loader: SiteLoader) -> Message:
    if LEGACY_FITINS in msg.content.array_records:
        return _train_secagg(msg, context, loader)
    config = msg.content[R.CONFIG]
    node = _node(config, context, loader)
    meta = R.record_to_params(msg.content[R.ARRAYS])
    direction, n, metrics = client_update(node, meta, config)
    if str(config.get(R.REPLY, "direction")) == "weights":
        direction = {k: meta[k] - direction[k] for k in meta}
    metric_record = MetricRecord({R.NUM_EXAMPLES: n, R.WEIGHT: _weight(config, n), **metrics})
    return Message(RecordDict({R.ARRAYS: R.params_to_record(direction), R.METRICS: metric_record}), reply_to=msg)


def _train_secagg(msg: Message, context: Context, loader: SiteLoader) -> Message:
    """The SecAgg+ collect stage: Flower's legacy ``FitIns``/``FitRes`` layout, parameters as an ordered
    list whose names travel in the config. The mod masks the returned direction before it leaves."""
    import numpy as np
    import torch
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

    fitins = recorddict_to_fitins(msg.content, keep_input=True)
    config = fitins.config
    names = json.loads(str(config[R.PARAM_NAMES]))
    arrays = parameters_to_ndarrays(fitins.parameters)
    meta = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in zip(names, arrays)}
    node = _node(config, context, loader)
    direction, n, metrics = client_update(node, meta, config)
    clip = float(config.get(R.DP_CLIP, 0.0) or 0.0)
    if clip > 0:  # DP-FedAvg under SecAgg+: the site clips its own direction (core.federation.secure_dp)
        from core.privacy import clip_update

        direction = clip_update(direction, clip)
    weight = _weight(config, n)
    params = ndarrays_to_parameters([direction[k].numpy() for k in names])
    res = FitRes(Status(Code.OK, "ok"), params, int(round(weight)), {R.NUM_EXAMPLES: n, **metrics})
    return Message(fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def evaluate(msg: Message, context: Context, loader: SiteLoader) -> Message:
    import torch

    from core.evaluation import Method, adapt_along
    from core.seeds import site_generator

    config = msg.content[R.CONFIG]
    node = _node(config, context, loader)
    meta = R.record_to_params(msg.content[R.ARRAYS])
    inner = R.inner_from_config(config)
    shots, draws = int(config[R.EVAL_SHOTS]), int(config[R.EVAL_DRAWS])
    steps = [int(s) for s in str(config[R.EVAL_STEPS]).split(",")]
    lr = float(config.get(R.EVAL_LR) or inner.lr)
    seed = int(config[R.SEED])
    totals: dict[str, float] = {}
    for d in range(draws):
        task = node.problem.few_shot_task(node.model, node.loaded.site, shots, site_generator(seed + 31, d, node.site_id))
        method = Method("eval", meta, trained_lr=lr)
        with torch.enable_grad():
            trajectory = adapt_along(node.loss_fn, method, task.support(method.params), steps, lr, inner)
        for s, params in trajectory.items():
            for name, value in task.score(params).items():
                key = f"{name}/steps{s}"
                totals[key] = totals.get(key, 0.0) + float(value) / draws
    record = MetricRecord({R.NUM_EXAMPLES: 1, R.WEIGHT: 1.0, **totals})
    return Message(RecordDict({R.METRICS: record}), reply_to=msg)


def make_client_app(loader: SiteLoader, mods: Sequence = ()) -> ClientApp:
    """The FML ``ClientApp`` reading its site through ``loader``; ``mods`` run before the built-in
    SecAgg+ mod (outermost first)."""
    app = ClientApp(mods=[*mods, secagg_when_requested])

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return describe(msg, context, loader)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, loader)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate(msg, context, loader)

    return app
