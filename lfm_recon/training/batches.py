"""Each step's batch, from every kind of data a run has: patches of the
fixed sets (``sampler``), samples simulated on the training device
(``lfm_recon.simulator``), the pixel hold-out of the re-synthesis term, and
the unpaired volumes the discriminator learns real tissue from
(``unpaired``).

Everything a step draws comes from its seed and step number alone (each
part from its own generator), and each process takes its slice of the
step's global batch: any number of processes, and a resumed run, draw what
one uninterrupted process would.
"""

from __future__ import annotations

import numpy as np
import torch

from ..operator import LightFieldOperator
from ..psf.bank import PSFBank
from ..simulator import Simulator
from ..unfolded import UnfoldedISTA
from .config import TrainConfig
from .data import TrainingData
from .distributed import Processes
from .sampler import Batch, PatchSampler, join
from .unpaired import UnpairedVolumes

_HOLDOUT_STREAM, _UNPAIRED_STREAM = 3, 4


class BatchSource:
    """Draws the batches of a run on its device.

    Args:
        cfg: the run.
        data: its fixed frames.
        bank: the PSF bank.
        op: the training device's operator (simulation renders and projects there).
    """

    def __init__(
        self, cfg: TrainConfig, data: TrainingData, bank: PSFBank, op: LightFieldOperator
    ) -> None:
        self.cfg, self.data, self.op = cfg, data, op
        self.sampler = PatchSampler.for_bank(data, bank)
        sim = cfg.data.simulate
        self.simulator = (
            Simulator(op, sim, data.simulated_lenslets)
            if sim is not None and sim.batch_size
            else None
        )
        self.unpaired = (
            UnpairedVolumes(cfg.data.unpaired_volumes, bank) if cfg.data.unpaired_volumes else None
        )

    def batch(self, step: int, processes: Processes) -> Batch:
        """This process's slice of step ``step``'s batch, on its device."""
        seed, rank, world = self.cfg.seed, processes.rank, processes.world
        labelled, unlabeled = self.sampler.parts(seed, step, rank, world)
        device = processes.device
        parts = [None if p is None else p.to(device) for p in (labelled, unlabeled)]
        simulated = self._simulated(step, rank, world)
        batch = join(parts[0], simulated, parts[1])
        holdout = self.cfg.loss.resynthesis_holdout
        if holdout > 0:
            sizes = [0 if p is None else len(p.y) * world for p in (parts[0], simulated, parts[1])]
            hidden = _holdout(seed, step, sizes, batch.y.shape[-2:], holdout, rank, world)
            hidden = hidden.to(device=device, dtype=batch.y.dtype)
            batch.data_weight = 1 - hidden
            batch.lf_weight = batch.lf_weight * hidden
        return batch

    def _simulated(self, step: int, rank: int, world: int) -> Batch | None:
        if self.simulator is None:
            return None
        n = self.simulator.ranges.batch_size
        if n % world:
            from ..errors import LFMError

            raise LFMError(
                f"simulate.batch_size = {n} cannot be split evenly over {world} processes"
            )
        per = n // world
        drawn = self.simulator.draw(self.cfg.seed, step, range(rank * per, (rank + 1) * per))
        b = drawn.background.reshape(-1, 1, 1, 1)
        target = drawn.volumes
        return Batch(
            y=drawn.y,
            background=b,
            scale=UnfoldedISTA.signal_scale(drawn.y, b),
            lf_weight=torch.ones_like(drawn.y),
            target=target,
            volume_weight=torch.ones_like(target[:, :1]),
        )

    def real_volumes(self, step: int, processes: Processes) -> torch.Tensor | None:
        """This process's unpaired crops (n, D, Yv, Xv) on its device, each
        normalised as a reconstruction is (divided by the mean of its light
        field H x, the frame scale c), or None without unpaired volumes."""
        if self.unpaired is None:
            return None
        n, world = self.cfg.data.unpaired_batch_size, processes.world
        rng = np.random.default_rng([self.cfg.seed, step, _UNPAIRED_STREAM])
        side = self.data.simulated_lenslets * self.data.s
        crops = []
        for _ in range(n):
            for _attempt in range(20):  # skip crops with no light
                crop = self.unpaired.crop(rng, side)
                if crop.max() > 0:
                    break
            crops.append(crop)
        per = max(1, n // world)
        mine = crops[processes.rank * per : (processes.rank + 1) * per]
        x = torch.from_numpy(np.stack(mine)).to(device=processes.device, dtype=self.op.dtype)
        with torch.no_grad():
            c = self.op.project(x).mean(dim=(1, 2, 3), keepdim=True)
        return x / c.clamp_min(torch.finfo(x.dtype).tiny)


def _holdout(seed, step, sizes, shape, fraction, rank, world) -> torch.Tensor:
    """(B, 1, Y, X) 1 on the pixels hidden from the network this step: each
    part's global mask from its own generator, this process's slice."""
    masks = []
    for part, n in enumerate(sizes):
        if not n:
            continue
        rng = np.random.default_rng([seed, step, _HOLDOUT_STREAM, part])
        hidden = rng.random((n, 1, *shape)) < fraction
        per = n // world
        masks.append(hidden[rank * per : (rank + 1) * per])
    return torch.from_numpy(np.concatenate(masks).astype(np.float32))
