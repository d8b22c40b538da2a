"""``lifelong tune``: hyper-parameter search under an honest protocol (docs/tuning.md)."""
from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import ConfigError
from .console import console, err_console
from .options import apply_trust, executor_from_options, executor_options, trust_options


@click.command("tune")
@click.option("--spec", "spec_file", required=True, type=click.Path(dir_okay=False),
              help="Tune spec (YAML): base config, protocol, study, budget, space (docs/tuning.md).")
@click.option("--strategy", help="Strategies to tune, one study each, separated by commas (default: the base "
                                 "config's).")
@click.option("--protocol", type=click.Choice(["reality-check", "current-task", "test"]),
              help="Override the spec's protocol.")
@click.option("--allow-tune-on-test", is_flag=True,
              help="Allow protocol 'test' (selection on the test sets it reports; marked TUNED ON TEST).")
@click.option("--trials", type=click.IntRange(min=1), help="Finished trials per study (spec: budget.trials).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per study (budget.timeout_s).")
@click.option("--parallel", type=click.IntRange(min=1), help="Trials run at once (budget.parallel).")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid"]), help="Optuna sampler (study.sampler).")
@click.option("--pruner", type=click.Choice(["median", "asha", "hyperband", "none"]),
              help="Stop poor trials at experience ends (study.pruner).")
@click.option("--seeds", help="Phase-2 seeds, e.g. '0-2' (protocol.seeds).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the base run config, e.g. --set train.iterations=100.")
@click.option("--storage", help="Optuna storage: a .db file or sqlite:/// URL, or postgresql://user@host/db "
                                "(default: OUT/studies.db).")
@click.option("--study-prefix", default="tune", show_default=True, help="Studies are named PREFIX-STRATEGY-...")
@click.option("--select-only", is_flag=True, help="Phase 1 only: write best.yaml, train no phase 2.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Tune folder (new, or this spec's to "
                                                                        "continue it).")
@executor_options
@click.option("--quiet", is_flag=True, help="Only the final table.")
@trust_options
def tune_cmd(spec_file, strategy, protocol, allow_tune_on_test, trials, timeout, parallel, sampler, pruner, seeds,
             overrides, storage, study_prefix, select_only, out_dir, executor, workers, ray_address, cpus_per_run,
             gpus_per_run, quiet, allow_module, trust_config):
    """Tune hyper-parameters on validation data (or, for the reality check, on another dataset),
    then report the chosen config on test data with several seeds.

    A killed tune continues when the same command is rerun: finished trials are kept."""
    from ..config import load_config_file
    from ..tuning import parse_spec, tune
    from .sweep import apply_flags, parse_seeds

    apply_trust(allow_module, trust_config)
    data = load_config_file(spec_file)
    if not isinstance(data, dict):
        raise ConfigError(f"{spec_file}: a tune spec must be a mapping (base, protocol, study, budget, space)")
    if protocol and protocol != "reality-check" and isinstance(data.get("protocol"), dict) \
            and data["protocol"].get("tune_on") is not None:
        data["protocol"] = {k: v for k, v in data["protocol"].items() if k != "tune_on"}
        err_console.print(f"note: --protocol {protocol} tunes on each report_on benchmark; the spec's "
                          "protocol.tune_on (reality-check only) is not used", soft_wrap=True)
    apply_flags(data, (("protocol.name", protocol), ("budget.trials", trials), ("budget.timeout_s", timeout),
                       ("budget.parallel", parallel), ("study.sampler", sampler), ("study.pruner", pruner),
                       ("protocol.seeds", parse_seeds(seeds) if seeds else None)), ())
    if overrides:  # --set: keys of the base run config
        if not isinstance(data.setdefault("base", {}), dict):
            raise ConfigError("the tune spec's 'base' must be a run config (a mapping)")
        apply_flags(data["base"], (), overrides)
    spec = parse_spec(data)
    ex = executor_from_options(executor, workers, ray_address, cpus_per_run, gpus_per_run)
    strategies = [s.strip() for s in strategy.split(",")] if strategy else None
    out = Path(out_dir) if out_dir else Path("runs") / f"tune-{spec.protocol.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    log = (lambda m: None) if quiet else (lambda m: err_console.print(m, soft_wrap=True))
    summary = tune(spec, out, strategies, storage_url=storage, study_prefix=study_prefix, executor=ex,
                   workers=workers, allow_tune_on_test=allow_tune_on_test,
                   select_only=select_only, log=log)
    from ..tuning.driver import markdown

    console.print(markdown(summary))
    console.print(f"tune folder: {out}")
    failed = [s["name"] for s in summary["studies"] if s["best"] is None]
    if failed:
        err_console.print(f"[red]no trial finished[/red] in {', '.join(failed)}")
        raise SystemExit(1)
