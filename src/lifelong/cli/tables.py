"""Rendering: every rich table the commands print. Tables take plain data (results dicts,
strategy classes, a reproduce summary) and print nothing themselves."""
from __future__ import annotations

import typing

from rich.table import Table


def results_table(res: dict) -> Table:
    """The accuracy matrix of one run: row i = after experience i, column j = on experience j."""
    R = res["accuracy_matrix"]
    view = "task-aware" if res["scenario"] == "task" else "task-agnostic"
    t = Table(title=f"{res['benchmark']} ({res['scenario']}-IL, {view}) - {res['strategy']} - seed {res['seed']}")
    t.add_column("after \\ on")
    for j in range(len(R)):
        t.add_column(f"exp {j + 1}", justify="right")
    for i, row in enumerate(R):
        t.add_row(f"exp {i + 1}", *[f"{100 * a:.1f}" for a in row])
    return t


def metrics_table(res: dict) -> Table:
    t = Table(show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("average_accuracy", "average_incremental_accuracy", "online_accuracy", "forgetting", "bwt", "fwt",
              "task_aware_average_accuracy", "wall_time_s", "train_time_s", "eval_time_s"):
        if k in res:
            v = res[k]  # None: undefined for this run (results.json lists it under "undefined")
            t.add_row(k, "undefined" if v is None or v != v else f"{v:.2f}" if k.endswith("_s") else f"{100 * v:.2f}")
    cont = res.get("continual") or {}
    for k in ("min_acc", "wc_acc", "wf_10", "wf_100"):  # the stability gap (continual evaluation)
        if isinstance(cont.get(k), float) and cont[k] == cont[k]:
            t.add_row(f"continual {k}", f"{100 * cont[k]:.2f}")
    return t


# -- parameters (lifelong list) --------------------------------------------------------------------
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _constraint(field) -> str:
    """What a parameter allows, from its signature: choices of a Literal, bounds of a Field."""
    ann = field.annotation
    args = typing.get_args(ann)
    inner = [a for a in args if a is not type(None)]  # Optional[X]: X, or None
    optional = len(inner) < len(args)
    if optional and len(inner) == 1:
        ann = inner[0]
    if typing.get_origin(ann) is typing.Literal:
        text = "|".join(map(str, typing.get_args(ann)))
    else:
        metas = list(field.metadata)
        for a in typing.get_args(ann)[1:] if typing.get_origin(ann) is typing.Annotated else ():
            metas += list(getattr(a, "metadata", [a]))
        b = {attr: getattr(m, attr) for attr, _ in _BOUNDS for m in metas if getattr(m, attr, None) is not None}
        lo, hi = ("ge" in b or "gt" in b), ("le" in b or "lt" in b)
        if lo and hi:
            text = (f"in {'[' if 'ge' in b else '('}{b.get('ge', b.get('gt'))}, "
                    f"{b.get('le', b.get('lt'))}{']' if 'le' in b else ')'}")
        else:
            text = " ".join(f"{sym}{b[attr]}" for attr, sym in _BOUNDS if attr in b)
    return f"{text} or None" if text and optional else text


def parameter_lines(param_model) -> list[str]:
    """One line per parameter, ``name=default``, its allowed values on the next line; names are
    never cut (the cell is not wrapped: each line is as wide as it needs)."""
    lines = []
    for name, field in param_model.model_fields.items():
        lines.append(f"{name}={field.default!r}")
        allowed = _constraint(field)
        if allowed:
            lines.append(f"  [dim]{allowed}[/dim]")
    return lines


def strategies_table(strategies: dict, param_model) -> Table:
    """Name and scenarios, parameters with defaults and allowed values, paper. Fits 80 columns:
    the parameter column never wraps (a name is shown whole), the paper column wraps."""
    t = Table(title="strategies", caption="parameters: name=default, allowed values below; "
                                         "set with --set strategy.NAME=VALUE")
    t.add_column("name (scenarios)", no_wrap=True)
    t.add_column("parameters (default)", no_wrap=True)
    t.add_column("paper", ratio=1)
    for name, cls in strategies.items():
        lines = parameter_lines(param_model(cls))
        t.add_row(f"[bold]{name}[/bold]\n" + "\n".join(cls.scenarios), "\n".join(lines) or "-", cls.paper)
    return t


def benchmarks_table(table: dict, common_keys: set) -> Table:
    t = Table(title="benchmarks", caption=f"every benchmark also takes: {', '.join(sorted(common_keys - {'name'}))}")
    t.add_column("name (default scenario)", no_wrap=True)
    t.add_column("keys", no_wrap=True)
    t.add_column("description", ratio=1)
    for name, p in table.items():
        t.add_row(f"[bold]{name}[/bold]\n{p.default_scenario}", "\n".join(sorted(p.keys - common_keys)) or "-",
                  p.description)
    return t


# -- reproduce -------------------------------------------------------------------------------------
def protocols_table(protocols: list) -> Table:
    """``lifelong reproduce --list``: one row per shipped protocol (name, loaded protocol)."""
    t = Table(title="protocols (lifelong reproduce NAME)")
    t.add_column("name", no_wrap=True)
    for c in ("scenarios", "methods", "seeds", "published"):
        t.add_column(c)
    for name, p in protocols:
        n_pub = sum(1 for s in p.scenarios for m in p.methods
                    if s in p.method_scenarios(m) and p.published(s, m)["mean"] is not None)
        n_cells = sum(1 for s in p.scenarios for m in p.methods if s in p.method_scenarios(m))
        scen = ",".join(f"[bold]{s}[/bold]" if s in p.default_scenarios and p.default_scenarios != p.scenarios
                        else s for s in p.scenarios)
        seeds_txt = f"{p.seeds} ({p.first_seed}-{p.first_seed + p.seeds - 1})"
        t.add_row(name, scen, ", ".join(p.methods), seeds_txt, f"{n_pub}/{n_cells} cells")
    return t


def verdict_tables(summary: dict, colors: dict) -> list[Table]:
    """One table per scenario of a reproduce summary: ours vs published, tolerance, verdict."""
    tables = []
    for scen in dict.fromkeys(r["scenario"] for r in summary["cells"]):
        t = Table(title=f"{summary['protocol']}: {scen}-incremental ({summary['metric']}, %)")
        for c in ("method", "n", "ours ± SE", "published ± SEM", "diff", "tolerance", "verdict"):
            t.add_column(c, justify="left" if c in ("method", "verdict") else "right")
        for r in (r for r in summary["cells"] if r["scenario"] == scen):
            fmt = lambda m, s: "-" if m is None else (f"{m:.2f}" + ("" if s is None else f" ± {s:.2f}"))  # noqa: E731
            v = r["verdict"]
            pub = r["published"]
            t.add_row(r["label"], str(r["n"]), fmt(r["mean"], r["se"]), fmt(pub["mean"], pub["sem"]),
                      "-" if r["diff"] is None else f"{r['diff']:+.2f}",
                      "-" if r["tolerance"] is None else f"±{r['tolerance']:.2f}",
                      f"[{colors[v]}]{v}[/{colors[v]}]" if v in colors else v)
        tables.append(t)
    return tables
