"""This process's place in a multi-process run (``accelerate launch`` / ``torchrun``).

Every caller goes through ``process_state()``: a bare ``accelerate.PartialState()`` made
before the first ``Accelerator`` ignores ``ACCELERATE_USE_CPU`` and, on a machine without a
GPU, leaves each torchrun process believing it is alone (two "main" processes writing the
same files). Passing ``cpu`` from that variable, as ``Accelerator()`` does, makes the first
call decide the shared state correctly, whoever makes it.
"""
from __future__ import annotations

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def process_state() -> PartialState:
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
