"""The CogVideoX family: adapter (`adapter.py`), clip encoder (`encoder.py`), objective (`objective.py`)
and tiny builder (`tiny.py`), registered as `FAMILY`."""

from vap.training.families.cogvideox.adapter import CogVideoX

FAMILY = CogVideoX()
