"""Quality metrics against independent references: closed forms, numpy/scipy,
scikit-image's SSIM, and detection cases whose counts are known by construction."""

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from lfm_recon import LFMError, LightFieldOperator
from lfm_recon.metrics import (
    DetectionScore,
    _ssim_map,
    detection_scores,
    find_peaks,
    pearson,
    psnr,
    reprojection_residual,
    scale_to,
    ssim,
)

DEPTHS = np.linspace(-50.0, 50.0, 11)  # 10 µm planes
LATERAL = 1.5  # µm: anisotropic voxels, as in a 5-voxel-per-lenslet bank
SHAPE = (11, 40, 40)


def _volume(rng, shape=(11, 16, 16), batch=None):
    full = shape if batch is None else (batch, *shape)
    return rng.random(full) + 0.1


def _blobs(centres, brightness=None, sigma=(6.0, 2.0), shape=SHAPE):
    """Sum of anisotropic Gaussians at (z, y, x) µm centres on the voxel grid."""
    z = DEPTHS[:, None, None]
    y = ((np.arange(shape[1]) + 0.5) * LATERAL)[None, :, None]
    x = ((np.arange(shape[2]) + 0.5) * LATERAL)[None, None, :]
    vol = np.zeros(shape)
    brightness = np.ones(len(centres)) if brightness is None else brightness
    for (cz, cy, cx), b in zip(centres, brightness, strict=True):
        r2 = ((z - cz) / sigma[0]) ** 2 + ((y - cy) ** 2 + (x - cx) ** 2) / sigma[1] ** 2
        vol += b * np.exp(-0.5 * r2)
    return vol


def _spikes(voxels, values):
    """Single bright voxels; their peaks sit exactly at the voxel centres."""
    vol = np.zeros(SHAPE)
    for v, val in zip(voxels, values, strict=True):
        vol[v] = val
    return vol


def _um(d, p, q):
    return np.array([DEPTHS[d], (p + 0.5) * LATERAL, (q + 0.5) * LATERAL])


# Five well separated somata, off the voxel grid.
CENTRES = np.array(
    [
        [-40.0, 10.0, 12.0],
        [-3.0, 30.0, 8.0],
        [12.0, 14.0, 40.0],
        [31.0, 45.0, 25.0],
        [44.0, 20.0, 50.0],
    ]
)
BRIGHTNESS = np.array([1.0, 0.8, 0.6, 0.9, 0.7])


# --- scale_to, psnr ----------------------------------------------------------------


def test_scale_to_is_least_squares():
    rng = np.random.default_rng(0)
    x, gt = _volume(rng), _volume(rng)
    a = np.linalg.lstsq(x.reshape(-1, 1), gt.ravel(), rcond=None)[0][0]
    np.testing.assert_allclose(scale_to(x, gt), a * x, rtol=1e-12)
    np.testing.assert_array_equal(scale_to(np.zeros_like(x), gt), 0.0)


def test_psnr_analytic():
    rng = np.random.default_rng(1)
    gt = _volume(rng)
    e = 0.03
    signs = np.where(np.indices(gt.shape).sum(axis=0) % 2 == 0, 1.0, -1.0)  # ±e: MSE = e²
    expected = 10 * np.log10(gt.max() ** 2 / e**2)
    assert psnr(gt + e * signs, gt, scale=False) == pytest.approx(expected, abs=1e-9)


def test_psnr_scale_invariance():
    rng = np.random.default_rng(2)
    gt = _volume(rng)
    x = gt + 0.1 * rng.standard_normal(gt.shape)
    assert psnr(7 * x, gt) == pytest.approx(psnr(x, gt), abs=1e-9)
    assert psnr(7 * x, gt, scale=False) < psnr(x, gt, scale=False) - 10


@pytest.mark.parametrize("scale", [pytest.param(True, id="scaled"), pytest.param(False, id="raw")])
def test_psnr_identical_is_inf(scale):
    gt = _volume(np.random.default_rng(3))
    assert psnr(gt, gt, scale=scale) == np.inf


def test_psnr_batch_matches_loop_and_torch():
    rng = np.random.default_rng(4)
    gt = _volume(rng, batch=3)
    x = gt + 0.1 * rng.standard_normal(gt.shape)
    batch = psnr(x, gt)
    assert isinstance(batch, np.ndarray) and batch.dtype == np.float64 and batch.shape == (3,)
    single = [psnr(a, b) for a, b in zip(x, gt, strict=True)]
    assert all(isinstance(v, float) for v in single)
    np.testing.assert_allclose(batch, single, rtol=1e-12)
    tensors = psnr(torch.from_numpy(x).float(), torch.from_numpy(gt).float())
    np.testing.assert_allclose(tensors, batch, rtol=1e-5)


# --- ssim ----------------------------------------------------------------------------


def test_ssim_identical_is_one():
    gt = _volume(np.random.default_rng(5))
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-12)


def test_ssim_map_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(6)
    # (16, 24, 24): room for an interior outside skimage's 11-voxel window
    gt = ndimage.gaussian_filter(rng.random((16, 24, 24)), 1.5)
    x = gt + 0.1 * rng.standard_normal(gt.shape)
    span = float(gt.max() - gt.min())
    reference, full = metrics.structural_similarity(
        x,
        gt,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=span,
        full=True,
    )
    ours = _ssim_map(x, gt, 1.5, span)
    # same filter and border mode, so the whole map agrees; skimage's scalar is
    # the mean over the interior (it crops the 5-voxel window radius)
    np.testing.assert_allclose(ours, full, atol=1e-6)
    inner = (slice(5, -5),) * 3
    assert ours[inner].mean() == pytest.approx(reference, abs=1e-6)


@pytest.mark.parametrize(
    "scale",
    [
        pytest.param(False, id="raw"),
        pytest.param(True, id="scaled"),
    ],
)
def test_ssim_decreases_with_noise(scale):
    rng = np.random.default_rng(7)
    # dense (every voxel bright): on a sparse volume the least-squares scale
    # shrinks a very noisy x towards 0, which SSIM rewards (see ssim's docstring)
    gt = _blobs(CENTRES, BRIGHTNESS) + 0.3
    noise = rng.standard_normal(gt.shape)
    values = [ssim(gt + level * noise, gt, scale=scale) for level in (0.01, 0.05, 0.2)]
    assert 1 > values[0] > values[1] > values[2]


def test_ssim_batch_matches_loop():
    rng = np.random.default_rng(8)
    gt = _volume(rng, batch=2)
    x = gt + 0.2 * rng.standard_normal(gt.shape)
    single = [ssim(a, b) for a, b in zip(x, gt, strict=True)]
    np.testing.assert_allclose(ssim(x, gt), single, rtol=1e-12)
    assert ssim(3 * x[0], gt[0]) == pytest.approx(single[0], abs=1e-12)


# --- pearson -------------------------------------------------------------------------


def test_pearson_matches_numpy_and_scipy():
    rng = np.random.default_rng(9)
    gt = _volume(rng, batch=2)
    x = gt + 0.3 * rng.standard_normal(gt.shape)
    r = pearson(x, gt)
    for i in range(2):
        assert r[i] == pytest.approx(np.corrcoef(x[i].ravel(), gt[i].ravel())[0, 1], abs=1e-12)
        assert r[i] == pytest.approx(stats.pearsonr(x[i].ravel(), gt[i].ravel())[0], abs=1e-12)
    assert pearson(-5 * x[0], gt[0]) == pytest.approx(-r[0], abs=1e-12)
    assert pearson(np.ones_like(gt[0]), gt[0]) == 0.0


# --- reprojection residual -------------------------------------------------------------


@pytest.fixture(scope="module")
def op(small_bank):
    return LightFieldOperator(small_bank, dtype=torch.float64)


def test_reprojection_residual_matches_numpy(op):
    rng = np.random.default_rng(10)
    x = torch.from_numpy(rng.random((2, *op.volume_shape((3, 4)))))
    hx = op(x).numpy()
    y = hx + 0.05 + 0.01 * rng.standard_normal(hx.shape)
    expected = [np.linalg.norm(hx[i] + 0.05 - y[i]) / np.linalg.norm(y[i]) for i in range(2)]
    got = reprojection_residual(op, x, torch.from_numpy(y), background=0.05)
    assert got.shape == (2,) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # numpy in, one volume in: a float out
    assert reprojection_residual(op, x[0].numpy(), y[0], 0.05) == pytest.approx(expected[0])


def test_reprojection_residual_zero_for_exact_data(op):
    x = torch.rand((1, *op.volume_shape((3, 3))), dtype=torch.float64)
    y = op(x) + 2.0
    assert reprojection_residual(op, x, y, background=2.0)[0] == pytest.approx(0.0, abs=1e-14)


def test_reprojection_residual_shape_error(op):
    x = torch.rand((1, *op.volume_shape((3, 3))), dtype=torch.float64)
    with pytest.raises(LFMError, match="light fields x was reconstructed from"):
        reprojection_residual(op, x, torch.rand((1, 1, 30, 30), dtype=torch.float64))


# --- find_peaks ---------------------------------------------------------------------


def test_find_peaks_at_voxel_centres_brightest_first():
    voxels = [(2, 5, 30), (8, 25, 10)]
    peaks = find_peaks(_spikes(voxels, [0.5, 1.0]), DEPTHS, LATERAL)
    np.testing.assert_allclose(peaks, [_um(*voxels[1]), _um(*voxels[0])])


def test_find_peaks_nonuniform_depths():
    depths = np.array([-30.0, -10.0, -4.0, 0.0, 3.0, 9.0, 20.0, 35.0, 50.0, 60.0, 80.0])
    peaks = find_peaks(_spikes([(4, 10, 10)], [1.0]), depths, LATERAL)
    np.testing.assert_allclose(peaks, [[3.0, 15.75, 15.75]])


@pytest.mark.parametrize(
    "plateau",
    [
        pytest.param((slice(4, 6), slice(10, 13), slice(20, 24)), id="flat-box"),
        pytest.param((slice(5, 6), slice(10, 12), slice(20, 21)), id="two-equal-voxels"),
    ],
)
def test_flat_plateau_is_one_peak(plateau):
    vol = _blobs([_um(5, 11, 21)], sigma=(12.0, 4.0))
    vol[plateau] = vol.max() + 1.0  # a flat top, as after saturation or clipping
    peaks = find_peaks(vol, DEPTHS, LATERAL)
    centre = [np.mean(DEPTHS[plateau[0]])] + [
        (np.mean(np.arange(SHAPE[i])[plateau[i]]) + 0.5) * LATERAL for i in (1, 2)
    ]
    np.testing.assert_allclose(peaks, [centre])


def test_threshold_and_empty_volume():
    vol = _spikes([(2, 5, 5), (8, 30, 30)], [1.0, 0.1])
    assert len(find_peaks(vol, DEPTHS, LATERAL)) == 1
    assert len(find_peaks(vol, DEPTHS, LATERAL, threshold=0.05)) == 2
    assert find_peaks(np.zeros(SHAPE), DEPTHS, LATERAL).shape == (0, 3)


# --- detection_scores ---------------------------------------------------------------


def test_all_blobs_detected():
    score = detection_scores(_blobs(CENTRES, BRIGHTNESS), CENTRES, DEPTHS, LATERAL)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (5, 0, 0)
    assert score.precision == score.recall == score.f1 == 1.0
    # one-to-one, every centre once, each peak on the voxel nearest its centre
    peaks, (p, c) = score.peaks, score.matches.T
    assert sorted(c) == list(range(5))
    assert np.all(np.abs(peaks[p] - CENTRES[c]) <= [5.0, LATERAL / 2, LATERAL / 2])


def test_missing_blob_is_one_false_negative():
    vol = _blobs(CENTRES[1:], BRIGHTNESS[1:])
    score = detection_scores(vol, CENTRES, DEPTHS, LATERAL)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (4, 0, 1)
    assert score.recall == 4 / 5 and score.precision == 1.0
    assert score.f1 == pytest.approx(2 * 4 / (2 * 4 + 1))


def test_spurious_blob_is_one_false_positive():
    extra = np.vstack([CENTRES, [[-20.0, 50.0, 52.0]]])
    vol = _blobs(extra, np.append(BRIGHTNESS, 0.5))
    score = detection_scores(vol, CENTRES, DEPTHS, LATERAL)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (5, 1, 0)
    assert score.precision == 5 / 6 and score.recall == 1.0


def test_optimal_assignment_beats_greedy():
    # Peaks P1 (brighter), P2 6 µm apart along y; centres C1 = P1 − 4 µm, C2 = P1 + 2 µm.
    # Greedy nearest matching takes P1–C2 (2 µm) and leaves P2 only C1 at 10 µm > 5 µm
    # tolerance: 1 match. The optimal one-to-one assignment matches P1–C1 and P2–C2.
    p1, p2 = (5, 9, 20), (5, 13, 20)
    vol = _spikes([p1, p2], [1.0, 0.9])
    c1 = _um(*p1) - np.array([0, 4.0, 0])
    c2 = _um(*p1) + np.array([0, 2.0, 0])
    score = detection_scores(vol, np.array([c1, c2]), DEPTHS, LATERAL)
    assert score.true_positives == 2
    np.testing.assert_array_equal(score.matches, [[0, 0], [1, 1]])


@pytest.mark.parametrize(
    ("offset", "matched"),
    [
        pytest.param((0.0, 4.9, 0.0), True, id="lateral-inside"),
        pytest.param((0.0, 5.1, 0.0), False, id="lateral-outside"),
        pytest.param((0.0, 3.0, 3.9), True, id="lateral-diagonal-inside"),
        pytest.param((0.0, 3.0, 4.1), False, id="lateral-diagonal-outside"),
        pytest.param((9.9, 0.0, 0.0), True, id="axial-inside"),
        pytest.param((-10.1, 0.0, 0.0), False, id="axial-outside"),
        pytest.param((6.0, 3.9, 0.0), True, id="combined-inside"),  # 0.36 + 0.6084
        pytest.param((6.0, 4.1, 0.0), False, id="combined-outside"),  # 0.36 + 0.6724
    ],
)
def test_tolerance_boundary(offset, matched):
    vol = _spikes([(5, 20, 20)], [1.0])
    centre = _um(5, 20, 20) + np.array(offset)
    score = detection_scores(vol, centre[None], DEPTHS, LATERAL, tolerance=(10.0, 5.0))
    assert score.true_positives == int(matched)
    assert score.false_positives == score.false_negatives == int(not matched)


@pytest.mark.parametrize(
    ("offset", "matched"),
    [
        pytest.param((8.0, 0.0, 0.0), True, id="8um-axial-matches"),
        pytest.param((0.0, 8.0, 0.0), False, id="8um-lateral-misses"),
    ],
)
def test_tolerance_is_anisotropic(offset, matched):
    vol = _spikes([(5, 20, 20)], [1.0])
    centre = _um(5, 20, 20) + np.array(offset)
    assert detection_scores(vol, centre[None], DEPTHS, LATERAL).true_positives == int(matched)


@pytest.mark.parametrize(
    ("n_peaks", "n_centres", "expected"),
    [
        pytest.param(0, 0, (1.0, 1.0, 1.0), id="nothing-to-find-none-found"),
        pytest.param(0, 1, (1.0, 0.0, 0.0), id="missed-everything"),
        pytest.param(1, 0, (0.0, 1.0, 0.0), id="only-false-positives"),
    ],
)
def test_empty_conventions(n_peaks, n_centres, expected):
    vol = _spikes([(5, 20, 20)], [1.0]) if n_peaks else np.zeros(SHAPE)
    centres = np.array([_um(2, 5, 5)]) if n_centres else np.zeros((0, 3))
    score = detection_scores(vol, centres, DEPTHS, LATERAL)
    assert (score.precision, score.recall, score.f1) == expected


def test_batch_and_combine_pool_counts():
    vols = np.stack([_blobs(CENTRES, BRIGHTNESS), _blobs(CENTRES[2:], BRIGHTNESS[2:])])
    extra = np.vstack([CENTRES[2:], [[-20.0, 50.0, 52.0]]])  # one centre with no blob
    scores = detection_scores(vols, [CENTRES, extra], DEPTHS, LATERAL)
    assert [(s.true_positives, s.false_positives, s.false_negatives) for s in scores] == [
        (5, 0, 0),
        (3, 0, 1),
    ]
    assert scores[1] == detection_scores(vols[1], extra, DEPTHS, LATERAL)
    pooled = DetectionScore.combine(scores)
    assert (pooled.true_positives, pooled.false_positives, pooled.false_negatives) == (8, 0, 1)
    assert pooled.precision == 1.0 and pooled.recall == 8 / 9
    assert pooled.f1 == pytest.approx(16 / 17)
    assert pooled.f1 != pytest.approx(np.mean([s.f1 for s in scores]))  # micro, not macro


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(
            lambda: psnr(np.ones((11, 8, 8)), np.ones((11, 8, 9))), "same voxel grid", id="shape"
        ),
        pytest.param(
            lambda: ssim(np.ones((2, 11, 8, 8)), np.ones((11, 8, 8))),
            "same voxel grid",
            id="batch-vs-single",
        ),
        pytest.param(
            lambda: pearson(np.full((11, 8, 8), np.nan), np.ones((11, 8, 8))),
            "NaN or Inf",
            id="nan",
        ),
        pytest.param(lambda: psnr(np.ones((8, 8)), np.ones((8, 8))), "add or remove", id="ndim"),
        pytest.param(
            lambda: find_peaks(np.ones((2, *SHAPE)), DEPTHS, LATERAL), "one volume", id="batch"
        ),
        pytest.param(
            lambda: find_peaks(np.ones(SHAPE), DEPTHS[:5], LATERAL), "one per plane", id="depths"
        ),
        pytest.param(
            lambda: detection_scores(np.ones((2, *SHAPE)), [CENTRES], DEPTHS, LATERAL),
            "one per volume",
            id="centres-list",
        ),
        pytest.param(
            lambda: detection_scores(np.ones(SHAPE), CENTRES[:, :2], DEPTHS, LATERAL),
            r"\(N, 3\)",
            id="centres-columns",
        ),
        pytest.param(
            lambda: detection_scores(np.ones(SHAPE), CENTRES, DEPTHS, LATERAL, tolerance=5.0),
            "axial, lateral",
            id="tolerance",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(LFMError, match=match):
        call()
