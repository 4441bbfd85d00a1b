"""Torch devices named by users ("auto", "cpu", "cuda", "cuda:1")."""

from __future__ import annotations

import torch

from .errors import LFMError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device for ``name``; "auto" is CUDA when present, else the CPU.
    A bare "cuda" under torchrun is the process's own GPU (``local_rank``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LFMError(
            f"device {name!r} is not a torch device (e.g. auto, cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LFMError(f"device {name}: no CUDA device is available here; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
