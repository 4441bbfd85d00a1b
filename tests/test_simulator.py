"""Randomised simulation: ranges respected, rendering in µm, light fields
from the camera model, and draws that depend on (seed, step, sample) alone,
so 1 and 2 processes (and a resumed run) draw the same global batch."""

import math

import numpy as np
import pytest
import torch

from lfm_recon import LFMError, LightFieldOperator
from lfm_recon.simulator import SimulationRanges, Simulator
from lfm_recon.training import TrainConfig


@pytest.fixture(scope="module")
def simulator(small_bank):
    return Simulator(LightFieldOperator(small_bank), SimulationRanges(), lenslets=6)


def test_families_respect_their_ranges(simulator):
    r = SimulationRanges(
        density=(2000.0, 8000.0),
        soma_radius=(3.0, 4.0),
        processes=(1, 2),
        neuropil=(0.01, 0.02),
        photons=(50.0, 60.0),
        background=(1.0, 2.0),
        read_noise=(0.5, 0.6),
        point_planes=0.25,
    )
    sim = Simulator(simulator.op, r, lenslets=6)
    rng = np.random.default_rng(0)
    fams = [sim.family(rng) for _ in range(400)]
    for name in ("soma_radius", "neuropil", "photons", "background", "read_noise"):
        values = np.array([getattr(f, name) for f in fams])
        lo, hi = getattr(r, name)
        assert values.min() >= lo and values.max() <= hi, name
        assert values.max() - values.min() > 0.8 * (hi - lo), name  # the range is used
    assert {f.processes for f in fams} == {1, 2}
    assert abs(np.mean([f.point_planes for f in fams]) - 0.25) < 0.07
    # Photons are log-uniform: the median is the geometric mean of the range.
    assert np.median([f.photons for f in fams]) == pytest.approx(math.sqrt(50 * 60), rel=0.02)


@pytest.mark.parametrize(
    "axes",
    [pytest.param((4.0, 4.0, 4.0), id="round"), pytest.param((3.0, 5.0, 4.0), id="elongated")],
)
def test_a_rendered_soma_sits_where_and_as_large_as_drawn(simulator, axes):
    """A soma at a known place, slab planes: its brightness-weighted centre
    and its integral (µm³ × brightness) match the drawn centre and 4/3 π abc."""
    from lfm_recon.simulator import _add_ellipsoids

    d, yv, xv = simulator.shape
    v, k = simulator.voxel, simulator.k
    grid = torch.zeros((d * k, yv, xv), dtype=torch.float64)
    centre = np.array([[1.3, 0.52 * yv * v, 0.47 * xv * v]])
    _add_ellipsoids(grid, simulator.slab_z, v, centre, np.array([axes]), np.array([0.8]))
    # Brute force: the logistic-edged ellipsoid evaluated at every sub-plane and voxel centre.
    zs, ys, xs = np.meshgrid(
        simulator.slab_z, (np.arange(yv) + 0.5) * v, (np.arange(xv) + 0.5) * v, indexing="ij"
    )
    rho = np.sqrt(
        ((zs - 1.3) / axes[0]) ** 2
        + ((ys - centre[0, 1]) / axes[1]) ** 2
        + ((xs - centre[0, 2]) / axes[2]) ** 2
    )
    brute = 0.8 / (1 + np.exp((rho - 1) * np.mean(axes) * 4.4 / 0.7))
    np.testing.assert_allclose(grid.numpy(), brute, rtol=0, atol=1e-5)
    vol = grid.reshape(d, k, yv, xv).mean(dim=1).numpy()
    dz = float(np.diff(simulator.slab_edges).mean())
    # The integral is a Riemann sum over sub-planes 2.5 µm apart: within 15 % of 4/3 π abc.
    assert vol.sum() * v * v * dz == pytest.approx(4 / 3 * math.pi * np.prod(axes) * 0.8, rel=0.15)
    yy, xx = (np.arange(yv) + 0.5) * v, (np.arange(xv) + 0.5) * v
    assert (vol.sum(axis=(0, 2)) @ yy) / vol.sum() == pytest.approx(centre[0, 1], abs=0.05 * v)
    assert (vol.sum(axis=(0, 1)) @ xx) / vol.sum() == pytest.approx(centre[0, 2], abs=0.05 * v)
    zz = np.asarray(simulator.depths)
    assert (vol.sum(axis=(1, 2)) @ zz) / vol.sum() == pytest.approx(1.3, abs=0.1 * dz)


def test_light_fields_follow_the_camera_model(simulator):
    """y ≈ Poisson(g·H x + b): with the target in photons (g·x), the
    standardised residual has mean ~0 and spread ~1 (read noise included)."""
    drawn = simulator.draw(3, 0, range(4))
    op = simulator.op
    for i, fam in enumerate(drawn.families):
        rate = op(drawn.volumes[i : i + 1]) + fam.background
        lit = rate > 2  # standardised Poisson residuals are near-normal there
        z = ((drawn.y[i : i + 1] - rate) / torch.sqrt(rate + fam.read_noise**2))[lit]
        assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1
        assert float(rate.max() - fam.background) == pytest.approx(fam.photons, rel=1e-4)


def test_draws_depend_on_seed_step_and_sample_only(simulator):
    """A step's four samples drawn at once = two processes drawing two each."""
    whole = simulator.draw(7, 12, range(4))
    halves = [simulator.draw(7, 12, range(0, 2)), simulator.draw(7, 12, range(2, 4))]
    torch.testing.assert_close(torch.cat([h.y for h in halves]), whole.y, rtol=0, atol=0)
    torch.testing.assert_close(
        torch.cat([h.volumes for h in halves]), whole.volumes, rtol=0, atol=0
    )
    other = simulator.draw(7, 13, range(4))
    assert not torch.equal(other.y, whole.y)


def test_batches_of_two_processes_make_the_batch_of_one(tmp_path, small_bank):
    """BatchSource: simulated samples, fixed patches and the pixel hold-out
    of rank 0 and rank 1 (world 2) together equal world 1's batch."""
    from lfm_recon.data import simulate_dataset
    from lfm_recon.training.batches import BatchSource
    from lfm_recon.training.data import TrainingData
    from lfm_recon.training.distributed import Processes

    small_bank.save(tmp_path / "bank.h5")
    simulate_dataset(small_bank, 4, 4, lenslets=(6, 6), seed=1).save(tmp_path / "d.h5")
    simulate_dataset(small_bank, 2, 0, lenslets=(6, 6), seed=2).save(tmp_path / "v.h5")
    cfg = TrainConfig.from_dict(
        {
            "psf": str(tmp_path / "bank.h5"),
            "data": {
                "train": str(tmp_path / "d.h5"),
                "validation": str(tmp_path / "v.h5"),
                "patch_lenslets": 0,
                "batch_size": 2,
                "unlabeled_batch_size": 2,
                "simulate": {"batch_size": 2},
            },
            "loss": {"resynthesis_holdout": 0.3},
        }
    )
    data = TrainingData(cfg.data, small_bank, cfg.seed)
    source = BatchSource(cfg, data, small_bank, LightFieldOperator(small_bank))
    cpu = torch.device("cpu")
    one = source.batch(5, Processes(0, 1, cpu, False))
    ranks = [source.batch(5, Processes(r, 2, cpu, False)) for r in (0, 1)]
    # world 1 order: [labelled 2, simulated 2, unlabeled 2]; each rank: [1, 1, 1].
    order = [0, 2, 4, 1, 3, 5]
    for name in ("y", "background", "scale", "lf_weight", "data_weight"):
        mine = torch.cat([getattr(b, name) for b in ranks])
        torch.testing.assert_close(mine, getattr(one, name)[order], rtol=0, atol=0)
    assert one.n_labelled == 4 and all(b.n_labelled == 2 for b in ranks)


def _reuse_source(tmp_path, bank, reuse, rl_stop="fixed"):
    """A BatchSource of simulated samples only (with a pixel hold-out), the
    draws serving ``reuse`` steps, and a network whose start it computes."""
    from lfm_recon.training.batches import BatchSource
    from lfm_recon.training.data import TrainingData
    from lfm_recon.unfolded import UnfoldedISTA

    bank.save(tmp_path / "bank.h5")
    cfg = TrainConfig.from_dict(
        {
            "psf": str(tmp_path / "bank.h5"),
            "data": {"patch_lenslets": 6, "simulate": {"batch_size": 2, "reuse": reuse}},
            "loss": {"resynthesis": 1.0, "resynthesis_holdout": 0.3},
        }
    )
    op = LightFieldOperator(bank)
    net = UnfoldedISTA(op, 2, data_term="poisson", rl_start=6, rl_stop=rl_stop)

    def initial(y, background, scale, weight):
        return net.initial(y, background, scale=scale, weight=weight)

    data = TrainingData(cfg.data, bank, cfg.seed)
    return (lambda: BatchSource(cfg, data, bank, op)), initial


def test_a_reused_draw_is_the_draw_under_a_symmetry_of_the_bank(tmp_path, small_bank):
    """simulate.reuse = 4: steps 4–7 see step 4's draw, step 4 as drawn and
    steps 5–7 each under another flip/transpose that the bank allows, with
    light field, volume, hold-out and start transformed together. The
    transformed start is the network's own start of the transformed light
    field (H commutes with the symmetry), so nothing is out of step."""
    from lfm_recon.training.augment import augment
    from lfm_recon.training.distributed import Processes

    new_source, initial = _reuse_source(tmp_path, small_bank, 4)
    source, cpu = new_source(), Processes(0, 1, torch.device("cpu"), False)
    assert len(source.sampler.codes) == 8  # the bank has all eight symmetries
    drawn = source.simulator.draw(0, 4, range(2))
    batches = {k: source.batch(k, cpu, initial) for k in range(4, 8)}
    torch.testing.assert_close(batches[4].y, drawn.y, rtol=0, atol=0)
    codes = [source._repeat_code(4, k) for k in (1, 2, 3)]
    assert 0 not in codes and len(set(codes)) == 3
    for k, code in zip((5, 6, 7), codes, strict=True):
        b = batches[k]
        for name in ("y", "target", "data_weight", "lf_weight", "start"):
            want = augment(getattr(batches[4], name), code)
            torch.testing.assert_close(getattr(b, name), want, rtol=0, atol=0)
        torch.testing.assert_close(b.scale, batches[4].scale, rtol=0, atol=0)
        own = initial(b.y, b.background, b.scale, b.data_weight)
        torch.testing.assert_close(b.start, own, rtol=1e-4, atol=1e-6 * float(own.max()))
    assert not torch.equal(source.batch(8, cpu, initial).y, batches[4].y)  # a new draw


def test_reused_draws_resume_and_split_over_processes_exactly(tmp_path, small_bank):
    """A resumed run (a fresh source at step 6) and two processes draw, with
    reuse, what one uninterrupted process draws; reuse = 1 draws every step."""
    from lfm_recon.training.distributed import Processes

    new_source, initial = _reuse_source(tmp_path, small_bank, 3, rl_stop="holdout")
    cpu = torch.device("cpu")
    one = Processes(0, 1, cpu, False)
    source = new_source()
    steps = {k: source.batch(k, one, initial) for k in range(3, 7)}
    resumed = new_source().batch(5, one, initial)
    for name in ("y", "target", "data_weight", "start"):
        torch.testing.assert_close(getattr(resumed, name), getattr(steps[5], name), rtol=0, atol=0)
    ranks = [new_source().batch(5, Processes(r, 2, cpu, False), initial) for r in (0, 1)]
    for name in ("y", "target", "data_weight", "start"):
        mine = torch.cat([getattr(b, name) for b in ranks])
        torch.testing.assert_close(mine, getattr(steps[5], name), rtol=1e-6, atol=1e-7)
    fresh, _ = _reuse_source(tmp_path, small_bank, 1)
    plain = fresh()
    for k in (3, 4):
        drawn = plain.simulator.draw(0, k, range(2))
        torch.testing.assert_close(plain.batch(k, one).y, drawn.y, rtol=0, atol=0)


def test_a_given_start_gives_the_networks_own_result(small_bank):
    """forward(start=initial(...)) = forward(): the start is the network's own."""
    from lfm_recon.unfolded import UnfoldedISTA

    op = LightFieldOperator(small_bank)
    sim = Simulator(op, SimulationRanges(), lenslets=6)
    y = sim.draw(3, 0, range(2)).y
    net = UnfoldedISTA(op, 2, data_term="poisson", rl_start=8, rl_stop="holdout", prior="cnn")
    torch.manual_seed(0)
    for p in net.priors.parameters():
        p.data.normal_(0, 0.05)
    start = net.initial(y, 2.0)
    torch.testing.assert_close(net(y, 2.0, start=start), net(y, 2.0), rtol=0, atol=0)
    with pytest.raises(LFMError, match="start has shape"):
        net(y, 2.0, start=start[:, :, :-3])


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param({"densty": [1, 2]}, r"unknown key\(s\) \['densty'\]", id="unknown-key"),
        pytest.param({"photons": [300.0, 30.0]}, r"0 ≤ low ≤ high", id="reversed-range"),
        pytest.param({"photons": 300}, r"must be a pair", id="not-a-pair"),
        pytest.param({"point_planes": 1.5}, r"probability", id="probability"),
        pytest.param({"processes": [0.5, 2]}, r"whole numbers", id="fractional-processes"),
        pytest.param({"reuse": 0}, r"reuse must be ≥ 1", id="reuse-zero"),
    ],
)
def test_bad_simulation_tables_are_named(table, message):
    with pytest.raises(LFMError, match=message):
        TrainConfig.from_dict({"psf": "b.h5", "data": {"simulate": table}})
