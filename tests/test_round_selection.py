"""Which round a Flower run keeps (``core.federation.selection``): fml run's precedence -- averaging, else the
best-validated round as ModelCheckpoint ranks it, else the last -- and EarlyStopping's patience."""
from __future__ import annotations

import math

import pytest
import torch

from core.federation.selection import KeptRounds, RoundSelection


def scripted(values: list[float], higher_is_better: bool = True, patience: int = 0) -> RoundSelection:
    """A selection whose validation returns ``values`` in turn (the meta-parameters are not read)."""
    it = iter(values)
    return RoundSelection(lambda meta: {"score": next(it), "other": 0.0}, "score", higher_is_better, patience)


def state(x: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), x)}


def offer_all(keeper: KeptRounds, count: int) -> None:
    for r in range(1, count + 1):
        keeper.offer(10 * r, state(float(r)))


def test_the_best_validated_round_is_kept_not_the_last():
    keeper = KeptRounds(selection=scripted([0.5, 0.9, 0.7, 0.8]))
    offer_all(keeper, 4)
    meta, rounds, how = keeper.kept(40, state(4.0))
    assert (rounds, how) == ([20], "validation")
    torch.testing.assert_close(meta["w"], state(2.0)["w"])


def test_lower_is_better_and_a_tie_keeps_the_earlier_round():
    keeper = KeptRounds(selection=scripted([3.0, 2.0, 2.0, 2.5], higher_is_better=False))
    offer_all(keeper, 4)
    assert keeper.kept(40, state(4.0))[1] == [20]


def test_a_non_finite_score_ranks_last_but_the_first_round_is_kept_when_nothing_is_finite():
    keeper = KeptRounds(selection=scripted([0.2, math.nan, 0.1]))
    offer_all(keeper, 3)
    assert keeper.kept(30, state(3.0))[1] == [10]
    first_nan = KeptRounds(selection=scripted([math.nan, 0.1]))
    offer_all(first_nan, 2)
    assert first_nan.kept(20, state(2.0))[1] == [20]  # any finite score beats a NaN first round
    only_nan = KeptRounds(selection=scripted([math.nan, math.nan]))
    offer_all(only_nan, 2)
    assert only_nan.kept(20, state(2.0))[1] == [10]


def test_the_kept_state_is_a_copy_not_the_live_parameters():
    keeper = KeptRounds(selection=scripted([0.9, 0.1]))
    live = state(1.0)
    keeper.offer(10, live)
    live["w"].add_(5.0)  # the server optimizer updates the parameters in place
    keeper.offer(20, live)
    torch.testing.assert_close(keeper.kept(20, live)[0]["w"], state(1.0)["w"])


def test_averaging_takes_precedence_over_selection_as_in_fml_run():
    keeper = KeptRounds(average_last=2, selection=scripted([0.9, 0.1, 0.2]))
    offer_all(keeper, 3)
    meta, rounds, how = keeper.kept(30, state(3.0))
    assert (rounds, how) == ([20, 30], "average")
    torch.testing.assert_close(meta["w"], state(2.5)["w"])


def test_without_selection_or_averaging_the_last_round_is_kept():
    keeper = KeptRounds()
    assert keeper.offer(10, state(1.0)) == {}
    assert keeper.kept(17, state(7.0))[1:] == ([17], "last")


def test_patience_stops_after_that_many_validations_without_a_gain_or_at_a_non_finite_score():
    keeper = KeptRounds(selection=scripted([0.5, 0.6, 0.6, 0.55, 0.7], patience=2))
    stops = []
    for r in range(1, 5):
        keeper.offer(r, state(float(r)))
        stops.append(keeper.should_stop)
    assert stops == [False, False, False, True]  # 0.6 (tie) and 0.55 are two validations without a gain
    nan = KeptRounds(selection=scripted([0.5, math.inf], higher_is_better=False, patience=5))
    offer_all(nan, 2)
    assert nan.should_stop
    assert not KeptRounds(selection=scripted([0.5, 0.4, 0.3])).should_stop  # patience 0: never


def test_a_validation_without_the_ranking_metric_names_it():
    keeper = KeptRounds(selection=RoundSelection(lambda meta: {"accuracy": 1.0}, "rmse", False))
    with pytest.raises(KeyError, match="'rmse'.*checkpoint-metric"):
        keeper.offer(1, state(1.0))
