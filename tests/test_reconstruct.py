"""Batch reconstruction of recordings: file formats and their metadata,
equality with the per-frame API, resume after SIGKILL, torchrun (gloo, 2
processes) = 1 process, QC flags, and bad input (nothing written is lost)."""

import errno
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import tifffile
import torch
from recordings import T, make_recording, slow_rl

from lfm_recon import LFMError
from lfm_recon.cli import main
from lfm_recon.metrics import reprojection_residual
from lfm_recon.pipeline import run as pipeline_run
from lfm_recon.pipeline import writers
from lfm_recon.reconstruct import read_volumes, reconstruct, reconstruct_files


@pytest.fixture(scope="module")
def recording(tmp_path_factory, small_bank):
    """A 12-frame multi-page TIFF series (uint16 counts), the bank, a model."""
    return make_recording(tmp_path_factory.mktemp("recording"), small_bank)


def test_tiff_series_to_h5_and_tiffs_equals_the_api(recording, small_bank, tmp_path):
    root, frames, net = recording
    expected = reconstruct(frames, net, "net", background=5.0, batch=5)
    assert expected.shape == (T, 3, 18, 21)
    lateral, axial = small_bank.voxel_size
    # HDF5
    report = reconstruct_files(
        [root / "series.tif"],
        tmp_path / "vol.h5",
        model=root / "model.pt",
        background=5.0,
        batch=5,
        progress=False,
    )
    assert (report.frames, report.computed) == (T, T)
    volumes, info = read_volumes(tmp_path / "vol.h5")
    np.testing.assert_allclose(volumes, expected, rtol=1e-5, atol=1e-6 * expected.max())
    assert info["element_size_um"] == pytest.approx((axial, lateral, lateral))
    prov = info["provenance"]
    assert prov["method"] == "net" and prov["psf_sha256"] == small_bank.sha256
    assert prov["inputs"][0]["frames"] == T and prov["model_sha256"]
    y = torch.from_numpy(frames)[:, None]
    residual = reprojection_residual(net.op, torch.from_numpy(volumes), y, 5.0)
    np.testing.assert_allclose(info["qc"]["residual"], residual, rtol=1e-4)
    assert info["qc"]["max"] == pytest.approx(volumes.max(axis=(1, 2, 3)), rel=1e-6)
    with h5py.File(tmp_path / "vol.h5", "r") as f:
        # Laid out for writing in place: one contiguous extent, frame after
        # frame, at the end of the file.
        d = f["volumes"]
        assert d.chunks is None and d.dtype == np.dtype("<f4")
        assert d.id.get_offset() + d.size * 4 == (tmp_path / "vol.h5").stat().st_size
    # One ImageJ hyperstack
    reconstruct_files(
        [root / "series.tif"],
        tmp_path / "vol.tif",
        model=root / "model.pt",
        background=5.0,
        progress=False,
    )
    with tifffile.TiffFile(tmp_path / "vol.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZYX"
        meta = tif.imagej_metadata
        assert meta["spacing"] == pytest.approx(axial) and meta["unit"] == "um"
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[1] / x_res[0] == pytest.approx(lateral, rel=1e-6)
        np.testing.assert_allclose(tif.asarray(), expected, rtol=1e-5, atol=1e-6 * expected.max())
    assert (tmp_path / "vol.qc.csv").read_text().count("\n") == T + 1
    # A folder of per-frame hyperstacks
    reconstruct_files(
        [root / "series.tif"],
        tmp_path / "frames",
        model=root / "model.pt",
        background=5.0,
        progress=False,
    )
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names[:2] == ["frame_000000.tif", "frame_000001.tif"] and "qc.csv" in names
    with tifffile.TiffFile(tmp_path / "frames" / "frame_000007.tif") as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(axial)
        np.testing.assert_allclose(
            tif.asarray(), expected[7], rtol=1e-5, atol=1e-6 * expected.max()
        )
    assert not list(tmp_path.glob("*.partial"))


def test_solvers_and_mixed_inputs(recording, tmp_path):
    """RL through files = RL through the API; HDF5 datasets and globs as inputs."""
    root, frames, net = recording
    with h5py.File(tmp_path / "more.h5", "w") as f:
        f["lf"] = frames[:3, None]  # (T, 1, Y, X)
    for i in range(2):
        tifffile.imwrite(tmp_path / f"single_{i}.tif", frames[3 + i])
    inputs = [f"{tmp_path / 'more.h5'}:lf", str(tmp_path / "single_*.tif")]
    reconstruct_files(
        inputs,
        tmp_path / "rl.h5",
        psf=root / "bank.h5",
        method="rl",
        n_iter=6,
        background=5.0,
        progress=False,
    )
    volumes, info = read_volumes(tmp_path / "rl.h5")
    expected = reconstruct(frames[:5], net.op, "rl", background=5.0, n_iter=6)
    np.testing.assert_allclose(volumes, expected, rtol=1e-5, atol=1e-6 * expected.max())
    assert [s["dataset"] for s in info["provenance"]["inputs"]] == ["lf", None, None]


def test_qc_flags_a_frame_the_model_cannot_explain(recording, tmp_path):
    root, frames, _ = recording
    odd = frames.copy()
    odd[4] = np.random.default_rng(1).permutation(odd[4].ravel()).reshape(odd[4].shape)
    odd[9] = 0  # an empty frame
    tifffile.imwrite(tmp_path / "odd.tif", odd.astype(np.uint16))
    report = reconstruct_files(
        [tmp_path / "odd.tif"],
        tmp_path / "odd.h5",
        psf=root / "bank.h5",
        method="rl",
        n_iter=10,
        background=5.0,
        filter="none",  # filtered, the natural frames' residuals are closer: 8 and 10 stand out
        progress=False,
    )
    assert report.flagged == [4, 9] and report.empty == [9]
    volumes, info = read_volumes(tmp_path / "odd.h5")
    assert not volumes[9].any() and list(np.flatnonzero(info["qc"]["flagged"])) == [4, 9]


def test_qc_table_records_each_frames_iterations_and_guard_blend(recording, tmp_path):
    """A network with the held-out guard: the QC table (HDF5 and the CSV
    beside a TIFF) holds each frame's RL-start iterations, guard blend and
    whether the guard anti-aliased it, as the network reports them when
    called on the frames directly; a dark frame has none (NaN, an empty CSV
    cell); fixed-count RL records its count and no blend."""
    import csv

    from lfm_recon import UnfoldedISTA
    from lfm_recon.modelfile import save_model

    root, frames, base = recording
    net = UnfoldedISTA(
        base.op, 2, data_term="poisson", prior="cnn", rl_start=40, rl_accelerate=True,
        rl_stop="holdout", holdout_guard=1.5, holdout_antialias=True,
    )  # fmt: skip
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # layers that move the start, so the guard has work to do
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_model(net.eval(), tmp_path / "guarded.pt")
    odd = frames.copy()
    odd[3] = 0  # a dark frame
    tifffile.imwrite(tmp_path / "odd.tif", odd.astype(np.uint16))
    kw = dict(model=tmp_path / "guarded.pt", method="net", background=5.0, progress=False)
    reconstruct_files([tmp_path / "odd.tif"], tmp_path / "net.h5", batch=5, **kw)
    reconstruct_files([tmp_path / "odd.tif"], tmp_path / "net.tif", batch=5, **kw)
    lit = np.flatnonzero(np.arange(T) != 3)
    with torch.no_grad():
        net(torch.from_numpy(odd[lit].astype(np.float32))[:, None], 5.0)
    _, info = read_volumes(tmp_path / "net.h5")
    iterations, blend = info["qc"]["iterations"], info["qc"]["blend"]
    assert np.isnan(iterations[3]) and np.isnan(blend[3])
    np.testing.assert_array_equal(iterations[lit], net.rl_iterations.numpy())
    np.testing.assert_allclose(blend[lit], net.guard_blend.numpy())
    assert 0 < blend[lit].min() < 1 == blend[lit].max()  # it acted on some frames, not all
    antialiased = info["qc"]["antialiased"]
    assert np.isnan(antialiased[3])
    np.testing.assert_array_equal(antialiased[lit], net.guard_antialiased.numpy())
    with open(tmp_path / "net.qc.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[3]["iterations"] == rows[3]["blend"] == rows[3]["antialiased"] == ""
    assert [float(rows[i]["antialiased"]) for i in lit] == antialiased[lit].tolist()
    np.testing.assert_allclose([float(rows[i]["blend"]) for i in lit], blend[lit], rtol=1e-5)
    reconstruct_files(
        [tmp_path / "odd.tif"], tmp_path / "rl.h5", psf=root / "bank.h5", method="rl", n_iter=4,
        background=5.0, progress=False,
    )  # fmt: skip
    _, info = read_volumes(tmp_path / "rl.h5")
    assert info["qc"]["iterations"][lit].tolist() == [4.0] * len(lit)
    assert np.isnan(info["qc"]["blend"]).all() and np.isnan(info["qc"]["antialiased"]).all()


# --- crash safety and resume ----------------------------------------------------------------
def _cli(*args):
    return [sys.executable, "-m", "lfm_recon.cli", *map(str, args)]


def test_sigkill_then_resume_gives_the_uninterrupted_output(recording, tmp_path):
    root, _, _ = recording
    argv = [*slow_rl(root), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(_cli(*argv, "-o", tmp_path / "whole.h5"), env=env, capture_output=True)
    assert whole.returncode == 0, whole.stderr.decode()[-2000:]
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen(_cli(*argv, "-o", out), env=env)
    partial = tmp_path / "killed.h5.partial"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.glob("done/*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in partial.glob("done/*.json")}
    assert 2 <= len(before) < T // 2
    with pytest.raises(LFMError, match="unfinished"):
        read_volumes(out)
    # The unfinished run is kept; frames done before the kill are not computed again.
    resumed = subprocess.run(
        _cli(*[a for a in argv if a != "-q"], "-o", out), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = 2 * len(before)
    assert f"resuming: {done} of {T} frames already done" in resumed.stdout
    assert f"{T - done} of {T} frames reconstructed" in resumed.stdout
    a, info_a = read_volumes(tmp_path / "whole.h5")
    b, info_b = read_volumes(out)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(info_a["qc"]["residual"], info_b["qc"]["residual"])
    assert not partial.exists()


def test_full_disk_keeps_finished_frames(recording, tmp_path, monkeypatch):
    root, _, _ = recording
    kwargs = dict(psf=root / "bank.h5", method="rl", n_iter=4, background=5.0, batch=3)
    real_pwrite = writers._pwrite
    calls = {"n": 0}

    def pwrite_on_a_disk_that_fills(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(writers, "_pwrite", pwrite_on_a_disk_that_fills)
    with pytest.raises(LFMError, match=r"disk is full.*frames already written are kept"):
        reconstruct_files([root / "series.tif"], tmp_path / "v.h5", progress=False, **kwargs)
    monkeypatch.setattr(writers, "_pwrite", real_pwrite)
    partial = tmp_path / "v.h5.partial"
    assert len(list(partial.glob("done/*.json"))) == 2 and not list(partial.glob("done/.*"))
    report = reconstruct_files([root / "series.tif"], tmp_path / "v.h5", progress=False, **kwargs)
    assert report.computed == T - 6
    reconstruct_files([root / "series.tif"], tmp_path / "ref.h5", progress=False, **kwargs)
    np.testing.assert_array_equal(
        read_volumes(tmp_path / "v.h5")[0], read_volumes(tmp_path / "ref.h5")[0]
    )


def test_unfinished_run_with_other_settings(recording, tmp_path, monkeypatch):
    root, _, _ = recording
    kwargs = dict(psf=root / "bank.h5", method="rl", background=5.0, batch=4, progress=False)

    def fail_after_first(self, a, b, volumes, qc):
        real(self, a, b, volumes, qc)
        raise KeyboardInterrupt

    real = pipeline_run._Run._write
    monkeypatch.setattr(pipeline_run._Run, "_write", fail_after_first)
    with pytest.raises(KeyboardInterrupt):
        reconstruct_files([root / "series.tif"], tmp_path / "v.h5", n_iter=3, **kwargs)
    monkeypatch.setattr(pipeline_run._Run, "_write", real)
    with pytest.raises(LFMError, match=r"unfinished run with other settings.*iterations"):
        reconstruct_files([root / "series.tif"], tmp_path / "v.h5", n_iter=5, **kwargs)
    report = reconstruct_files(
        [root / "series.tif"], tmp_path / "v.h5", n_iter=5, overwrite=True, **kwargs
    )
    assert report.computed == T
    manifest = read_volumes(tmp_path / "v.h5")[1]["provenance"]
    assert manifest["iterations"] == 5
    with pytest.raises(LFMError, match="exists; pass --overwrite"):
        reconstruct_files([root / "series.tif"], tmp_path / "v.h5", n_iter=5, **kwargs)


# --- torchrun -------------------------------------------------------------------------------
def test_torchrun_two_processes_match_one(recording, tmp_path, free_port):
    root, _, _ = recording
    argv = [
        "reconstruct",
        root / "series.tif",
        "--model",
        root / "model.pt",
        "--background",
        "5",
        "--batch",
        "2",
        "--device",
        "cpu",
        "-q",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_cli(*argv, "-o", tmp_path / "one.h5"), env=env, capture_output=True)
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port}",
        "-m",
        "lfm_recon.cli",
    ]
    two = subprocess.run(
        [*run, *map(str, argv), "-o", str(tmp_path / "two.h5")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, _ = read_volumes(tmp_path / "one.h5")
    b, _ = read_volumes(tmp_path / "two.h5")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * a.max())


# --- bad input --------------------------------------------------------------------------------
def test_bad_inputs_are_clear_one_line_errors(recording, tmp_path, capsys, reference):
    from lfm_recon import generate_psf

    root, frames, _ = recording
    other = generate_psf(reference, np.array([-20.0, 0.0, 20.0]), 1)
    other.save(tmp_path / "other.h5")
    tifffile.imwrite(tmp_path / "small.tif", frames[:, :80, :].astype(np.uint16))
    (tmp_path / "junk.tif").write_text("not a tiff")
    (tmp_path / "exists.h5").write_bytes(b"precious")
    model = ["--model", str(root / "model.pt")]
    cases = [
        ([str(tmp_path / "junk.tif"), *model], "cannot read"),
        ([str(tmp_path / "missing.tif"), *model], "does not exist"),
        ([str(tmp_path / "small.tif"), *model], "frames are 80×105 px"),
        (
            [str(root / "series.tif"), *model, "--psf", str(tmp_path / "other.h5")],
            "only works with its own PSF",
        ),
        (
            [str(root / "series.tif"), "--psf", str(root / "bank.h5"), "--method", "net"],
            "needs a trained model",
        ),
        ([str(root / "series.tif")], "give --model"),
    ]
    for args, message in cases:
        assert main(["reconstruct", *args, "-o", str(tmp_path / "x.h5"), "-q"]) == 2, message
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (message, err)
        assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()
    argv = ["reconstruct", str(root / "series.tif"), *model, "-o", str(tmp_path / "exists.h5")]
    assert main(argv) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "exists.h5").read_bytes() == b"precious"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pipeline_matches_cpu(recording, tmp_path):
    root, _, _ = recording
    for device in ("cpu", "cuda"):
        reconstruct_files(
            [root / "series.tif"],
            tmp_path / f"{device}.h5",
            model=root / "model.pt",
            background=5.0,
            device=device,
            progress=False,
        )
    a, b = read_volumes(tmp_path / "cpu.h5")[0], read_volumes(tmp_path / "cuda.h5")[0]
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * a.max())
