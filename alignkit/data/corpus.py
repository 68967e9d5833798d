"""Small texts shipped with alignkit."""

from __future__ import annotations

from importlib import resources


def heldout_texts() -> list[str]:
    """Five short paragraphs of plain English prose written for alignkit (366 words), one string each.

    Written for this package and never published elsewhere, so no pre-trained model has seen them: a fair
    held-out text for perplexity.
    """
    text = resources.files("alignkit").joinpath("data/texts/heldout.txt").read_text(encoding="utf-8")
    return [paragraph.strip() for paragraph in text.split("\n\n") if paragraph.strip()]
