"""A guard for the learned reconstruction: does the network explain a
recording's light fields about as well as Richardson–Lucy does?

A network trained on one kind of data can fail quietly on another: it may
remove real light it was taught to treat as background, or miss structures
it never saw. Both leave light in the frames that its volumes do not put
back. The guard reconstructs a few frames of the recording both ways and
compares how well each explains them: the Poisson deviance per photon of
the light field under H x + b (``training.losses.poisson_resynthesis``).
RL at a moderate iteration count is the yardstick: it fits the data without
any learned prior. A network that explains the data much worse than RL
(ratio above ``tolerance``) is reported, with what to do (adapt the network
to the recording, or use RL). A network that explains it *better* than
early-stopped RL is not suspect: a prior that restores detail also fits
the light better; and fitting the noise is not possible for the network at
its fixed number of layers in the way it is for RL run to convergence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import LFMError
from .solvers import richardson_lucy
from .training.losses import poisson_resynthesis
from .unfolded import UnfoldedISTA

DEFAULT_TOLERANCE = 1.5
DEFAULT_RL_ITERATIONS = 50


@dataclass(frozen=True)
class GuardReport:
    """The guard's finding on a recording.

    Attributes:
        frames: indices of the frames compared.
        deviance_net, deviance_rl: deviance per photon of each frame's light
            field under the network's and RL's volumes.
        ratio: median over frames of deviance_net / deviance_rl.
        rl_iterations: RL's iteration count.
        tolerance: the ratio above which the network is suspect.
    """

    frames: list[int]
    deviance_net: list[float]
    deviance_rl: list[float]
    ratio: float
    rl_iterations: int
    tolerance: float

    @property
    def suspect(self) -> bool:
        return self.ratio > self.tolerance

    def message(self) -> str:
        verdict = (
            "the network leaves light in these frames that RL explains: the recording may be"
            " unlike its training data; adapt it to the recording (--adapt N) or use --method rl"
            if self.suspect
            else "the network explains these frames about as well as RL or better"
        )
        return (
            f"guard: deviance per photon, network / RL ({self.rl_iterations} it.) = "
            f"{self.ratio:.2f} over {len(self.frames)} frames: {verdict}"
        )

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "deviance_net": self.deviance_net,
            "deviance_rl": self.deviance_rl,
            "ratio": self.ratio,
            "rl_iterations": self.rl_iterations,
            "tolerance": self.tolerance,
            "suspect": self.suspect,
        }


@torch.no_grad()
def check_network(
    net: UnfoldedISTA,
    frames,
    background: float = 0.0,
    *,
    indices=None,
    rl_iterations: int = DEFAULT_RL_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GuardReport:
    """Compare the network with RL on light fields ``frames`` (T, Y, X) or
    (T, 1, Y, X) counts; ``indices`` label them in the recording."""
    if not isinstance(net, UnfoldedISTA):
        raise LFMError(f"the guard checks an UnfoldedISTA, got {type(net).__name__}")
    if not (isinstance(rl_iterations, int) and rl_iterations >= 1):
        raise LFMError(f"guard RL iterations must be a positive integer, got {rl_iterations!r}")
    if not tolerance > 0:
        raise LFMError(f"guard tolerance must be > 0, got {tolerance}")
    y = torch.as_tensor(np.asarray(frames, dtype=np.float32))
    if y.ndim == 3:
        y = y[:, None]
    op = net.op
    y = y.to(device=op.device, dtype=op.dtype)
    b = torch.tensor(float(background), device=op.device, dtype=op.dtype)
    x_net = net(y, b)
    x_rl = richardson_lucy(op, y, rl_iterations, background=b)
    d_net = [
        float(poisson_resynthesis(op, x_net[i : i + 1], y[i : i + 1], b)) for i in range(len(y))
    ]
    d_rl = [float(poisson_resynthesis(op, x_rl[i : i + 1], y[i : i + 1], b)) for i in range(len(y))]
    ratios = [a / max(r, 1e-30) for a, r in zip(d_net, d_rl, strict=True)]
    idx = list(range(len(y))) if indices is None else [int(i) for i in indices]
    return GuardReport(idx, d_net, d_rl, float(np.median(ratios)), rl_iterations, tolerance)
