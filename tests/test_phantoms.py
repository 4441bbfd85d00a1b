"""Synthetic neuron volumes: reproducible, in micrometres, as specified."""

import numpy as np
import pytest

from lfm_recon import LFMError
from lfm_recon.phantoms import neurons


def test_same_seed_same_phantom_other_seed_other_phantom():
    a = neurons(np.linspace(-20, 20, 9), (40, 40), 1.5, n_neurons=5, seed=3)
    b = neurons(np.linspace(-20, 20, 9), (40, 40), 1.5, n_neurons=5, seed=3)
    c = neurons(np.linspace(-20, 20, 9), (40, 40), 1.5, n_neurons=5, seed=4)
    assert np.array_equal(a.volume, b.volume) and not np.array_equal(a.volume, c.volume)
    assert a.volume.dtype == np.float32 and a.volume.min() >= 0


def test_a_soma_has_the_volume_and_peak_of_its_ellipsoid():
    """Integrated intensity = brightness × 4/3·π·rz·ry·rx (the soft edge is
    symmetric about the surface), measured on a fine grid in µm."""
    depths = np.arange(-12, 12.01, 0.25)
    p = neurons(depths, (120, 120), 0.25, n_neurons=1, radius=(4.0, 6.0), margin=12.0, seed=1)
    (rz, ry, rx), b = p.radii[0], p.brightness[0]
    integral = p.volume.sum() * 0.25**3
    assert integral == pytest.approx(b * 4 / 3 * np.pi * rz * ry * rx, rel=0.03)
    assert p.volume.max() == pytest.approx(b, rel=0.02)
    # The intensity centroid is where the table says (µm from the top-left corner).
    v = p.volume.astype(np.float64) / p.volume.sum()
    lateral = (np.arange(120) + 0.5) * 0.25
    centroid = [
        (v.sum((1, 2)) * depths).sum(),
        (v.sum((0, 2)) * lateral).sum(),
        (v.sum((0, 1)) * lateral).sum(),
    ]
    np.testing.assert_allclose(centroid, p.centres[0], atol=0.05)


def test_coarse_depth_planes_keep_every_soma():
    """With planes 20 µm apart a 4 µm soma between them must still show, with
    the integral of its density (plane = slab mean)."""
    depths = np.array([-20.0, 0.0, 20.0])
    p = neurons(depths, (40, 40), 0.5, n_neurons=1, radius=(4.0, 4.0), margin=8.0, seed=5)
    (rz, ry, rx), b = p.radii[0], p.brightness[0]
    integral = p.volume.sum() * 20.0 * 0.5**2
    assert integral == pytest.approx(b * 4 / 3 * np.pi * rz * ry * rx, rel=0.05)


def test_sizes_follow_the_voxel_size():
    """The same seed at half the voxel size draws the same somata in µm."""
    depths = np.linspace(-10, 10, 11)
    coarse = neurons(depths, (40, 40), 1.0, n_neurons=3, margin=8.0, seed=7)
    fine = neurons(depths, (80, 80), 0.5, n_neurons=3, margin=8.0, seed=7)
    np.testing.assert_allclose(coarse.centres, fine.centres)
    np.testing.assert_allclose(coarse.volume.sum() * 1.0, fine.volume.sum() * 0.25, rtol=0.05)


def test_neuropil_and_processes():
    depths = np.linspace(-20, 20, 9)
    plain = neurons(depths, (60, 60), 1.0, n_neurons=4, seed=2)
    rich = neurons(depths, (60, 60), 1.0, n_neurons=4, seed=2, neuropil=0.05)
    background = rich.volume - plain.volume
    assert background.mean() == pytest.approx(0.05 * plain.brightness.max(), rel=0.05)
    assert background.std() > 0.2 * background.mean()  # a texture, not a constant
    dim = neurons(depths, (60, 60), 1.0, n_neurons=4, seed=2, brightness=(0.1, 0.2), neuropil=0.05)
    dim_plain = neurons(depths, (60, 60), 1.0, n_neurons=4, seed=2, brightness=(0.1, 0.2))
    assert (dim.volume - dim_plain.volume).mean() == pytest.approx(
        0.05 * dim_plain.brightness.max(), rel=0.05
    )
    tubes = neurons(depths, (60, 60), 1.0, n_neurons=4, seed=2, processes=2)
    extra = tubes.volume - plain.volume
    assert extra.sum() > 0 and extra.max() <= 0.5 * plain.brightness.max() + 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(lateral_shape=(0, 10)), id="empty"),
        pytest.param(dict(radius=(5.0, 2.0)), id="radius-range"),
        pytest.param(dict(margin=100.0), id="margin"),
        pytest.param(dict(depths=[1.0, 0.0]), id="descending-depths"),
    ],
)
def test_bad_phantom_arguments(kwargs):
    args = dict(depths=[0.0, 1.0], lateral_shape=(10, 10), voxel_size=1.0) | kwargs
    with pytest.raises(LFMError):
        neurons(**args)
