"""Randomised neuron-like volumes and their camera light fields, drawn fresh
for every training step on the training device.

Each sample draws its own *family* from :class:`SimulationRanges`: soma
density, size and elongation, brightness spread, processes per soma, a
smooth neuropil background (level and feature size), whether depth planes
are slab means or point samples, photons at the brightest pixel, background
and read noise. Training on such a spread, rather than on one fixed family,
is what lets a learned reconstruction hold up on data unlike any one
simulator's (Lin & Heckel 2023 show this for unrolled networks).

Geometry (µm, as ``lfm_recon.phantoms``): voxel (d, p, q) at depth
``depths[d]``, laterally ((p+½)·v, (q+½)·v) from the volume's corner, v the
lateral voxel size. A slab-mean plane averages the density over its slab
(halfway to its neighbours); a point-sampled plane is the density at its
depth. Somata are soft ellipsoids (logistic edge ``EDGE_UM`` wide);
processes are random-walk tubes of radius ``TUBE_UM`` from the soma surface,
rendered as the voxel mean of the tube (mass splatted bilinearly); the
neuropil is a coarse Gaussian random field, interpolated.

Reproducibility: sample i of step t of a run with seed s is drawn from
``SeedSequence([s, t, i])`` alone, so a step's global batch is the same for
any number of processes and after a resume. The light field's noise uses a
torch generator of the same seed on the rendering device (bit-identical on
one device type; CPU and CUDA draw different noise).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import LFMError
from .operator import LightFieldOperator
from .phantoms import slab_edges

EDGE_UM = 0.7
TUBE_UM = 0.6
PROCESS_LENGTH_UM = (15.0, 40.0)


@dataclass(frozen=True)
class SimulationRanges:
    """What each simulated sample draws its family from (``[data.simulate]``).

    Pairs are (low, high) ranges, drawn uniformly per sample except where
    said. Defaults span sparse to dense, small to large somata, no to bright
    neuropil and 30 to 3000 photons.

    Attributes:
        batch_size: simulated samples per step (all processes together).
        lenslets: side of each simulated light field, lenslets (0: the side
            of the run's patches, ``data.patch_lenslets``, or 11).
        validation: simulated samples (fixed, drawn once) that pick the
            best model when the run has no validation file and no
            ``data.train`` to hold samples out of.
        reuse: steps each draw serves. 1: fresh samples every step. n > 1: a
            draw every n steps, and the n − 1 steps after it see its samples
            under other flips and transposes that the PSF bank allows (so
            y = H x still holds; the draw itself repeats where the bank
            allows none), with the network's RL start computed once per
            draw. The simulation and the RL start then cost 1/n per step:
            more steps in a time budget, from fewer distinct samples.
        density: somata per mm³ of the imaged volume (log-uniform).
        soma_radius: µm, each sample's mean soma radius (somata vary ±25 %
            around it).
        elongation: longest / shortest semi-axis of each soma (stretched
            along a random axis, volume kept).
        brightness_min: dimmest soma relative to the brightest (each soma
            uniform in [min, 1]).
        processes: thin processes per soma (integer, uniform).
        neuropil: mean level of the smooth background, relative to the
            brightest soma.
        neuropil_scale: µm, feature size of the background.
        point_planes: probability that a sample's planes are point samples
            instead of slab means.
        photons: at the brightest pixel of the noise-free light field
            (log-uniform).
        background: photons per pixel.
        read_noise: camera read noise, photons (standard deviation).
    """

    batch_size: int = 4
    lenslets: int = 0
    validation: int = 8
    reuse: int = 1
    density: tuple[float, float] = (3000.0, 60000.0)
    soma_radius: tuple[float, float] = (2.5, 8.0)
    elongation: tuple[float, float] = (1.0, 1.6)
    brightness_min: tuple[float, float] = (0.1, 1.0)
    processes: tuple[int, int] = (0, 3)
    neuropil: tuple[float, float] = (0.0, 0.15)
    neuropil_scale: tuple[float, float] = (1.5, 8.0)
    point_planes: float = 0.5
    photons: tuple[float, float] = (30.0, 3000.0)
    background: tuple[float, float] = (0.0, 20.0)
    read_noise: tuple[float, float] = (0.0, 2.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                _check_range(f.name, value, integer=f.name == "processes")
        for name in ("batch_size", "lenslets", "validation", "reuse"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LFMError(f"simulate.{name} must be an integer ≥ 0, got {value!r}")
        if self.reuse < 1:
            raise LFMError(f"simulate.reuse must be ≥ 1 (steps per draw), got {self.reuse}")
        if not 0 <= self.point_planes <= 1:
            raise LFMError(f"simulate.point_planes is a probability, got {self.point_planes}")
        positive = ("density", "soma_radius", "elongation", "neuropil_scale", "photons")
        for name in positive:
            if getattr(self, name)[0] <= 0:
                raise LFMError(f"simulate.{name} must be > 0, got {getattr(self, name)}")
        if self.elongation[0] < 1:
            raise LFMError(f"simulate.elongation is a ratio ≥ 1, got {self.elongation}")
        if self.brightness_min[1] > 1:
            raise LFMError(f"simulate.brightness_min must lie in [0, 1], got {self.brightness_min}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "[data.simulate]") -> SimulationRanges:
        """From a TOML table: pairs as two-element lists; unknown keys named."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise LFMError(f"{source}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
        out = {}
        for name, value in values.items():
            default = fields[name].default
            if isinstance(default, tuple):
                if not (isinstance(value, (list, tuple)) and len(value) == 2):
                    raise LFMError(f"{source}: {name} must be a pair [low, high], got {value!r}")
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                    raise LFMError(f"{source}: {name} must hold two numbers, got {value!r}")
                if name == "processes" and any(v != int(v) for v in value):
                    raise LFMError(f"{source}: processes must be whole numbers, got {value!r}")
                value = tuple(int(v) if name == "processes" else float(v) for v in value)
            elif (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            elif isinstance(value, bool) or not isinstance(value, type(default)):
                raise LFMError(
                    f"{source}: {name} must be a {type(default).__name__}, got {value!r}"
                )
            out[name] = value
        try:
            return cls(**out)
        except LFMError as exc:
            raise LFMError(f"{source}: {exc}") from None

    def to_dict(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def _check_range(name: str, pair: tuple, integer: bool) -> None:
    lo, hi = pair
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or lo < 0:
        raise LFMError(
            f"simulate.{name} must be a range [low, high] with 0 ≤ low ≤ high, got {pair}"
        )
    if integer and (lo != int(lo) or hi != int(hi)):
        raise LFMError(f"simulate.{name} must be whole numbers, got {pair}")


@dataclass(frozen=True)
class Family:
    """The parameters one simulated sample drew (see :class:`SimulationRanges`)."""

    n_somata: int
    soma_radius: float
    elongation_max: float
    brightness_min: float
    processes: int
    neuropil: float
    neuropil_scale: float
    point_planes: bool
    photons: float
    background: float
    read_noise: float


@dataclass
class Simulated:
    """Simulated samples on the rendering device.

    Attributes:
        y: (n, 1, Y, X) camera light fields (photons + read noise).
        background: (n,) photons per pixel.
        volumes: (n, D, Yv, Xv) ground truth in photons per voxel (gain · density),
            the unit of every reconstruction.
        gains: (n,) photons per unit of H·density.
        families: what each sample drew.
        somata: per sample, float64 (S, 7): centre z, y, x and semi-axes rz,
            ry, rx in µm, brightness (the columns of ``SimulatedData.somata``
            after its sample index).
    """

    y: torch.Tensor
    background: torch.Tensor
    volumes: torch.Tensor
    gains: torch.Tensor
    families: list[Family]
    somata: list[np.ndarray]


class Simulator:
    """Draws :class:`Simulated` samples for a PSF bank's operator.

    Args:
        op: the light-field operator (its device renders and projects).
        ranges: the families to draw from.
        lenslets: side of each light field, lenslets.
    """

    def __init__(self, op: LightFieldOperator, ranges: SimulationRanges, lenslets: int) -> None:
        if lenslets < 1:
            raise LFMError(f"simulated light fields need at least 1 lenslet, got {lenslets}")
        self.op, self.ranges, self.lenslets = op, ranges, int(lenslets)
        bank = op.bank
        self.depths = np.asarray(bank.depths, dtype=np.float64)
        self.voxel = float(bank.voxel_size[0])
        d, yv, xv = op.volume_shape((lenslets, lenslets))
        self.shape = (d, yv, xv)
        edges = slab_edges(self.depths, self.voxel)
        self.slab_edges = edges
        k = int(min(16, max(1, math.ceil(np.diff(edges).max() / self.voxel))))
        frac = (np.arange(k) + 0.5) / k
        self.slab_z = (edges[:-1, None] + np.diff(edges)[:, None] * frac[None, :]).ravel()
        self.k = k

    # --- drawing ---------------------------------------------------------------------
    def family(self, rng: np.random.Generator) -> Family:
        """One sample's family, drawn from the ranges."""
        r = self.ranges
        extent_um3 = (
            (self.slab_edges[-1] - self.slab_edges[0])
            * (self.shape[1] * self.voxel)
            * (self.shape[2] * self.voxel)
        )
        density = _log_uniform(rng, r.density)
        return Family(
            n_somata=int(rng.poisson(density * extent_um3 * 1e-9)),
            soma_radius=float(rng.uniform(*r.soma_radius)),
            elongation_max=float(rng.uniform(*r.elongation)),
            brightness_min=float(rng.uniform(*r.brightness_min)),
            processes=int(rng.integers(r.processes[0], r.processes[1] + 1)),
            neuropil=float(rng.uniform(*r.neuropil)),
            neuropil_scale=float(rng.uniform(*r.neuropil_scale)),
            point_planes=bool(rng.random() < r.point_planes),
            photons=_log_uniform(rng, r.photons),
            background=float(rng.uniform(*r.background)),
            read_noise=float(rng.uniform(*r.read_noise)),
        )

    def draw(self, seed: int, step: int, indices) -> Simulated:
        """Samples ``indices`` of step ``step``'s global batch (see the module doc)."""
        ys, bs, vols, gains, fams, somata = [], [], [], [], [], []
        for i in indices:
            ss = np.random.SeedSequence([int(seed), int(step), int(i)])
            rng = np.random.default_rng(ss)
            fam = self.family(rng)
            density, cells = self.render(fam, rng)
            gain = self.op.peak_gain(density[None], fam.photons)
            if float(gain) == 0:  # an empty draw: no light to scale; keep it dark
                gain = torch.ones_like(gain)
            noise_seed = int(ss.generate_state(1, np.uint64)[0] % 2**63)
            y = self.op.simulate(
                density[None],
                gain=gain,
                background=fam.background,
                read_noise=fam.read_noise,
                seed=noise_seed,
            )
            ys.append(y)
            bs.append(fam.background)
            vols.append(density * gain.reshape(()))
            gains.append(gain.reshape(()))
            fams.append(fam)
            somata.append(cells)
        like = {"device": self.op.device, "dtype": self.op.dtype}
        return Simulated(
            y=torch.cat(ys),
            background=torch.tensor(bs, **like),
            volumes=torch.stack(vols),
            gains=torch.stack(gains),
            families=fams,
            somata=somata,
        )

    # --- rendering -------------------------------------------------------------------
    def render(self, fam: Family, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
        """The density (D, Yv, Xv) of one family draw (brightest soma ≈ 1) and
        its somata (S, 7): centre z, y, x, semi-axes z, y, x (µm), brightness."""
        d, yv, xv = self.shape
        v = self.voxel
        z = self.depths if fam.point_planes else self.slab_z
        k = 1 if fam.point_planes else self.k
        like = {"device": self.op.device, "dtype": self.op.dtype}
        grid = torch.zeros((len(z), yv, xv), **like)
        lo = np.array([self.depths[0], 0.0, 0.0])
        hi = np.array([self.depths[-1], yv * v, xv * v])
        n = fam.n_somata
        centres = rng.uniform(lo, hi, size=(n, 3))
        radii = fam.soma_radius * rng.uniform(0.75, 1.25, size=n)
        stretch = rng.uniform(1.0, fam.elongation_max, size=n)
        axes = np.repeat(radii[:, None], 3, axis=1) * stretch[:, None] ** (-1 / 3)
        long_axis = rng.integers(0, 3, size=n)
        axes[np.arange(n), long_axis] = radii * stretch ** (2 / 3)
        peak = rng.uniform(fam.brightness_min, 1.0, size=n)
        if n:
            _add_ellipsoids(grid, z, v, centres, axes, peak)
            if fam.processes:
                _add_processes(
                    grid, z, v, fam.point_planes, centres, axes, peak, fam.processes, rng
                )
        volume = grid.reshape(d, k, yv, xv).mean(dim=1)
        if fam.neuropil > 0:
            scale = float(peak.max()) if n else 1.0
            volume = volume + fam.neuropil * scale * self._neuropil(fam, rng, like)
        return volume, np.concatenate([centres, axes, peak[:, None]], axis=1)

    def _neuropil(self, fam: Family, rng: np.random.Generator, like: dict) -> torch.Tensor:
        """A smooth positive texture of mean 1 and ~50 % contrast, features of
        ``neuropil_scale`` µm: coarse Gaussian noise, interpolated."""
        d, yv, xv = self.shape
        s = fam.neuropil_scale
        extent = (self.slab_edges[-1] - self.slab_edges[0], yv * self.voxel, xv * self.voxel)
        coarse = [max(2, math.ceil(e / s) + 1) for e in extent]
        noise = torch.from_numpy(rng.standard_normal(coarse)).to(**like)
        field = F.interpolate(
            noise[None, None], size=(d, yv, xv), mode="trilinear", align_corners=True
        )[0, 0]
        field = (field - field.mean()) / field.std().clamp_min(1e-12)
        texture = (1 + 0.5 * field).clamp_min(0)
        return texture / texture.mean().clamp_min(1e-12)


def _log_uniform(rng: np.random.Generator, pair: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(pair[0]), math.log(pair[1]))))


def _add_ellipsoids(grid, z, v, centres, axes, peak) -> None:
    """Add soft ellipsoids to grid (Z, Yv, Xv), each within a lateral box
    around it (all planes), vectorised over the somata."""
    nz, yv, xv = grid.shape
    like = {"device": grid.device, "dtype": grid.dtype}
    reach = float(axes[:, 1:].max()) + 3 * EDGE_UM
    half = math.ceil(reach / v) + 1
    offsets = torch.arange(-half, half + 1, device=grid.device)
    c = torch.as_tensor(centres, **like)
    a = torch.as_tensor(axes, **like)
    b = torch.as_tensor(peak, **like)
    iy = torch.floor(c[:, 1] / v).long()[:, None] + offsets  # (N, box)
    ix = torch.floor(c[:, 2] / v).long()[:, None] + offsets
    zt = torch.as_tensor(np.array(z), **like)
    dz = ((zt[None, :] - c[:, :1]) / a[:, :1]) ** 2  # (N, Z)
    dy = (((iy + 0.5) * v - c[:, 1:2]) / a[:, 1:2]) ** 2
    dx = (((ix + 0.5) * v - c[:, 2:3]) / a[:, 2:3]) ** 2
    rho = torch.sqrt(dz[:, :, None, None] + dy[:, None, :, None] + dx[:, None, None, :])
    mean_r = a.mean(dim=1).reshape(-1, 1, 1, 1)
    # Logistic edge: 10 % → 90 % over about EDGE_UM.
    values = b.reshape(-1, 1, 1, 1) * torch.sigmoid(-(rho - 1) * mean_r * 4.4 / EDGE_UM)
    inside = ((iy >= 0) & (iy < yv))[:, None, :, None] & ((ix >= 0) & (ix < xv))[:, None, None, :]
    zi = torch.arange(nz, device=grid.device)[None, :, None, None]
    flat = (zi * yv + iy[:, None, :, None]) * xv + ix[:, None, None, :]
    mask = inside.expand_as(values)
    grid.view(-1).index_add_(0, flat.expand_as(values)[mask], values[mask])


def _add_processes(grid, z, v, point, centres, axes, peak, per_soma, rng) -> None:
    """Add thin tubes leaving each soma along smooth random walks (mostly
    lateral), as the voxel mean of the tube: each path sample carries the
    tube's mass over one step, splatted bilinearly in y, x and over depth
    (slab sub-planes, or a Gaussian of the tube's radius for point planes)."""
    n = len(centres)
    steps = int(PROCESS_LENGTH_UM[1] / TUBE_UM)
    m = n * per_soma
    direction = rng.normal(size=(m, 3))
    direction[:, 0] *= 0.3
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    start = np.repeat(centres, per_soma, axis=0) + direction * np.repeat(axes, per_soma, axis=0)
    turns = rng.normal(scale=0.15, size=(m, steps, 3))
    dirs = np.empty((m, steps, 3))
    current = direction.copy()
    for t in range(steps):  # smooth walk: small turns
        current = current + turns[:, t]
        current /= np.linalg.norm(current, axis=1, keepdims=True)
        dirs[:, t] = current
    points = start[:, None, :] + TUBE_UM * np.cumsum(dirs, axis=1)
    length = rng.uniform(*PROCESS_LENGTH_UM, size=m)
    alive = (np.arange(steps)[None, :] * TUBE_UM) < length[:, None]
    brightness = np.repeat(0.5 * peak, per_soma)[:, None] * np.ones((1, steps))
    pts, w = points[alive], brightness[alive]
    mass = w * math.pi * TUBE_UM**2 * TUBE_UM  # intensity · µm³ per path sample
    nz, yv, xv = grid.shape
    like = {"device": grid.device, "dtype": grid.dtype}
    p = torch.as_tensor(pts, **like)
    mass_t = torch.as_tensor(mass, **like)
    zt = torch.as_tensor(np.array(z), **like)
    if point:  # density at each plane: a Gaussian of the tube's radius in z
        wz = torch.exp(-0.5 * ((zt[None, :] - p[:, :1]) / TUBE_UM) ** 2) / (
            math.sqrt(2 * math.pi) * TUBE_UM
        )
    else:  # slab sub-planes of thickness dz: the nearest takes the mass
        dz = float(zt[1] - zt[0]) if nz > 1 else 1.0
        nearest = torch.argmin((zt[None, :] - p[:, :1]).abs(), dim=1)
        inside = (p[:, 0] >= zt[0] - dz / 2) & (p[:, 0] <= zt[-1] + dz / 2)
        wz = torch.zeros((len(p), nz), **like)
        wz[torch.arange(len(p)), nearest] = inside.to(wz.dtype) / dz
    fy, fx = p[:, 1] / v - 0.5, p[:, 2] / v - 0.5
    y0, x0 = torch.floor(fy).long(), torch.floor(fx).long()
    ty, tx = fy - y0, fx - x0
    flat_grid = grid.view(-1)
    for oy, wy in ((0, 1 - ty), (1, ty)):
        for ox, wx in ((0, 1 - tx), (1, tx)):
            yy, xx = y0 + oy, x0 + ox
            ok = (yy >= 0) & (yy < yv) & (xx >= 0) & (xx < xv)
            weight = (mass_t * wy * wx / v**2)[:, None] * wz  # (P, Z) density
            idx = (torch.arange(nz, device=grid.device)[None, :] * yv + yy[:, None]) * xv + xx[
                :, None
            ]
            keep = ok[:, None].expand_as(weight)
            flat_grid.index_add_(0, idx[keep], weight[keep])


VALIDATION_STEP = 2**32 - 1  # the "step" of a fixed validation draw: no training step reaches it


def simulated_dataset(sim: Simulator, n: int, seed: int):
    """A fixed set of ``n`` simulated samples (the validation draw of a run
    with seed ``seed``) as a :class:`~lfm_recon.data.SimulatedData`, and
    its per-sample backgrounds (n,) in photons per pixel."""
    from .data import SimulatedData

    drawn = sim.draw(seed, VALIDATION_STEP, range(n))
    gains = drawn.gains.double().cpu().numpy()
    volumes = (drawn.volumes.double().cpu().numpy() / gains.reshape(-1, 1, 1, 1)).astype(np.float32)
    somata = [
        np.concatenate([np.full((len(s), 1), i), s], axis=1) for i, s in enumerate(drawn.somata)
    ]
    bank = sim.op.bank
    data = SimulatedData(
        volumes=volumes,
        lightfields=drawn.y.float().cpu().numpy(),
        unlabeled=np.zeros((0, *drawn.y.shape[1:]), np.float32),
        gains=gains,
        somata=np.concatenate(somata).reshape(-1, 8),
        psf_sha256=bank.sha256,
        microscope=bank.microscope,
        depths=np.asarray(bank.depths, dtype=np.float64).copy(),
        voxel_size=sim.voxel,
        simulation={"simulator": sim.ranges.to_dict(), "seed": seed, "n_paired": n},
    )
    return data, drawn.background.double().cpu().numpy()
