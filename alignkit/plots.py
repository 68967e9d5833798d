"""The figures the notebooks show. Each function returns a matplotlib Figure and draws nothing else."""

from __future__ import annotations

import matplotlib.pyplot as plt
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
