"""The figures the notebooks show. Each function returns a matplotlib Figure and draws nothing else."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def parameter_breakdown(breakdown: dict[str, int], *, title: str = "Where the parameters are") -> Figure:
    """Horizontal bars: parameters (millions) per model component, with each one's share."""
    figure, axis = plt.subplots(figsize=(6.5, 0.5 + 0.45 * len(breakdown)))
    total = sum(breakdown.values())
    names = list(breakdown)[::-1]
    values = [breakdown[n] / 1e6 for n in names]
    axis.barh(names, values, color="#4C72B0")
    for y, (name, value) in enumerate(zip(names, values)):
        axis.text(value, y, f"  {value:.2f} M ({100 * breakdown[name] / total:.0f}%)", va="center", fontsize=9)
    axis.set_xlabel("parameters (millions)")
    axis.set_xlim(0, max(values) * 1.35)
    axis.set_title(f"{title}: {total / 1e6:.2f} M in all")
    figure.tight_layout()
    return figure


def perplexity_comparison(labels: list[str], original: list[float], shuffled: list[float], *,
                          uniform: float) -> Figure:
    """Grouped bars on a log scale: perplexity per text, as written and with its words shuffled.

    A dashed line marks ``uniform`` (the vocabulary size), the perplexity of a model that guesses uniformly.
    """
    figure, axis = plt.subplots(figsize=(7, 3.6))
    positions = range(len(labels))
    width = 0.38
    axis.bar([p - width / 2 for p in positions], original, width, label="as written", color="#4C72B0")
    axis.bar([p + width / 2 for p in positions], shuffled, width, label="words shuffled", color="#DD8452")
    axis.axhline(uniform, color="grey", linestyle="--", linewidth=1, label=f"uniform guess ({uniform:,.0f})")
    axis.set_yscale("log")
    axis.set_xticks(list(positions), labels)
    axis.set_ylabel("perplexity (log scale)")
    axis.set_title("Held-out perplexity: lower means the model predicts the text better")
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return figure


def training_curves(histories: dict[str, list[dict]], keys: list[str], *, title: str = "Training") -> Figure:
    """One panel per metric key (at most four to a row), one line per run: the per-step values the loop logged."""
    columns = min(len(keys), 4)
    rows = -(-len(keys) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat[len(keys):]:
        axis.set_visible(False)
    for axis, key in zip(axes.flat, keys):
        for label, history in histories.items():
            axis.plot([h["step"] for h in history], [h[key] for h in history], label=label, linewidth=1.4)
        axis.set_xlabel("optimizer step")
        axis.set_title(key)
        axis.grid(alpha=0.3)
    if len(histories) > 1:
        axes.flat[len(keys) - 1].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def interval_bars(labels: list[str], means: list[float], intervals: list[list[float]], *, ylabel: str,
                  title: str, reference: float | None = None) -> Figure:
    """Bars with 95% interval whiskers, e.g. the gold score before and after training."""
    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(labels), 3.4))
    errors = [[m - lo for m, (lo, _) in zip(means, intervals)], [hi - m for m, (_, hi) in zip(means, intervals)]]
    colors = ["#8C8C8C"] + ["#4C72B0"] * (len(labels) - 1)
    axis.bar(labels, means, yerr=errors, capsize=6, color=colors)
    for x, mean in enumerate(means):
        axis.text(x, mean, f"{mean:.2f}  ", ha="right", va="bottom", fontsize=9)
    if reference is not None:
        axis.axhline(reference, color="grey", linestyle="--", linewidth=1)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    figure.tight_layout()
    return figure


def frontier(points: dict[str, tuple[float, float]], *, xlabel: str, ylabel: str, title: str) -> Figure:
    """Scatter of (x, y) per labelled run, e.g. gold reward against KL to the reference per β."""
    figure, axis = plt.subplots(figsize=(5.2, 3.8))
    for label, (x, y) in points.items():
        axis.scatter([x], [y], s=50)
        axis.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def image_grids(grids: dict[str, "object"], *, row_labels: list[str] | None = None, max_rows: int = 4,
                title: str = "Samples: same prompts (rows) and seeds (columns) for every method") -> Figure:
    """One panel per method, each a grid of images: rows = prompts, columns = seeds.

    ``grids`` maps a method name to a tensor (prompts, seeds, 3, H, W) with values in [0, 1]; only the first
    ``max_rows`` prompts are drawn. ``row_labels`` (the prompts) label the rows of the first panel.
    """
    import torch

    names = list(grids)
    rows = min(max_rows, min(int(g.shape[0]) for g in grids.values()))
    seeds = int(next(iter(grids.values())).shape[1])
    figure, axes = plt.subplots(1, len(names), figsize=(1.0 + 0.42 * seeds * len(names), 0.5 + 0.5 * rows),
                                squeeze=False)
    for axis, name in zip(axes[0], names):
        images = grids[name][:rows].detach().float().clamp(0, 1)
        # (rows, seeds, 3, H, W) → one (rows·(H+1), seeds·(W+1), 3) mosaic with 1-pixel white gutters
        padded = torch.nn.functional.pad(images, (0, 1, 0, 1), value=1.0)
        h, w = padded.shape[-2:]
        mosaic = padded.permute(0, 3, 1, 4, 2).reshape(rows * h, seeds * w, 3)[:-1, :-1]
        axis.imshow(mosaic.cpu().numpy(), interpolation="nearest")
        axis.set_title(name, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([(r + 0.5) * h - 1 for r in range(rows)] if row_labels else [])
        if row_labels and axis is axes[0][0]:
            axis.set_yticklabels([label.removeprefix("a ") for label in row_labels[:rows]], fontsize=7)
        else:
            axis.set_yticklabels([])
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def interval_panels(panels: dict[str, dict[str, tuple[float, tuple[float, float]]]], *, ylabel: str,
                    title: str, reference: float | None = None) -> Figure:
    """Small multiples, one panel per group (each on its own y scale): a point with its interval per label.

    ``panels`` maps a panel title (e.g. a task family) to ``{label: (mean, (low, high))}``, e.g. the gold score
    before and after training. Labels are drawn in the given order on every panel; ``reference`` draws a
    dashed line (e.g. ½ for win-rates).
    """
    figure, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels) + 0.6, 3.2), squeeze=False)
    for axis, (name, points) in zip(axes[0], panels.items()):
        labels = list(points)
        means = [points[label][0] for label in labels]
        errors = [[m - points[label][1][0] for m, label in zip(means, labels)],
                  [points[label][1][1] - m for m, label in zip(means, labels)]]
        axis.errorbar(range(len(labels)), means, yerr=errors, fmt="o", capsize=5, color="#4C72B0")
        if reference is not None:
            axis.axhline(reference, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 2 else 0, ha="right"
                        if len(labels) > 2 else "center", fontsize=8)
        axis.set_xlim(-0.5, len(labels) - 0.5)
        axis.set_title(name, fontsize=10)
        axis.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(ylabel)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def frontier_with_intervals(points: dict[str, tuple[float, tuple[float, float], float, tuple[float, float]]], *,
                            xlabel: str, ylabel: str, title: str,
                            others: dict[str, tuple[float, tuple[float, float], float, tuple[float, float]]] | None = None
                            ) -> Figure:
    """One point per run with intervals on both axes: ``{label: (x, (x_low, x_high), y, (y_low, y_high))}``,
    e.g. gold against KL to the reference per β. Points are joined in the given order; labels sit beside
    their points, alternating above and below so that neighbours do not overlap. ``others``: points of other
    methods in the same form, drawn as squares and not joined (e.g. PPO beside DPO's β frontier)."""
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for label, (x, (x_low, x_high), y, (y_low, y_high)) in (others or {}).items():
        axis.errorbar([x], [y], xerr=[[x - x_low], [x_high - x]], yerr=[[y - y_low], [y_high - y]], fmt="s",
                      capsize=4, color="#444444", markerfacecolor="white", zorder=3)
        axis.annotate(label, (x, y), textcoords="offset points", xytext=(7, -4), fontsize=9, color="#444444")
    xs = [p[0] for p in points.values()]
    ys = [p[2] for p in points.values()]
    axis.plot(xs, ys, color="#BBBBBB", linewidth=1, zorder=1)
    for index, (label, (x, (x_low, x_high), y, (y_low, y_high))) in enumerate(points.items()):
        axis.errorbar([x], [y], xerr=[[x - x_low], [x_high - x]], yerr=[[y - y_low], [y_high - y]], fmt="o",
                      capsize=4, zorder=2)
        axis.annotate(label, (x, y), textcoords="offset points", xytext=(7, 8 if index % 2 == 0 else -14),
                      fontsize=9)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.margins(x=0.12, y=0.15)
    figure.tight_layout()
    return figure


def overoptimization(series: dict[str, dict], *, fits: dict[str, dict] | None = None, proxy_label: str,
                     gold_label: str, title: str) -> Figure:
    """Gao et al. (2022)'s figure: proxy and gold gain against d = √KL, one panel each.

    ``series`` maps a label (``"best-of-n"``, ``"PPO"``) to ``{"d": [...], "proxy": [...], "gold": [...]}`` and
    optionally ``"gold_ci": [(low, high), ...]`` and ``"names": [...]`` (n or step, written beside the points).
    ``fits`` maps a label to a fit of :func:`alignkit.overoptimization.fit_gao` with its ``"form"``; its curve
    is drawn dashed on the gold panel in the series' colour.
    """
    from alignkit.overoptimization import gao_curve

    figure, (proxy_axis, gold_axis) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    colours = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
    for colour, (label, points) in zip(colours, series.items()):
        d = points["d"]
        proxy_axis.plot(d, points["proxy"], "o-", color=colour, label=label)
        if points.get("gold_ci"):
            errors = [[g - lo for g, (lo, _) in zip(points["gold"], points["gold_ci"])],
                      [hi - g for g, (_, hi) in zip(points["gold"], points["gold_ci"])]]
            gold_axis.errorbar(d, points["gold"], yerr=errors, fmt="o", capsize=3, color=colour, label=label)
        else:
            gold_axis.plot(d, points["gold"], "o", color=colour, label=label)
        for name, x, y in zip(points.get("names", []), d, points["proxy"]):
            proxy_axis.annotate(str(name), (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7,
                                color=colour)
        fit = (fits or {}).get(label)
        if fit is not None:
            grid = np.linspace(max(min(d), 1e-3) if fit["form"] == "rl" else 0.0, max(d), 100)
            gold_axis.plot(grid, gao_curve(fit, grid, fit["form"]), "--", color=colour, linewidth=1,
                           label=f"{label} fit: d(α − β·{'d' if fit['form'] == 'bon' else 'log d'})")
    for axis, ylabel in ((proxy_axis, proxy_label), (gold_axis, gold_label)):
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_xlabel("d = √KL(π ‖ π_SFT), √nats")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    proxy_axis.set_title("proxy (the reward model)", fontsize=10)
    gold_axis.set_title("gold (the task world's judge)", fontsize=10)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure
