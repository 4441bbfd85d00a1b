"""Each step's batch: random lenslet-aligned patches of the training frames,
with the part of each patch that the forward model explains, and flips that
keep y = H x.

Why the weights: a patch cut from inside a larger frame is not a light field
of its own volume patch. Light of voxels outside the cut reaches the light
field patch up to R lenslets in (R = the bank's largest kernel radius), and
light of the patch's own voxels leaves it. So y_patch = H x_patch holds
exactly only on the light-field pixels at least R lenslets from every *cut*
edge, and only the voxels at least R lenslets from a cut edge send all their
light into the patch. ``lf_weight`` and ``volume_weight`` are 1 there and 0
elsewhere; the losses are scored under them. An edge that is the frame's own
edge is not a cut (the frame's light field was simulated, or recorded, with
nothing beyond it), so whole frames are scored everywhere.

Batches are drawn from a generator seeded by (seed, step): the global batch
of a step is the same whatever the number of processes, each process takes
its slice, and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import LFMError
from .augment import allowed_codes, augment, bank_symmetries
from .data import FrameSet, TrainingData


@dataclass
class Batch:
    """One step's samples (this process's slice), labelled ones first.

    Attributes:
        y: (B, 1, Y, X) light fields, counts.
        background: (B, 1, 1, 1) counts per pixel.
        scale: (B, 1, 1, 1) signal scale c of the frame each patch was cut from.
        lf_weight: (B, 1, Y, X) 1 where y = H x holds for the patch, else 0.
        target: (L, D, Yv, Xv) volumes of the first L light fields in photons
            per voxel, or None when L = 0.
        volume_weight: (L, 1, Yv, Xv) 1 on the voxels whose light stays in
            the patch, else 0; None when L = 0.
        data_weight: (B, 1, Y, X) the pixels the network's data term may use
            (1) or not (0, held out for the re-synthesis term); None: all.
        start: (B, D, Yv, Xv) the network's start x₀ of each light field
            (:meth:`~lfm_recon.unfolded.UnfoldedISTA.initial`), or None: the
            network computes it.
    """

    y: torch.Tensor
    background: torch.Tensor
    scale: torch.Tensor
    lf_weight: torch.Tensor
    target: torch.Tensor | None = None
    volume_weight: torch.Tensor | None = None
    data_weight: torch.Tensor | None = None
    start: torch.Tensor | None = None

    @property
    def n_labelled(self) -> int:
        return 0 if self.target is None else len(self.target)

    def to(self, device) -> Batch:
        def move(t):
            return None if t is None else t.to(device)

        return Batch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))


class PatchSampler:
    """Draws the batches of a run from its :class:`TrainingData`.

    Args:
        data: the run's frames.
        margin: R, the bank's largest kernel radius in lenslets.
        symmetries: :func:`~lfm_recon.training.augment.bank_symmetries`;
            None draws no flips.
    """

    def __init__(self, data: TrainingData, margin: int, symmetries: dict | None) -> None:
        self.data, self.cfg = data, data.cfg
        self.margin = int(margin)
        self.codes = allowed_codes(symmetries) if symmetries and self.cfg.augment else [0]
        self._check_patch()

    @classmethod
    def for_bank(cls, data: TrainingData, bank) -> PatchSampler:
        return cls(data, int(np.max(bank.radii)), bank_symmetries(bank))

    def _check_patch(self) -> None:
        p, m = self.cfg.patch_lenslets, self.margin
        sizes = self.data.frame_lenslets()
        if not sizes:  # no fixed frames (simulation only)
            return
        if p == 0:
            if len(set(sizes)) > 1:
                raise LFMError(
                    f"the light fields have different sizes {sorted(set(sizes))} (lenslets);"
                    " whole frames cannot share a batch: use patches (data.patch_lenslets > 0)"
                )
            return
        smallest = min(min(s) for s in sizes)
        if p > smallest:
            raise LFMError(
                f"data.patch_lenslets = {p} but the smallest light field is {smallest} lenslets"
                f" across; use at most {smallest} (or 0 for whole frames)"
            )
        cut = any(max(s) > p for s in sizes)
        if cut and p <= 2 * m:
            raise LFMError(
                f"data.patch_lenslets = {p} leaves no part of a patch that its light field"
                f" explains: light crosses a cut edge up to {m} lenslets (the PSF's largest"
                f" kernel radius), so a patch needs more than {2 * m} lenslets (e.g."
                f" {2 * m + 7}), or 0 for whole frames"
            )

    def batch(self, seed: int, step: int, rank: int = 0, world: int = 1) -> Batch:
        """This process's slice of step ``step``'s global batch of patches."""
        return join(*self.parts(seed, step, rank, world))

    def parts(self, seed: int, step: int, rank: int = 0, world: int = 1):
        """(labelled, unlabeled) :class:`Batch` parts of this process's
        slice; None where the run has none."""
        cfg, data = self.cfg, self.data
        rng = np.random.default_rng([seed, step])
        n_l = cfg.batch_size if data.n_labelled else 0
        n_u = cfg.unlabeled_batch_size if data.n_unlabeled else 0
        labelled = [self._draw(rng, [data.labelled]) for _ in range(n_l)]
        unlabeled = [self._draw(rng, data.unlabeled) for _ in range(n_u)]
        return (
            stack_patches(_slice(labelled, rank, world), labelled=True),
            stack_patches(_slice(unlabeled, rank, world), labelled=False),
        )

    def _draw(self, rng: np.random.Generator, parts: list[FrameSet]) -> dict:
        return draw_patch(
            rng,
            parts,
            self.data.nnum,
            self.data.s,
            self.cfg.patch_lenslets,
            self.margin,
            self.codes,
        )


def draw_patch(
    rng: np.random.Generator,
    parts: list[FrameSet],
    nnum: int,
    s: int,
    patch: int,
    margin: int,
    codes: list[int],
) -> dict:
    """One random patch (side ``patch`` lenslets, 0 = the whole frame) of a
    random frame of ``parts``, flipped by one of ``codes``, with its weights
    (margins of ``margin`` lenslets on cut edges): a dict of y (1, Y, X),
    background, scale, lf_weight and, for labelled frames, volume and
    volume_weight."""
    sizes = np.array([len(p) for p in parts])
    flat = int(rng.integers(sizes.sum()))
    k = int(np.searchsorted(np.cumsum(sizes), flat, side="right"))
    part, i = parts[k], flat - int(sizes[:k].sum())
    y, v = part.y[i], None if part.volumes is None else part.volumes[i]
    n, p, m = nnum, patch, margin
    ny, nx = y.shape[1] // n, y.shape[2] // n
    if p:
        i0, j0 = int(rng.integers(ny - p + 1)), int(rng.integers(nx - p + 1))
        py, px = min(p, ny), min(p, nx)
    else:
        i0 = j0 = 0
        py, px = ny, nx
    # Lenslets scored on each side: the margin only where the patch is cut.
    top, left = (m if i0 > 0 else 0), (m if j0 > 0 else 0)
    bottom = m if i0 + py < ny else 0
    right = m if j0 + px < nx else 0
    y = y[:, i0 * n : (i0 + py) * n, j0 * n : (j0 + px) * n]
    lf_w = _box((py, px), n, top, bottom, left, right)
    out = {"background": float(part.background[i]), "scale": float(part.scale[i])}
    code = int(codes[int(rng.integers(len(codes)))])
    out["y"] = _augmented(y, code)
    out["lf_weight"] = _augmented(lf_w, code)
    if v is not None:
        v = v[:, i0 * s : (i0 + py) * s, j0 * s : (j0 + px) * s]
        out["volume"] = _augmented(v, code)
        out["volume_weight"] = _augmented(_box((py, px), s, top, bottom, left, right), code)
    return out


def stack_patches(items: list[dict], labelled: bool) -> Batch | None:
    """The drawn patches as one :class:`Batch` (None for none)."""
    if not items:
        return None

    def stack(key):
        return torch.from_numpy(np.stack([it[key] for it in items]))

    def column(key):
        return torch.tensor([it[key] for it in items], dtype=torch.float32).reshape(-1, 1, 1, 1)

    return Batch(
        y=stack("y"),
        background=column("background"),
        scale=column("scale"),
        lf_weight=stack("lf_weight"),
        target=stack("volume") if labelled else None,
        volume_weight=stack("volume_weight") if labelled else None,
    )


def join(*parts: Batch | None) -> Batch:
    """One batch of the given parts (None skipped), labelled parts first, in
    order; they must be on one device and of one light-field size."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise LFMError("a training step has no samples: check the data section")
    labelled = [p for p in parts if p.target is not None]
    ordered = labelled + [p for p in parts if p.target is None]
    sizes = {tuple(p.y.shape[-2:]) for p in ordered}
    if len(sizes) > 1:
        raise LFMError(
            f"light fields of one step differ in size {sorted(sizes)} px: simulated light fields"
            " ([data.simulate] lenslets) must match the patches (data.patch_lenslets)"
        )

    def cat(name):
        values = [getattr(p, name) for p in ordered]
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):  # a bug, not a user error
            raise RuntimeError(f"join: some parts of the batch have {name}, some do not")
        return torch.cat(values)

    return Batch(
        y=cat("y"),
        background=cat("background"),
        scale=cat("scale"),
        lf_weight=cat("lf_weight"),
        target=torch.cat([p.target for p in labelled]) if labelled else None,
        volume_weight=torch.cat([p.volume_weight for p in labelled]) if labelled else None,
        data_weight=cat("data_weight"),
        start=cat("start"),
    )


def _box(lenslets: tuple[int, int], per: int, top, bottom, left, right) -> np.ndarray:
    """(1, ny·per, nx·per) float32: 1 inside the given lenslet margins, 0 outside."""
    ny, nx = lenslets
    w = np.zeros((1, ny * per, nx * per), np.float32)
    w[:, top * per : (ny - bottom) * per, left * per : (nx - right) * per] = 1
    return w


def _augmented(a: np.ndarray, code: int) -> np.ndarray:
    return augment(torch.from_numpy(np.ascontiguousarray(a)), code).contiguous().numpy()


def _slice(items: list, rank: int, world: int) -> list:
    if len(items) % world:
        raise LFMError(
            f"a batch of {len(items)} cannot be split evenly over {world} processes; make"
            " data.batch_size and data.unlabeled_batch_size multiples of the process count"
        )
    per = len(items) // world
    return items[rank * per : (rank + 1) * per]
