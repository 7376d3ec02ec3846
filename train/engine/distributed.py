"""This process's place in a multi-process run (``accelerate launch`` / ``torchrun``).

Every caller goes through ``process_state()``: a bare ``accelerate.PartialState()`` made
before the first ``Accelerator`` ignores ``ACCELERATE_USE_CPU`` and, on a machine without a
GPU, leaves each torchrun process believing it is alone (two "main" processes writing the
same files). ``AcceleratorState()`` initialises the shared state the way ``Accelerator()``
does, so the first call decides it correctly whoever makes it.
"""
from __future__ import annotations

from accelerate import PartialState
from accelerate.state import AcceleratorState


def process_state() -> PartialState:
    AcceleratorState()  # initialises the shared PartialState, honouring ACCELERATE_USE_CPU
    return PartialState()
