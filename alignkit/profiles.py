"""The three profiles (``smoke``, ``cpu``, ``gpu``) and the defaults each one picks.

``smoke``: tiny random models and a few dozen rows, for CI; ``cpu`` (default): SmolLM2-135M-Instruct and
the synthetic task world, the main job on a laptop; ``gpu``: hub models and datasets on GPU servers.
"""

from __future__ import annotations

import os

from alignkit.models import BUNDLED_NAME, TINY_NAME

PROFILES = ("smoke", "cpu", "gpu")
DEFAULT_PROFILE = "cpu"
PROFILE_ENV = "ALIGNKIT_PROFILE"

# The model notebook 00 obtains in each profile; every later notebook starts from it.
BASE_MODEL = {"smoke": TINY_NAME, "cpu": BUNDLED_NAME, "gpu": "HuggingFaceTB/SmolLM2-1.7B-Instruct"}


def resolve_profile(profile: str | None = None) -> str:
    """``profile`` if given, else ``$ALIGNKIT_PROFILE``, else ``cpu``; an unknown name is an error."""
    source = "profile"
    if profile is None:
        profile, source = os.environ.get(PROFILE_ENV, DEFAULT_PROFILE), PROFILE_ENV
    if profile not in PROFILES:
        raise ValueError(f"{source} must be one of {', '.join(PROFILES)}, got {profile!r}")
    return profile


def base_model(profile: str) -> str:
    """The model name notebook 00 resolves in ``profile``."""
    return BASE_MODEL[resolve_profile(profile)]
