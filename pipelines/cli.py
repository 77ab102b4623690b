"""The ``fml`` command line.

    fml verticals                         list verticals
    fml run <vertical> [--preset P] ...   meta-train -> evaluate -> log -> register (--help: every option)
    fml evaluate <vertical> ...           the same protocol, without registering
    fml tune <vertical> [--trials N] ...  Optuna over inner lr/steps and server lr on validation sites -> a preset
    fml onboard <vertical> --data PATH    adapt the registered meta-init to a new site
    fml models                            registered models, versions, aliases, headline metrics
    fml federate <superlink|supernode|keys|run|simulate|app> ...   the same rounds on Flower (real sites)
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional, Sequence

USAGE = __doc__


def _spec(name: str):
    import verticals
    from core.vertical import VERTICALS

    verticals.load_all()
    return VERTICALS.get(name)


def cmd_verticals(argv: Sequence[str]) -> int:
    import verticals
    from core.vertical import VERTICALS
    from pipelines.console import console

    verticals.load_all()
    for name in VERTICALS.names():
        spec = VERTICALS.get(name)
        presets = ", ".join(sorted(p.stem for p in spec.presets_dir.glob("*.yaml")))
        stats = "site_statistics" in {f.name for f in dataclasses.fields(spec.data_config)}
        console.print(f"[bold]{name:16s}[/] {spec.description}  [dim](presets: {presets}"
                      f"{'; --data.site-statistics' if stats else ''})[/]")
    from core.recipes import RECIPES

    console.print("\n[bold]adaptation recipes[/] (--eval.recipes ...; every init always also adapts all parameters):")
    width = max(map(len, RECIPES.names()))
    for name in RECIPES.names():
        console.print(f"  [bold]{name:{width}s}[/] {RECIPES.get(name).description}")
    from core.algorithms import ALGORITHMS

    console.print("\n[bold]algorithms[/] (--algorithms ...; FedAvg is always trained, for the fedavg+ft baseline):")
    width = max(map(len, ALGORITHMS.names()))
    for name in ALGORITHMS.names():
        console.print(f"  [bold]{name:{width}s}[/] {ALGORITHMS.get(name).summary}")
    return 0


def cmd_run(argv: Sequence[str], register: bool = True) -> int:
    parser = argparse.ArgumentParser(prog="fml run", add_help=False)
    parser.add_argument("vertical", nargs="?")
    parser.add_argument("--preset", default="quick")
    known, rest = parser.parse_known_args(argv)
    if not known.vertical:
        print("usage: fml run <vertical> [--preset quick|full] [--help] [--<option> value ...]", file=sys.stderr)
        return 2
    from pipelines.config import resolve_run_config
    from pipelines.run import run_pipeline

    spec = _spec(known.vertical)
    cmd = "run" if register else "evaluate"
    cfg = resolve_run_config(spec, known.preset, rest, prog=f"fml {cmd} {spec.name} --preset {known.preset}")
    if not register:
        cfg.tracking.register = False
    run_pipeline(spec, cfg)
    return 0


def cmd_onboard(argv: Sequence[str]) -> int:
    spec_name = argv[0] if argv and not argv[0].startswith("-") else None
    spec = _spec(spec_name) if spec_name else None
    parser = argparse.ArgumentParser(
        prog=f"fml onboard {spec_name or '<vertical>'}",
        description="Adapt the registered meta-initialization to a new site from a few labelled samples, "
                    "score it on the site's remaining labelled rows, and log the personalized model.")
    parser.add_argument("vertical", help="vertical name (see `fml verticals`)")
    parser.add_argument("--data", help="the new site's labelled data file (format of the vertical's adapter)")
    parser.add_argument("--site", help="site id (default: from the data, or a generated id)")
    parser.add_argument("--model", help="models:/ URI (default: the @champion of the first model `fml run` registered "
                                        "for the vertical whose schema the data fits, fml-<vertical> first)")
    parser.add_argument("--shots", type=int, help="labelled examples per class / units adapted on (default: recorded)")
    parser.add_argument("--steps", type=int, help="adaptation steps (default: chosen on validation sites)")
    parser.add_argument("--lr", type=float, help="adaptation step size (default: chosen on validation sites)")
    parser.add_argument("--candidate", help="use this starting point of the registered bundle (default: chosen per "
                                            "site by cross-validation on its support set); 'ensemble' adapts every "
                                            "candidate and averages their outputs")
    parser.add_argument("--unlabeled", metavar="PATH",
                        help="the site's inputs without labels (same format as --data): site statistics use them "
                             "when the model was trained with data.site_statistics")
    parser.add_argument("--seed", type=int, default=0, help="seed of the support draw")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when one is visible, else the CPU), cpu "
                                                          "or cuda: where the choice and adaptation run")
    parser.add_argument("--register", action="store_true", help="register as fml-<vertical>-site-<id>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a data option of the vertical (repeatable)")
    for flag, field_name in (spec.onboard_flags.items() if spec else []):
        parser.add_argument(f"--{flag}", dest=f"extra_{field_name}", help=f"sets data option {field_name}")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = _parse_value(value)
    for key, value in vars(args).items():
        if key.startswith("extra_") and value is not None:
            overrides[key[len("extra_"):]] = value
    from pipelines.onboard import onboard

    onboard(spec or _spec(args.vertical), data=args.data, site_id=args.site, model_uri=args.model,
            shots=args.shots, steps=args.steps, lr=args.lr, candidate=args.candidate, unlabeled=args.unlabeled, register=args.register, seed=args.seed,
            overrides=overrides, device=args.device)
    return 0


def _parse_value(value: str):
    import yaml

    return yaml.safe_load(value)


def cmd_models(argv: Sequence[str]) -> int:
    import pandas as pd

    from core import tracking
    from pipelines.console import print_fitting

    tracking.setup_tracking()
    rows = tracking.list_models()
    if not rows:
        print(f"no registered fml-* models in {tracking.tracking_uri()}; run `fml run <vertical>` first")
        return 0
    frame = pd.DataFrame(rows)
    frame = frame.loc[:, (frame.astype(str) != "").any()]  # e.g. no site column without onboarded site models
    frame["version"] = "v" + frame["version"].astype(str)
    frame["alias"] = frame["alias"].map(lambda a: f"@{a}" if a else "")
    frame.insert(list(frame.columns).index("metric"), "headline", frame["metric"] + " " + frame["value"].astype(str))
    frame = frame.drop(columns=["metric", "value"])
    print_fitting(frame, f"Registered models ({tracking.tracking_uri()})", heading=("name", "version", "alias"))
    return 0


def cmd_federate(argv: Sequence[str]) -> int:
    from pipelines.federate import main as federate_main

    return int(federate_main(list(argv)) or 0)


def cmd_tune(argv: Sequence[str]) -> int:
    from pipelines.tune import main as tune_main

    return tune_main(list(argv))


def _uri() -> str:
    from core.tracking import tracking_uri

    return tracking_uri()


COMMANDS = {"verticals": cmd_verticals, "run": cmd_run, "evaluate": lambda a: cmd_run(a, register=False),
            "tune": cmd_tune, "onboard": cmd_onboard, "models": cmd_models, "federate": cmd_federate}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fml: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from pipelines.process_setup import configure_process

    configure_process()  # threads, named warnings and loggers: this process is the CLI's, not a library's
    from mlflow.exceptions import MlflowException

    from core.registry import UnknownNameError
    from core.tracking import RegistryError
    from pipelines.config import ConfigError
    from pipelines.interrupts import exit_on_interrupt

    hint = "; continue it with the same command plus --resume" if command in {"run", "evaluate"} else ""
    interrupted = (f"fml {command}: interrupted; nothing was registered (an MLflow run it had started is not "
                   f"FINISHED){hint}")
    with exit_on_interrupt(interrupted) as reported:
        try:
            return COMMANDS[command](rest)
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            reported.set()
            return 130
        except (UnknownNameError, RegistryError, ConfigError, FileNotFoundError, ValueError) as err:
            print(f"fml {command}: error: {err}", file=sys.stderr)
            return 1
        except MlflowException as err:
            print(f"fml {command}: error: MLflow at {_uri()}: {str(err).splitlines()[0]}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
