"""Compile DeepSpeed's CPU communication op once, at setup, instead of at first use.

On a CPU-only machine the first `deepspeed.initialize` JIT-builds `deepspeed_shm_comm`
(≈95 s on 2 cores) into TORCH_EXTENSIONS_DIR; `make setup` runs this module so neither the
demo nor the tests pay it. Idempotent: a cached build loads in a second.
"""

import logging
import os
import time

log = logging.getLogger(__name__)


def warm_deepspeed_ops() -> float:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return 0.0  # GPU images prebuild their ops (DS_BUILD_OPS) instead
    start = time.monotonic()
    get_accelerator().create_op_builder("ShareMemCommBuilder").load(verbose=False)
    return time.monotonic() - start


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    took = warm_deepspeed_ops()
    print(f"DeepSpeed CPU ops ready in {os.environ.get('TORCH_EXTENSIONS_DIR', '~/.cache/torch_extensions')} ({took:.0f} s)")
