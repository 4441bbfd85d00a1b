"""Each step's batch, from every kind of data a run has: patches of the
fixed sets (``sampler``), samples simulated on the training device
(``lfm_recon.simulator``), the pixel hold-out of the re-synthesis term, and
the unpaired volumes the discriminator learns real tissue from
(``unpaired``).

Everything a step draws comes from its seed and step number alone (each
part from its own generator; a simulated draw reused over n steps, from
the step that drew it), and each process takes its slice of the step's
global batch: any number of processes, and a resumed run, draw what one
uninterrupted process would.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import LFMError
from ..operator import LightFieldOperator
from ..psf.bank import PSFBank
from ..simulator import Simulator
from ..unfolded import UnfoldedISTA
from .augment import augment
from .config import TrainConfig
from .data import TrainingData
from .distributed import Processes
from .sampler import Batch, PatchSampler, join
from .unpaired import UnpairedVolumes

_HOLDOUT_STREAM, _UNPAIRED_STREAM, _REUSE_STREAM = 3, 4, 5
# The parts of a step's batch, in order (each draws its own hold-out).
_LABELLED, _SIMULATED, _UNLABELED = 0, 1, 2


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
        self._draw: tuple[tuple, Batch] | None = None  # the simulated draw in use (reuse)

    def batch(self, step: int, processes: Processes, initial=None) -> Batch:
        """This process's slice of step ``step``'s batch, on its device.

        ``initial``: (y, background, scale, weight) → the network's start x₀
        (:meth:`~lfm_recon.unfolded.UnfoldedISTA.initial`). Given, every row
        carries its start (``Batch.start``), and a simulated draw's starts
        are computed once for all the steps that reuse it (``simulate.reuse``).
        """
        seed, rank, world = self.cfg.seed, processes.rank, processes.world
        labelled, unlabeled = self.sampler.parts(seed, step, rank, world)
        device = processes.device
        labelled, unlabeled = [None if p is None else p.to(device) for p in (labelled, unlabeled)]
        for part, p in ((_LABELLED, labelled), (_UNLABELED, unlabeled)):
            if p is not None:
                self._finish(p, step, part, processes, initial)
        simulated = self._simulated(step, processes, initial)
        return join(labelled, simulated, unlabeled)

    def _finish(self, p: Batch, step: int, part: int, processes: Processes, initial) -> None:
        """Give part ``part`` of step ``step``'s batch its re-synthesis
        hold-out (if any) and, with ``initial``, its starts."""
        fraction = self.cfg.loss.resynthesis_holdout
        if fraction > 0:
            n = len(p.y) * processes.world
            hidden = _holdout(self.cfg.seed, step, part, n, p.y.shape[-2:], fraction, processes)
            hidden = hidden.to(device=p.y.device, dtype=p.y.dtype)
            p.data_weight = 1 - hidden
            p.lf_weight = p.lf_weight * hidden
        if initial is not None:
            p.start = initial(p.y, p.background, p.scale, p.data_weight)

    def _simulated(self, step: int, processes: Processes, initial) -> Batch | None:
        """The simulated part: step ``step``'s own draw, or with ``reuse`` n
        the draw of step n·⌊step / n⌋ under the dihedral element that this
        step's place after it picks (cached from step to step)."""
        if self.simulator is None:
            return None
        reuse = self.simulator.ranges.reuse
        first = step - step % reuse
        key = (first, processes.rank, processes.world, initial is not None)
        if self._draw is None or self._draw[0] != key:
            self._draw = (key, self._draw_simulated(first, processes, initial))
        code = self._repeat_code(first, step % reuse)
        return _transformed(self._draw[1], code)

    def _draw_simulated(self, step: int, processes: Processes, initial) -> Batch:
        n, rank, world = self.simulator.ranges.batch_size, processes.rank, processes.world
        if n % world:
            raise LFMError(
                f"simulate.batch_size = {n} cannot be split evenly over {world} processes"
            )
        per = n // world
        drawn = self.simulator.draw(self.cfg.seed, step, range(rank * per, (rank + 1) * per))
        b = drawn.background.reshape(-1, 1, 1, 1)
        target = drawn.volumes
        p = Batch(
            y=drawn.y,
            background=b,
            scale=UnfoldedISTA.signal_scale(drawn.y, b),
            lf_weight=torch.ones_like(drawn.y),
            target=target,
            volume_weight=torch.ones_like(target[:, :1]),
        )
        self._finish(p, step, _SIMULATED, processes, initial)
        return p

    def _repeat_code(self, first: int, k: int) -> int:
        """The dihedral element of the k-th step after draw ``first`` (0:
        the draw as drawn): the bank's other allowed elements in an order
        drawn per draw, cycling if the draw serves more steps than there are."""
        others = [c for c in self.sampler.codes if c]
        if k == 0 or not others:
            return 0
        rng = np.random.default_rng([self.cfg.seed, first, _REUSE_STREAM])
        return int(rng.permutation(others)[(k - 1) % len(others)])

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


def _holdout(seed, step, part, n, shape, fraction, processes) -> torch.Tensor:
    """(B, 1, Y, X) 1 on the pixels of part ``part`` of step ``step``'s batch
    hidden from the network: the part's global mask (n light fields) from its
    own generator, this process's slice."""
    rng = np.random.default_rng([seed, step, _HOLDOUT_STREAM, part])
    hidden = rng.random((n, 1, *shape)) < fraction
    per = n // processes.world
    mine = hidden[processes.rank * per : (processes.rank + 1) * per]
    return torch.from_numpy(mine.astype(np.float32))


def _transformed(p: Batch, code: int) -> Batch:
    """Batch ``p`` under dihedral element ``code`` (per-frame numbers kept)."""
    if code == 0:
        return p

    def move(name):
        t = getattr(p, name)
        return t if t is None or name in ("background", "scale") else augment(t, code)

    return Batch(*(move(f) for f in p.__dataclass_fields__))
