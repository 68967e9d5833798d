"""Figures of notebook 06: results with intervals across training seeds and each seed's own value.

Each function returns a matplotlib Figure built from the metrics of :func:`alignkit.diffusion.claims.summarise`
and draws nothing else (the general figures, such as image grids and training curves, are in
:mod:`alignkit.plots`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from alignkit.diffusion.claims import MEASURES, label

Point = tuple[float, float, float, list[float]]
"""(mean, low, high, per-seed means)"""
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")


def _point(summary: dict) -> Point:
    return summary["mean"], summary["ci"][0], summary["ci"][1], [s[0] for s in summary["per_seed"]]


def seed_panels(panels: dict[str, dict[str, dict[str, Point]]], *, title: str, xlabel: str = "",
                references: dict[str, float] | None = None, reference_label: str = "base model",
                highlight: str | None = None) -> Figure:
    """Small multiples, one panel per measure: for each series and x label, the mean with its interval across
    seeds (a point with whiskers) and each training seed's value (small dots).

    ``panels``: {panel title: {series: {x label: (mean, low, high, per-seed means)}}}, every series on the same x
    labels; ``references``: {panel title: y} drawn as a dashed line; ``highlight``: an x label to shade (e.g.
    the chosen λ).
    """
    figure, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels) + 0.4, 3.5), squeeze=False)
    for axis, (name, series) in zip(axes[0], panels.items()):
        labels = list(next(iter(series.values())))
        width = 0.6 / max(1, len(series))
        for index, (series_name, points) in enumerate(series.items()):
            offset = (index - (len(series) - 1) / 2) * width
            color = COLORS[index % len(COLORS)]
            for x, x_label in enumerate(labels):
                mean, low, high, seeds = points[x_label]
                axis.errorbar([x + offset], [mean], yerr=[[mean - low], [high - mean]], fmt="o", capsize=4,
                              color=color, label=series_name if x == 0 and len(series) > 1 else None, zorder=3)
                axis.scatter([x + offset + 0.08] * len(seeds), seeds, s=9, color=color, alpha=0.5, zorder=2)
        if references and name in references:
            axis.axhline(references[name], color="grey", linestyle="--", linewidth=1,
                         label=reference_label if axis is axes[0][0] else None)
        if highlight is not None and highlight in labels:
            at = labels.index(highlight)
            axis.axvspan(at - 0.4, at + 0.4, color="#F2E394", alpha=0.5, zorder=0)
        rotate = max(len(x) for x in labels) > 6
        axis.set_xticks(range(len(labels)), labels, rotation=35 if rotate else 0, ha="right" if rotate else "center",
                        fontsize=8)
        axis.set_xlim(-0.6, len(labels) - 0.4)
        axis.set_title(name, fontsize=10)
        axis.grid(alpha=0.3, axis="y")
        if xlabel:
            axis.set_xlabel(xlabel, fontsize=9)
    handles, names = [], []
    for axis in axes[0]:
        for handle, name in zip(*axis.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    if handles:
        figure.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
    return figure


def method_figure(metrics: dict, methods: list[str]) -> Figure:
    """Every method on the test captions: reward, gold, diversity and caption match."""
    measures = [m for m in MEASURES if m in metrics]
    panels = {MEASURES[m]: {"mean over seeds": {_short(name): (metrics[m][name], *metrics[f"{m}_ci"][name],
                                                               [s[0] for s in metrics["per_seed"][m][name]])
                                                for name in methods}} for m in measures}
    return seed_panels(panels, title="Test captions: mean with 95 % interval across training seeds (dots: each seed)")


def lambda_figure(metrics: dict) -> Figure:
    """DRaFT+ on the validation captions against λ (λ = 0 is DRaFT-K), the chosen λ shaded."""
    sweep = metrics["lambda_sweep"]
    measures = [m for m in MEASURES if m in next(iter(sweep.values()))]
    names = {lam: "0 (DRaFT-K)" if float(lam) == 0 else lam for lam in sweep}
    panels = {MEASURES[m]: {"DRaFT+": {names[lam]: _point(values[m]) for lam, values in sweep.items()}}
              for m in measures}
    references = {MEASURES[m]: metrics["validation_base"][m] for m in measures if m in metrics["validation_base"]}
    return seed_panels(panels, title="DRaFT+ against λ on the validation captions (shaded: the chosen λ)",
                       xlabel="λ", references=references, highlight=f"{metrics['lambda_chosen']:g}")


def aig_figure(metrics: dict) -> Figure:
    """AIG schedules on the test captions, one series per fine-tuned model."""
    aig = metrics["aig"]
    measures = [m for m in ("gold", "diversity", "caption_match", "reward")
                if m in next(iter(next(iter(aig.values())).values()))]
    panels = {MEASURES[m]: {label(model): {schedule: _point(values[m]) for schedule, values in schedules.items()}
                            for model, schedules in aig.items()} for m in measures}
    return seed_panels(panels, title="AIG: mixing the initial and the fine-tuned model (base → draft: more fine-tuned)",
                       xlabel="schedule")


def _short(name: str) -> str:
    return "base" if name == "base" else label(name)
