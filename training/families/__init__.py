"""Backbone families, one folder each (torchtitan's model registry).

A family is a sub-package here (`cogvideox/`, `wan/`) whose `__init__` exports `FAMILY`, an
instance of its `Family` subclass (`base.py`): the adapter the VAP transformer, objectives and
pipeline call, plus its clip encoder, objective and tiny builder. Adding a family is adding one
folder: `family_names()` lists the folders (without importing torch, so the job spec can
validate `model.family` cheaply) and `get_family(name)` imports the one asked for.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from vap.errors import ModelError


def family_names() -> list[str]:
    """Registered family names: the sub-packages of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


@cache
def get_family(name: str):
    """The `Family` registered as `name` (ModelError naming the known ones otherwise)."""
    if name not in family_names():
        raise ModelError(f"unknown backbone family {name!r}; choose one of {family_names()}")
    family = importlib.import_module(f"{__name__}.{name}").FAMILY
    if family.name != name:
        raise ModelError(f"family folder {name!r} registers a family named {family.name!r}; make them agree")
    return family


def family_of_transformer(class_name: str):
    """The family whose diffusers transformer class is `class_name`, or None."""
    return next((f for f in map(get_family, family_names()) if f.transformer_class == class_name), None)


def __getattr__(attr: str):
    # The interface types and helpers live in base.py (which imports torch); re-exported lazily.
    if attr in ("Family", "Stream", "TrainingInputs", "MODEL_FILES", "resolve_backbone", "batch_tensor",
                "check_same_grid"):
        from vap.training.families import base

        return getattr(base, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
