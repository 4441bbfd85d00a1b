"""The trained-model file: network, architecture, training run, microscope and
the PSF bank it was trained with, in one self-contained file.

A ``torch.save`` dictionary holding only tensors and plain Python values (so
``torch.load(weights_only=True)`` reads it):

    format, format_version, lfm_recon_version
    architecture   UnfoldedConfig as a dict
    state_dict     the network's parameters and buffers (not H: the bank is below)
    psf            kernels, depths, radii, captured_energy (tensors), microscope
                   and generation (dicts), sha256
    training       the training configuration (dict) and summary metrics

Using a model with another PSF bank is an error, never a silent wrong answer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import __version__
from ._durable import replacing
from .errors import LFMError
from .microscope import Microscope
from .operator import LightFieldOperator
from .psf.bank import PSFBank
from .unfolded import UnfoldedConfig, UnfoldedISTA

FORMAT = "lfm_recon.model"
FORMAT_VERSION = 2
# Version 2 (lfm_recon 0.2): frames are normalised by their unbiased mean
# signal and the start is a fixed multiple of it; version-1 networks were
# trained with another normalisation and would silently give other volumes.
OLDEST_READABLE = 2


def save_model(net: UnfoldedISTA, path: str | Path, *, training: dict | None = None) -> Path:
    """Write ``net`` and its PSF bank to ``path`` atomically and durably
    (temporary file, fsync, rename, fsync of the folder).
    ``training``: JSON-like run information to keep with it."""
    if not isinstance(net, UnfoldedISTA):
        raise LFMError(f"save_model needs an UnfoldedISTA, got {type(net).__name__}")
    bank = net.op.bank
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lfm_recon_version": __version__,
        "architecture": net.config.to_dict(),
        "state_dict": {
            k: v.detach().cpu() for k, v in net.state_dict().items() if not k.startswith("op.")
        },
        "psf": {
            "kernels": torch.from_numpy(bank.kernels.copy()),
            "depths": torch.from_numpy(bank.depths.copy()),
            "radii": torch.from_numpy(bank.radii.copy()),
            "captured_energy": torch.from_numpy(bank.captured_energy.copy()),
            "microscope": bank.microscope.to_dict(),
            "generation": dict(bank.generation),
            "sha256": bank.sha256,
        },
        "training": training or {},
    }
    path = Path(path)
    if not path.parent.is_dir():
        raise LFMError(f"output folder {path.parent} does not exist")
    with replacing(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_model_file(path: str | Path) -> dict:
    """The checked contents of a model file (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise LFMError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors of several types
        raise LFMError(f"{path} is not a readable lfm_recon model file ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LFMError(f"{path} is not an lfm_recon model file; train one with `lfm-recon train`")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LFMError(
            f"{path} has model format {version!r}; this lfm_recon reads up to"
            f" {FORMAT_VERSION}: upgrade lfm_recon"
        )
    if version < OLDEST_READABLE:
        raise LFMError(
            f"{path} has model format {version}, written by an earlier lfm_recon whose network"
            " normalised light fields differently; its weights would give wrong volumes here:"
            " retrain it with `lfm-recon train`"
        )
    return payload


def load_model(
    path: str | Path,
    *,
    bank: PSFBank | None = None,
    device: torch.device | str | None = None,
    compute: str = "exact",
) -> UnfoldedISTA:
    """Load a trained :class:`UnfoldedISTA` with its own PSF bank.

    Args:
        path: a file written by :func:`save_model` (``lfm-recon train``).
        bank: optional PSF bank the caller means to use; it must be the one
            the model was trained with (same content hash), else LFMError.
        device: where to put the network and its operator.
        compute: the operator's precision mode (``exact``, ``tf32``, ``bf16``).

    Returns:
        The network in eval mode; ``net.op`` is its operator.
    """
    payload = read_model_file(path)
    psf = payload["psf"]
    stored = PSFBank(
        kernels=psf["kernels"].numpy(),
        depths=psf["depths"].numpy(),
        microscope=Microscope.from_dict(psf["microscope"], source=str(path)),
        radii=psf["radii"].numpy(),
        captured_energy=psf["captured_energy"].numpy(),
        generation=psf["generation"],
    )
    if stored.sha256 != psf["sha256"]:
        raise LFMError(f"{path} is corrupt: its PSF bank does not match its stored hash")
    if bank is not None and bank.sha256 != stored.sha256:
        raise LFMError(
            f"the model {path} was trained with PSF bank {stored.sha256[:12]}… but the given"
            f" PSF bank is {bank.sha256[:12]}…: a model only works with its own PSF (same"
            " optics, depths and voxels per lenslet); retrain it for this bank or drop --psf"
        )
    op = LightFieldOperator(stored, device=device, compute=compute)
    try:
        config = UnfoldedConfig(**payload["architecture"])
    except TypeError as exc:  # an option this version does not know
        raise LFMError(
            f"{path} has an architecture this lfm_recon does not know ({exc}): upgrade lfm_recon"
        ) from None
    net = UnfoldedISTA(op, config=config)
    missing, unexpected = net.load_state_dict(payload["state_dict"], strict=False)
    missing = [k for k in missing if not k.startswith("op.")]
    if missing or unexpected:
        raise LFMError(
            f"{path} does not fit its architecture (missing {missing}, extra {unexpected})"
        )
    net.training_info = payload.get("training", {})
    return net.eval()
