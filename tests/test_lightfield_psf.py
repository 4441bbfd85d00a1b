"""Physical properties of the light-field PSF and of the generated bank."""

import numpy as np
import pytest
import torch

from lfm_recon import LFMError, generate_psf
from lfm_recon.psf.lightfield import radial_profiles, sensor_images


def _images(m, depth, points, nip_radius=4, **kw):
    profile = radial_profiles(m, np.array([depth]), 2.5 * (nip_radius + 2) * m.mla_pitch)[0]
    return sensor_images(
        m, profile, np.asarray(points), nip_radius=nip_radius, oversampling=4, **kw
    ).numpy()


def test_moving_a_point_by_one_lenslet_moves_its_image_by_nnum_pixels(reference):
    m = reference
    p = m.lenslet_pitch_object
    a, b = _images(m, 20.0, [[1.1, -2.3], [1.1, -2.3 + p]])
    n = m.nnum
    # Compare lenslets −2…2 around each point (well inside both windows).
    c = a.shape[0] // 2
    rows = slice(c - 2 * n - n // 2, c + 2 * n + n // 2 + 1)
    cols_a = slice(c - 2 * n - n // 2, c + 2 * n + n // 2 + 1)
    cols_b = slice(cols_a.start + n, cols_a.stop + n)
    assert np.abs(a[rows, cols_a] - b[rows, cols_b]).max() < 2e-3 * a.max()
    # ... and not by any other amount
    cols_wrong = slice(cols_b.start + 1, cols_b.stop + 1)
    assert np.abs(a[rows, cols_a] - b[rows, cols_wrong]).max() > 0.1 * a.max()


@pytest.mark.parametrize("z", [-30.0, 30.0])
def test_z_sign_matches_geometric_optics(reference, z):
    """z > 0 (farther from the objective) images in front of the MLA, so the
    beam diverges at the MLA and each lenslet's spot moves *away* from the
    point; for z < 0 it converges and the spots move *towards* it. Paraxially
    the spot in lenslet x_l sits f·x_l/d from its centre, d = M²|z|/n."""
    m = reference
    img = _images(m, z, [[0.0, 0.0]])[0]
    n, c = m.nnum, img.shape[0] // 2
    d = m.magnification**2 * abs(z) / m.medium_index
    for j in (-1, 1):
        block = img[c - n // 2 : c + n // 2 + 1, c + j * n - n // 2 : c + j * n + n // 2 + 1]
        offsets = np.arange(n) - n // 2  # pixels from the lenslet centre
        centroid = (block.sum(0) * offsets).sum() / block.sum() * m.pixel_size
        predicted = np.sign(z) * m.mla_focal_length * j * m.mla_pitch / d
        assert np.sign(centroid) == np.sign(predicted)
        assert abs(centroid - predicted) < 0.3 * abs(predicted)


def test_in_focus_point_lights_its_own_lenslet(reference):
    img = _images(reference, 0.0, [[0.0, 0.0]], nip_radius=2)[0]
    n, c = reference.nnum, img.shape[0] // 2
    own = img[c - n // 2 : c + n // 2 + 1, c - n // 2 : c + n // 2 + 1].sum()
    assert own > 0.95 * img.sum()


def test_single_precision_matches_double(reference):
    single = _images(reference, -25.0, [[-2.0, 1.0]], nip_radius=3, precision="single")
    double = _images(reference, -25.0, [[-2.0, 1.0]], nip_radius=3, precision="double")
    assert np.abs(single - double).max() < 1e-5 * double.max()


def test_default_oversampling_is_converged(reference):
    """Acceptance: every kernel at the default oversampling is within
    L1 ≤ 0.02 of the same kernel at twice it (sum-1 kernels), reference
    optics, z ∈ {−30, 0, 30} µm, all 25 sub-positions of s = 5."""
    depths = [-30.0, 0.0, 30.0]
    base = generate_psf(reference, depths, 5, support_radius=3)
    fine = generate_psf(
        reference, depths, 5, support_radius=3, oversampling=2 * base.generation["oversampling"]
    )
    l1 = np.abs(base.kernels.astype(np.float64) - fine.kernels).sum(axis=(-1, -2))
    assert l1.max() <= 0.02
    # Sensor-pixel sampling (what some tools do) is far from converged.
    coarse = generate_psf(reference, depths, 5, support_radius=3, oversampling=1)
    assert np.abs(coarse.kernels.astype(np.float64) - fine.kernels).sum(axis=(-1, -2)).max() > 0.5


def test_bank_kernels_are_normalised_supported_and_keep_their_energy(small_bank):
    b = small_bank
    s, n = b.voxels_per_lenslet, b.nnum
    assert b.kernels.shape == (3, s, s, b.kernel_size, b.kernel_size)
    assert b.kernel_size == n * (2 * b.radii.max() + 1)
    np.testing.assert_allclose(b.kernels.sum(axis=(-1, -2)), 1.0, atol=1e-5)
    assert b.kernels.min() >= 0
    assert np.all(b.captured_energy >= b.generation["energy"])
    for d, r in enumerate(b.radii):
        inner = np.zeros((b.kernel_size, b.kernel_size), dtype=bool)
        c, h = b.kernel_size // 2, n * r + n // 2
        inner[c - h : c + h + 1, c - h : c + h + 1] = True
        assert b.kernels[d][..., ~inner].sum() == 0.0
    # Defocus widens the support; focus needs the least.
    assert b.radii[1] <= b.radii[0] and b.radii[1] <= b.radii[2]


def test_higher_energy_needs_no_smaller_support(reference):
    lo = generate_psf(reference, [-30.0, 0.0, 30.0], 1, energy=0.98)
    hi = generate_psf(reference, [-30.0, 0.0, 30.0], 1, energy=0.995)
    assert np.all(hi.radii >= lo.radii) and np.any(hi.radii > lo.radii)
    assert np.all(hi.captured_energy >= 0.995)


def test_high_energy_targets_grow_the_support_and_terminate(reference):
    """The hard pupil's Airy tail makes 99.9 % need a wide support in focus."""
    bank = generate_psf(reference, [0.0], 1, energy=0.999)
    assert bank.radii[0] >= 8 and bank.captured_energy[0] >= 0.999


def test_mirror_and_transpose_symmetry_of_brute_force_bank(reference):
    """Computing all s² positions directly (no symmetry used) gives kernels
    related by the square lenslet's mirror and x↔y symmetries, and equal to
    the bank built from the symmetry-distinct positions."""
    depths = [-15.0, 10.0]
    brute = generate_psf(reference, depths, 4, support_radius=2, use_symmetry=False)
    k = brute.kernels
    tol = 1e-5 * k.max()
    assert np.abs(k[:, ::-1, :] - k[..., ::-1, :]).max() < tol  # y mirror
    assert np.abs(k[:, :, ::-1] - k[..., ::-1]).max() < tol  # x mirror
    assert np.abs(k.transpose(0, 2, 1, 4, 3) - k).max() < tol  # x↔y
    fast = generate_psf(reference, depths, 4, support_radius=2)
    assert np.abs(fast.kernels - k).max() < tol


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(dict(depths=[]), "non-empty", id="empty-depths"),
        pytest.param(dict(depths=[10.0, 0.0]), "strictly increasing", id="unsorted"),
        pytest.param(dict(depths=[0.0, 0.0]), "strictly increasing", id="repeated"),
        pytest.param(dict(depths=[0.0, np.nan]), "NaN", id="nan-depth"),
        pytest.param(dict(depths=[[0.0]]), "1-D", id="2d-depths"),
        pytest.param(dict(voxels_per_lenslet=16), "1 to nnum = 15", id="s>nnum"),
        pytest.param(dict(voxels_per_lenslet=0), "1 to nnum", id="s=0"),
        pytest.param(dict(oversampling=0), "oversampling", id="oversampling=0"),
        pytest.param(dict(energy=1.0), "energy", id="energy=1"),
        pytest.param(dict(support_radius=-1), "support_radius", id="negative-radius"),
        pytest.param(dict(apodization="gauss"), "apodization", id="apodization"),
    ],
)
def test_bad_generation_input_is_a_clear_error(reference, kwargs, message):
    args = dict(microscope=reference, depths=[0.0], voxels_per_lenslet=3) | kwargs
    with pytest.raises(LFMError, match=message):
        generate_psf(**args)


@pytest.mark.parametrize("z", [-50.0, 30.0])
def test_kernels_keep_the_sensor_orientation(reference, z):
    """No image inversion (DESIGN): the light of a defocused point is centred
    on the point's own lateral position, (a+½)/s − ½ of the pitch from its
    lenslet's centre, on the same side."""
    bank = generate_psf(reference, [z], 5)
    k = bank.kernels[0].astype(np.float64)
    idx = np.arange(bank.kernel_size) - bank.kernel_size // 2
    centroid_y = (k.sum(-1) * idx).sum(-1)  # (s, s) pixels
    centroid_x = (k.sum(-2) * idx).sum(-1)
    offset = ((np.arange(5) + 0.5) / 5 - 0.5) * reference.nnum  # pixels
    np.testing.assert_allclose(centroid_y, np.broadcast_to(offset[:, None], (5, 5)), atol=0.5)
    np.testing.assert_allclose(centroid_x, np.broadcast_to(offset[None, :], (5, 5)), atol=0.5)


def test_even_nnum_and_even_s_are_symmetric():
    """nnum = 16 puts the lenslet centre on a pixel corner; the symmetric
    construction must still match a brute-force computation."""
    from lfm_recon import Microscope

    m = Microscope(
        magnification=40,
        numerical_aperture=0.8,
        medium_index=1.33,
        wavelength=0.525,
        mla_pitch=128.0,
        mla_focal_length=3200.0,
        pixel_size=8.0,
    )
    brute = generate_psf(m, [-6.0, 4.0], 2, support_radius=1, use_symmetry=False)
    fast = generate_psf(m, [-6.0, 4.0], 2, support_radius=1)
    assert m.nnum == 16 and brute.kernel_size == 48
    assert np.abs(fast.kernels - brute.kernels).max() < 1e-5 * brute.kernels.max()
    np.testing.assert_allclose(brute.kernels.sum(axis=(-1, -2)), 1.0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(reference):
    cpu = generate_psf(reference, [-20.0, 0.0, 20.0], 3)
    gpu = generate_psf(reference, [-20.0, 0.0, 20.0], 3, device="cuda")
    assert np.array_equal(cpu.radii, gpu.radii)
    assert np.abs(cpu.kernels - gpu.kernels).max() < 1e-4 * cpu.kernels.max()


def test_unavailable_device_is_a_clear_error(reference):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(LFMError, match="CUDA is not available"):
        generate_psf(reference, [0.0], 1, device="cuda")
    with pytest.raises(LFMError, match="not a torch device"):
        generate_psf(reference, [0.0], 1, device="gpu0")
