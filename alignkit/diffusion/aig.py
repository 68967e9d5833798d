"""Annealed importance guidance (AIG): mix the initial and the fine-tuned model at every sampling step.

From the same x_t, ε = (1 − w) ε_init + w ε_θ with w = schedule(s), s = i / (T − 1) for step i = 0 … T − 1
counted from the noisiest (DRaFT+, NVIDIA NeMo-Aligner). Early (noisy) steps set the layout of the image, late
ones its details, so a schedule that hands over late keeps more of the initial model's variety. The sampler
(:func:`alignkit.diffusion.sampling.ddim_sample`) applies the weights; this module only names them.
"""

from __future__ import annotations

import re
from typing import Callable

AIG_FORMS = "'base' (w=0), 'draft' (w=1), 'linear' (w=s), 'power_<p>' with p > 0 (w=s^p, e.g. 'power_2'), " \
            "'step_<f>' with 0 <= f <= 1 (w = 1 once s >= f, e.g. 'step_0.5')"


def parse_aig_schedule(schedule: str) -> Callable[[float], float]:
    """``schedule`` name → w(s) for s ∈ [0, 1]; a bad name raises ``ValueError`` listing the valid forms."""
    if schedule == "base":
        return lambda s: 0.0
    if schedule == "draft":
        return lambda s: 1.0
    if schedule == "linear":
        return lambda s: s
    m = re.fullmatch(r"(power|step)_([0-9]*\.?[0-9]+)", schedule) if isinstance(schedule, str) else None
    if m is not None:
        value = float(m.group(2))
        if m.group(1) == "power" and value > 0:
            return lambda s: s ** value
        if m.group(1) == "step" and 0.0 <= value <= 1.0:
            return lambda s: 1.0 if s >= value else 0.0
    raise ValueError(f"unknown AIG schedule {schedule!r}; valid forms: {AIG_FORMS}")


def aig_position(i: int, num_steps: int) -> float:
    """s = i / (T − 1) of step i (1 when T = 1: the only step is the last)."""
    return i / (num_steps - 1) if num_steps > 1 else 1.0


def aig_weight(schedule: str, i: int, num_steps: int) -> float:
    """Weight w of the fine-tuned model at sampling step ``i`` (0 = noisiest) of ``num_steps``:
    ε = (1 − w) ε_init + w ε_θ."""
    if num_steps < 1 or not 0 <= i < num_steps:
        raise ValueError(f"need 0 <= i < num_steps and num_steps >= 1; got i={i}, num_steps={num_steps}")
    return float(parse_aig_schedule(schedule)(aig_position(i, num_steps)))
