"""The Wan family: adapter (`adapter.py`), clip encoder (`encoder.py`), objective (`objective.py`)
and tiny builder (`tiny.py`), registered as `FAMILY`."""

from vap.training.families.wan.adapter import Wan

FAMILY = Wan()
