"""One configuration path for Flower runs: ``FlowerSettings`` is the ``flower`` section of ``RunConfig``; a run
config is written from the dataclass (``to_flat`` + ``write_run_config``), read the way Flower reads it, and parsed
back into the dataclass (``from_flat`` in ``resolve_run``); the app's pyproject table declares keys, no defaults."""
from __future__ import annotations

import dataclasses
import tomllib

import pytest

pytest.importorskip("flwr")

from flwr.common.config import get_fused_config_from_dir, parse_config_args  # noqa: E402

from core.config import from_flat, to_flat  # noqa: E402
from core.federation.settings import FlowerSettings  # noqa: E402
from pipelines.config import ConfigError, load_preset  # noqa: E402
from pipelines.federate import APP_DIR, write_run_config  # noqa: E402
from pipelines.federate_node import vertical_spec  # noqa: E402
from pipelines.federate_server import resolve_run  # noqa: E402


def changed(value):
    """A value of the same type as ``value`` and different from it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + (3 if isinstance(value, int) else 0.25)
    return "fedavg" if value == "core" else f"{value},x" if value else "events.jsonl"


def through_flower(items: dict, tmp_path) -> dict:
    """``items`` as ``flwr run --run-config FILE`` delivers them to the ServerApp: written by
    ``write_run_config``, read by Flower's parser, fused with the app's table (an undeclared key is an error)."""
    return get_fused_config_from_dir(APP_DIR, parse_config_args([str(write_run_config(items, tmp_path / "r.toml"))]))


def test_every_flower_setting_round_trips_through_a_flower_run_config(tmp_path):
    default = FlowerSettings()
    settings = FlowerSettings(**{f.name: changed(getattr(default, f.name)) for f in dataclasses.fields(default)})
    assert all(getattr(settings, f.name) != getattr(default, f.name) for f in dataclasses.fields(default))
    cfg = dataclasses.replace(load_preset(vertical_spec("digits"), "quick"), flower=settings)
    items = {"vertical": "digits", **{k: v for k, v in to_flat(cfg).items() if k.startswith("flower.")}}
    flower = resolve_run(through_flower(items, tmp_path)).flower
    assert flower == settings
    for f in dataclasses.fields(settings):  # types too: 3 stays an int, 0.25 a float, True a bool
        assert type(getattr(flower, f.name)) is type(getattr(settings, f.name)), f.name
    assert resolve_run(through_flower({"vertical": "digits"}, tmp_path)).flower == default  # "" = the default


def test_run_options_round_trip_and_text_values_are_typed():
    base = load_preset(vertical_spec("digits"), "quick")
    cfg = dataclasses.replace(base, seed=7, fed=dataclasses.replace(base.fed, rounds=9, sampler="size"),
                              flower=FlowerSettings(secagg=True, eval_steps="1,2"))
    assert from_flat(base, to_flat(cfg)) == cfg
    parsed = from_flat(FlowerSettings(), {"secagg": "true", "round-timeout": "30", "eval_draws": "4"})
    assert (parsed.secagg, parsed.round_timeout, parsed.eval_draws) == (True, 30.0, 4)


def test_unknown_or_mistyped_flower_keys_name_the_key():
    with pytest.raises(ConfigError, match="flower.min_available: .*Did you mean: 'min_available_clients'"):
        resolve_run({"vertical": "digits", "flower.min_available": 2})
    with pytest.raises(ConfigError, match="flower.secagg: .*'maybe' is not a valid bool"):
        resolve_run({"vertical": "digits", "flower.secagg": "maybe"})
    with pytest.raises(ConfigError, match="flower.eval_draws: .*Integer"):
        resolve_run({"vertical": "digits", "flower.eval_draws": 2.5})


def test_a_preset_sets_flower_settings_and_the_app_table_does_not_override_them(tmp_path):
    preset = tmp_path / "deploy.yaml"
    preset.write_text("flower:\n  round_timeout: 7.5\n  secagg: true\n")
    run = resolve_run(through_flower({"vertical": "digits", "preset": str(preset)}, tmp_path))
    assert (run.flower.round_timeout, run.flower.secagg) == (7.5, True)
    run = resolve_run(through_flower({"vertical": "digits", "preset": str(preset), "flower.secagg": False}, tmp_path))
    assert (run.flower.round_timeout, run.flower.secagg) == (7.5, False)


def test_the_app_table_declares_every_flower_setting_and_writes_no_default():
    """Defaults live in the dataclasses only: the table's run options are "" (not set) and name real options."""
    table = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    app_keys = {"vertical", "preset", "algorithm", "experiment", "run-name", "data", "options"}
    options = to_flat(load_preset(vertical_spec("digits"), None))
    assert {k: v for k, v in table.items() if k not in app_keys and (k not in options or v != "")} == {}
    assert [f.name for f in dataclasses.fields(FlowerSettings) if f"flower.{f.name}" not in table] == []


def test_a_flower_run_refuses_reptile_on_one_group_since_it_never_warm_starts() -> None:
    """Reptile's direction is zero outside its inner-loop group and a Flower run starts from the seeded
    initialization: the rest of the model would never train."""
    with pytest.raises(ConfigError, match="reptile with inner.group 'head' moves only that group"):
        resolve_run({"vertical": "digits", "algorithm": "reptile", "inner.group": "head"})
    assert resolve_run({"vertical": "digits", "algorithm": "fomaml", "inner.group": "head"}).inner.group == "head"
