"""The report's figures, drawn with matplotlib's object API (Agg canvas, no pyplot state): the
accuracy matrix, accuracy per experience over training, forgetting per experience, and the
average-accuracy curves of several runs overlaid (mean ± std over seeds per configuration)."""
from __future__ import annotations

import io

from ..errors import LifelongError
from ..stats import mean, mean_std
from .data import Run, curve_average, end_average_curve, forgetting_per_experience

DPI = 100


def _mpl():
    try:
        import matplotlib
    except ImportError:
        raise LifelongError("the report needs matplotlib: pip install 'lifelong[report]'") from None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return matplotlib, Figure, FigureCanvasAgg


def _new_fig(w: float, h: float):
    _, Figure, FigureCanvasAgg = _mpl()
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> tuple[bytes, tuple[int, int]]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    data = buf.getvalue()
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return data, (w, h)


def _colors(n: int) -> list:
    matplotlib, _, _ = _mpl()
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def fig_matrix(run: Run):
    T = run.T
    side = min(7.0, 2.6 + 0.3 * T)
    fig = _new_fig(side + 0.9, side)
    ax = fig.add_subplot()
    im = ax.imshow([[100 * a for a in r] for r in run.R], cmap="viridis", vmin=0, vmax=100, aspect="equal")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
    if T <= 20:
        fs = 9 if T <= 6 else 8 if T <= 10 else 6 if T <= 14 else 5
        fmt = "{:.1f}" if T <= 6 else "{:.0f}"
        for i, row in enumerate(run.R):
            for j, a in enumerate(row):
                ax.text(j, i, fmt.format(100 * a), ha="center", va="center", fontsize=fs,
                        color="white" if a < 0.55 else "black")
    ticks = list(range(T)) if T <= 20 else list(range(0, T, max(1, T // 10)))
    ax.set_xticks(ticks, [str(t + 1) for t in ticks], fontsize=8)
    ax.set_yticks(ticks, [str(t + 1) for t in ticks], fontsize=8)
    ax.set_xlabel("evaluated on experience")
    ax.set_ylabel("after training experience")
    ax.set_title("accuracy matrix (%)", fontsize=10)
    fig.tight_layout()
    return fig


def _legend(ax, n: int, **kw):
    if n <= 21:
        ax.legend(fontsize=7, ncol=1 if n <= 11 else 2, frameon=False, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), **kw)


def fig_curves(run: Run):
    T = run.T
    fig = _new_fig(7.2, 3.6)
    ax = fig.add_subplot()
    colors = _colors(T)
    if run.curves:
        per: dict[int, list[tuple[int, int, float]]] = {}
        for step, e, j, a in run.curves:
            per.setdefault(j, []).append((step, e, a))
        for j in sorted(per):
            pts = per[j]
            c = colors[j % len(colors)] if 0 <= j < T else "grey"
            seen = [(s, 100 * a) for s, e, a in pts if j <= e]
            unseen = [(s, 100 * a) for s, e, a in pts if j > e]
            if unseen:
                ax.plot(*zip(*unseen), color=c, lw=0.8, ls=":", alpha=0.5)
            if seen:
                ax.plot(*zip(*seen), color=c, lw=1.2, label=f"exp {j + 1}")
        steps, avg = curve_average(run.curves)
        if steps:
            ax.plot(steps, [100 * a for a in avg], color="black", lw=2.0, label="average (seen)")
        for b in run.boundaries or []:
            ax.axvline(b, color="0.4", lw=0.8, ls="--", zorder=0)
        right = max([s for s, _, _, _ in run.curves] + list(run.boundaries or []))
        ax.set_xlim(0, right * 1.02 if right > 0 else 1)
        b = [0] + list(run.boundaries or [])
        if len(b) >= 2 and len(b) - 1 <= 12:
            tr = ax.get_xaxis_transform()
            for k in range(len(b) - 1):
                ax.text((b[k] + b[k + 1]) / 2, 1.01, f"E{k + 1}", transform=tr, ha="center", va="bottom",
                        fontsize=7, color="0.3")
        ax.set_xlabel("training iteration (dashed: end of an experience)")
        ax.set_title("accuracy on each experience during training", fontsize=10, pad=14)
    else:
        xs = list(range(1, T + 1))
        for j in range(T):
            ax.plot(xs[j:], [100 * run.R[i][j] for i in range(j, T)], marker="o", ms=3, lw=1.2,
                    color=colors[j], label=f"exp {j + 1}")
        ax.plot(xs, [100 * a for a in end_average_curve(run.R)], color="black", lw=2.0, marker="s", ms=3,
                label="average (seen)")
        ax.set_xticks(xs if T <= 20 else xs[:: max(1, T // 10)])
        ax.set_xlabel("after training experience")
        ax.set_title("accuracy on each experience after each experience (no curves.csv)", fontsize=10)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.25)
    _legend(ax, T + 1)
    fig.tight_layout()
    return fig


def fig_forgetting(run: Run):
    T = run.T
    fig = _new_fig(max(3.6, min(9.0, 2.2 + 0.35 * T)), 3.2)
    ax = fig.add_subplot()
    f = forgetting_per_experience(run.R)
    if f:
        xs = list(range(1, T))
        ax.bar(xs, [100 * v for v in f], color=_colors(T)[: T - 1], edgecolor="black", lw=0.4)
        avg = 100 * mean(f)  # the run's forgetting
        ax.axhline(avg, color="black", ls="--", lw=1)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(xs if T <= 20 else xs[:: max(1, T // 10)])
        title = f"forgetting per experience (mean {avg:.1f})"
    else:
        ax.text(0.5, 0.5, "one experience: no forgetting", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        title = "forgetting per experience"
    ax.set_xlabel("experience")
    ax.set_ylabel("best earlier - final acc. (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.25, axis="y")
    fig.tight_layout()
    return fig


def fig_compare(groups: list[tuple[str, list[Run]]]):
    fig = _new_fig(7.2, 3.8)
    ax = fig.add_subplot()
    colors = _colors(len(groups))
    runs = [r for _, rs in groups for r in rs]
    use_curves = all(r.curves for r in runs)
    for (label, rs), c in zip(groups, colors):
        if use_curves:
            xy = [curve_average(r.curves) for r in rs]
        else:
            xy = [(list(range(1, r.T + 1)), end_average_curve(r.R)) for r in rs]
        if len(rs) > 1 and all(x == xy[0][0] for x, _ in xy):
            x = xy[0][0]
            ys = list(zip(*[y for _, y in xy]))
            per_point = [mean_std(v) for v in ys]  # over seeds, at each point
            avg, std = [100 * m for m, _ in per_point], [100 * s for _, s in per_point]
            ax.plot(x, avg, color=c, lw=1.8, marker=None if use_curves else "o", ms=3,
                    label=f"{label} (mean of {len(rs)})")
            ax.fill_between(x, [m - s for m, s in zip(avg, std)], [m + s for m, s in zip(avg, std)],
                            color=c, alpha=0.18, lw=0)
        else:
            for k, (x, y) in enumerate(xy):
                ax.plot(x, [100 * v for v in y], color=c, lw=1.4, marker=None if use_curves else "o", ms=3,
                        label=label if k == 0 else None)
    if use_curves:
        bs = {tuple(r.boundaries or ()) for r in runs}
        if len(bs) == 1:
            for b in next(iter(bs)):
                ax.axvline(b, color="0.4", lw=0.8, ls="--", zorder=0)
        ax.set_xlabel("training iteration")
    else:
        ax.set_xlabel("after training experience")
        T = max(r.T for r in runs)
        ax.set_xticks(list(range(1, T + 1)) if T <= 20 else list(range(1, T + 1, max(1, T // 10))))
    ax.set_ylim(-2, 102)
    ax.set_ylabel("average accuracy on seen (%)")
    ax.set_title("average accuracy on the experiences seen so far", fontsize=10)
    ax.grid(alpha=0.25)
    _legend(ax, len(groups))
    fig.tight_layout()
    return fig
