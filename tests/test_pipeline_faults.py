"""Outputs written in place, and the faults they survive: SIGKILL then rerun
(every output kind), damaged frames found and recomputed, one writer per
output, a failing torchrun process stopping the others, OME-Zarr read by
ome-zarr-py with its scale, and the reconstructor's dtype."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from recordings import OUTPUTS, T, make_recording, read_back, slow_rl

from lfm_recon import LFMError, LightFieldOperator
from lfm_recon.cli import main
from lfm_recon.pipeline import read_volumes, reconstruct, reconstruct_files
from lfm_recon.pipeline import run as pipeline_run
from lfm_recon.pipeline.lock import OutputLock

KINDS = [
    pytest.param("h5", id="h5"),
    pytest.param("tif", id="tif"),
    pytest.param("folder", id="folder"),
    pytest.param("zarr", id="zarr"),
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _needs(kind):
    if kind == "zarr":
        pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def recording(tmp_path_factory, small_bank):
    return make_recording(tmp_path_factory.mktemp("faults"), small_bank)


def _cli(*args):
    return [sys.executable, "-m", "lfm_recon.cli", *map(str, args)]


@pytest.fixture(scope="module")
def slow_reference(recording, tmp_path_factory):
    """The uninterrupted result of :func:`recordings.slow_rl` (T, D, Yv, Xv)."""
    root, _, _ = recording
    out = tmp_path_factory.mktemp("reference") / "whole.h5"
    done = subprocess.run(_cli(*slow_rl(root), "-q", "-o", out), env=ENV, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return read_volumes(out)


def _kill_after(argv, run_folder: Path, markers: int) -> None:
    proc = subprocess.Popen(_cli(*argv), env=ENV, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(run_folder.glob("done/*.json"))) < markers:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_then_rerun_computes_only_the_missing_frames(
    kind, recording, slow_reference, tmp_path
):
    _needs(kind)
    root, _, _ = recording
    out = tmp_path / OUTPUTS[kind]
    argv = [*slow_rl(root), "-q", "-o", out]
    run_folder = out.with_name(out.name + ".partial")
    _kill_after(argv, run_folder, 2)
    done = 2 * len(list(run_folder.glob("done/*.json")))
    assert 4 <= done < T
    # The killed run's lock file stays behind, but not its lock.
    assert out.with_name(out.name + ".lock").exists()
    rerun = subprocess.run(
        _cli(*[a for a in argv if a != "-q"]), env=ENV, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming: {done} of {T} frames already done" in rerun.stdout
    assert f"{T - done} of {T} frames reconstructed" in rerun.stdout
    expected, expected_info = slow_reference
    np.testing.assert_array_equal(read_back(out), expected)
    volumes, info = read_volumes(out)
    np.testing.assert_array_equal(volumes, expected)
    # (the TIFF outputs' CSV tables keep 6 significant digits)
    np.testing.assert_allclose(info["qc"]["residual"], expected_info["qc"]["residual"], rtol=1e-5)
    assert not run_folder.exists() and not out.with_name(out.name + ".lock").exists()


def _stop_after(monkeypatch, batches: int):
    """Make reconstruct_files stop (as Ctrl-C would) after ``batches`` batches."""
    real, count = pipeline_run._Run._write, {"n": 0}

    def write_then_stop(self, a, b, volumes, qc):
        done = real(self, a, b, volumes, qc)
        count["n"] += 1
        if count["n"] == batches:
            raise KeyboardInterrupt
        return done

    monkeypatch.setattr(pipeline_run._Run, "_write", write_then_stop)
    return lambda: monkeypatch.setattr(pipeline_run._Run, "_write", real)


def _frame_extent(path: Path, t: int) -> tuple[int, int]:
    """Byte range of frame t in an h5 or tif output (found independently)."""
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            d = f["volumes"]
            n = d[0].nbytes
            return d.id.get_offset() + t * n, n
    import tifffile

    with tifffile.TiffFile(path) as tif:
        s = tif.series[0]
        n = int(np.prod(s.shape[-3:])) * 4
        return s.dataoffset + t * n, n


def _damage(kind: str, out: Path) -> tuple[list[int], list[str]]:
    """Damage frames 0…5 of an unfinished output as a failing disk or a
    careless user would; returns the frames damaged and what the notices
    must say."""
    if kind in ("h5", "tif"):
        start, n = _frame_extent(out, 3)
        a, _ = _frame_extent(out, 1)
        with open(out, "r+b") as fh:  # one flipped byte in frame 1
            fh.seek(a + 5)
            byte = fh.read(1)
            fh.seek(a + 5)
            fh.write(bytes([byte[0] ^ 0xFF]))
        os.truncate(out, start + n // 2)  # the file cut in the middle of frame 3
        cut = "was truncated" if kind == "h5" else "TIFF structure was damaged"
        return [1, 3, 4, 5], [
            f"frame 1 of {out} damaged (checksum mismatch)",
            f"frames 3…5 of {out} damaged",
            cut,
        ]
    if kind == "folder":
        frame = out / "frame_000003.tif"
        os.truncate(frame, frame.stat().st_size // 2)
        return [3], [f"frame 3 of {out} damaged (truncated)"]
    chunk = out / "0" / "3" / "0" / "0" / "0"
    os.truncate(chunk, chunk.stat().st_size // 2)
    return [3], [f"frame 3 of {out} damaged (chunk 0/3/0/0/0 is truncated)"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_frames_are_reported_and_recomputed(kind, recording, tmp_path, monkeypatch, capsys):
    _needs(kind)
    root, frames, _ = recording
    out = tmp_path / OUTPUTS[kind]
    kwargs = dict(psf=root / "bank.h5", method="rl", n_iter=5, background=5.0, batch=2)
    restore = _stop_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        reconstruct_files([root / "series.tif"], out, progress=False, **kwargs)
    restore()
    damaged, notices = _damage(kind, out)
    capsys.readouterr()
    report = reconstruct_files([root / "series.tif"], out, progress=False, **kwargs)
    err = capsys.readouterr().err
    assert report.damaged == damaged
    assert report.computed == T - 6 + len(damaged)
    for notice in notices:  # each on a line of its own
        assert sum(notice in line for line in err.splitlines()) == 1, (notice, err)
    expected = reconstruct(frames, LightFieldOperator(_bank(root)), "rl", n_iter=5, background=5)
    np.testing.assert_allclose(read_back(out), expected, rtol=1e-5, atol=1e-6 * expected.max())


def _bank(root):
    from lfm_recon import PSFBank

    return PSFBank.load(root / "bank.h5")


def test_a_damaged_marker_is_reported_and_its_frames_recomputed(
    recording, tmp_path, monkeypatch, capsys
):
    root, _, _ = recording
    out = tmp_path / "v.h5"
    kwargs = dict(psf=root / "bank.h5", method="rl", n_iter=3, background=5.0, batch=4)
    restore = _stop_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        reconstruct_files([root / "series.tif"], out, progress=False, **kwargs)
    restore()
    marker = sorted((tmp_path / "v.h5.partial" / "done").glob("*.json"))[1]
    marker.write_text(marker.read_text()[:40])  # torn
    report = reconstruct_files([root / "series.tif"], out, progress=False, **kwargs)
    assert report.computed == T - 4
    assert f"completion marker {marker.name}" in capsys.readouterr().err


# --- one writer per output ----------------------------------------------------------------------
def test_a_second_run_on_the_same_output_is_refused(recording, slow_reference, tmp_path, capsys):
    root, _, _ = recording
    out = tmp_path / "v.h5"
    first = subprocess.Popen(_cli(*slow_rl(root), "-q", "-o", out), env=ENV)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list(tmp_path.glob("v.h5.partial/done/*.json")):
            time.sleep(0.05)
        argv = [str(a) for a in slow_rl(root)]
        assert main([*argv, "-q", "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "another run is writing" in err, err
        assert f"process {first.pid}" in err
        assert main([*argv, "-q", "--overwrite", "-o", str(out)]) == 2  # not even so
    finally:
        assert first.wait(timeout=120) == 0
    np.testing.assert_array_equal(read_back(out), slow_reference[0])


def test_lock_is_not_stuck_after_its_holder_is_killed(tmp_path):
    out = tmp_path / "v.h5"
    code = f"from lfm_recon.pipeline.lock import OutputLock; OutputLock({str(out)!r}).acquire()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code + "; import time; print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    lock = OutputLock(out)
    with pytest.raises(LFMError, match="another run is writing"):
        lock.acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock.path.exists()  # the file stays; the kernel dropped the lock
    lock.acquire()
    lock.release()
    assert not lock.path.exists()


# --- torchrun -------------------------------------------------------------------------------
_FAIL_ON_RANK_1 = """
import os, sys
from lfm_recon import LFMError
from lfm_recon.cli import main
if os.environ["RANK"] == "1":
    from lfm_recon.recording import Recording
    def fail(*args):
        raise LFMError("simulated read failure")
    Recording.read = fail
sys.exit(main(sys.argv[1:]))
"""


def test_a_failing_process_stops_the_others_promptly(recording, tmp_path, free_port):
    """Rank 1 fails on its first batch; rank 0 (six slow batches of its own)
    stops at its next batch and both exit with an error naming the failure.
    Launched without torchrun, whose agent would kill the survivors itself."""
    root, _, _ = recording
    out = tmp_path / "v.h5"
    argv = [*slow_rl(root), "--batch", "1", "-q", "-o", out]
    env = {**ENV, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FAIL_ON_RANK_1, *map(str, argv)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errors
    assert "process 1 of 2 failed: simulated read failure" in errors[0], errors[0]
    assert errors[0].strip().count("\n") == 0, errors[0]
    # Rank 0 had frames 0, 2, …, 10 to do: it stopped long before.
    written = list((tmp_path / "v.h5.partial" / "done").glob("*.json"))
    assert len(written) < T // 2 - 2


@pytest.mark.parametrize(
    "method, kind",
    [pytest.param("net", "zarr", id="net-zarr"), pytest.param("rl", "zarr", id="rl-zarr")],
)
def test_torchrun_two_processes_write_one_output(recording, tmp_path, method, kind, free_port):
    _needs(kind)
    root, _, _ = recording
    if method == "net":
        argv = ["reconstruct", root / "series.tif", "--model", root / "model.pt"]
    else:
        argv = ["reconstruct", root / "series.tif", "--psf", root / "bank.h5", "--iterations", 20]
    argv += ["--method", method, "--background", "5", "--batch", "2", "--device", "cpu", "-q"]
    one = subprocess.run(_cli(*argv, "-o", tmp_path / "one.h5"), env=ENV, capture_output=True)
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    run += [f"--master_port={free_port}", "-m", "lfm_recon.cli"]
    two = subprocess.run(
        [*run, *map(str, argv), "-o", str(tmp_path / OUTPUTS[kind])],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_back(tmp_path / "one.h5"), read_back(tmp_path / OUTPUTS[kind])
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * a.max())


# --- OME-Zarr as others read it -------------------------------------------------------------------
def test_ome_zarr_is_read_by_ome_zarr_py_with_its_scale(recording, small_bank, tmp_path):
    pytest.importorskip("zarr")
    ome = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    root, frames, net = recording
    out = tmp_path / "vol.ome.zarr"
    reconstruct_files(
        [root / "series.tif"],
        out,
        model=root / "model.pt",
        background=5.0,
        pyramid=2,
        progress=False,
    )
    nodes = list(ome.Reader(parse_url(str(out)))())
    image = nodes[0]
    lateral, axial = small_bank.voxel_size
    assert [a["name"] for a in image.metadata["axes"]] == ["t", "z", "y", "x"]
    assert [a.get("unit") for a in image.metadata["axes"][1:]] == ["micrometer"] * 3
    scale0, move0 = image.metadata["coordinateTransformations"][0]
    assert scale0["scale"] == pytest.approx([1.0, axial, lateral, lateral])
    assert move0["translation"][1] == pytest.approx(small_bank.depths[0])
    scale1, _ = image.metadata["coordinateTransformations"][1]
    assert scale1["scale"] == pytest.approx([1.0, axial, 2 * lateral, 2 * lateral])
    level0, level1 = (np.asarray(d) for d in image.data)
    expected = reconstruct(frames, net, "net", background=5.0)
    np.testing.assert_allclose(level0, expected, rtol=1e-5, atol=1e-6 * expected.max())
    t, d, y, x = expected.shape
    mean2 = expected[:, :, : y // 2 * 2, : x // 2 * 2].reshape(t, d, y // 2, 2, x // 2, 2)
    np.testing.assert_allclose(level1, mean2.mean(axis=(3, 5)), rtol=1e-5, atol=1e-6)
    assert image.metadata["name"] == "vol"


def test_pyramid_is_for_zarr_only(recording, tmp_path):
    root, _, _ = recording
    with pytest.raises(LFMError, match="--pyramid is for OME-Zarr"):
        reconstruct_files([root / "series.tif"], tmp_path / "v.h5", psf=root / "bank.h5", pyramid=2)
    assert not list(tmp_path.iterdir())


# --- the reconstructor's dtype -----------------------------------------------------------------
@pytest.mark.parametrize(
    "empty", [pytest.param(False, id="all-signal"), pytest.param(True, id="with-a-dark-frame")]
)
def test_reconstructor_returns_float32_whatever_the_batch(recording, small_bank, empty):
    _, frames, _ = recording
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    y = torch.from_numpy(frames[:3]).double()[:, None]
    if empty:
        y[1] = 0
    from lfm_recon.reconstruct import Reconstructor  # where it has always been

    x = Reconstructor(op, "rl", background=5.0, n_iter=3)(y)
    assert x.dtype == torch.float32 and x.shape == (3, *op.volume_shape((6, 7)))
    assert bool((x[1] == 0).all()) == empty


def test_ome_zarr_without_zarr_says_how_to_install(recording, tmp_path, monkeypatch, capsys):
    root, _, _ = recording
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr now fails
    argv = ["reconstruct", str(root / "series.tif"), "--psf", str(root / "bank.h5")]
    assert main([*argv, "-q", "-o", str(tmp_path / "v.ome.zarr")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'lfm_recon[zarr]'" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_a_marker_written_before_the_iteration_and_blend_columns_still_reads():
    """Run folders left by an earlier version resume: their markers lack the
    per-frame iterations and guard blend, which then do not apply (None)."""
    from lfm_recon.pipeline.store import QC_FIELDS, Marker

    old = {
        "frames": [4, 6],
        "qc": {"residual": [0.1, 0.2], "max": [3.0, 4.0], "mean": [1.0, 1.5], "empty": [0, 0]},
        "records": [{}, {}],
    }
    marker = Marker.from_json(old)
    assert set(marker.qc) == set(QC_FIELDS)
    assert marker.qc["iterations"] == marker.qc["blend"] == marker.qc["antialiased"] == [None, None]
    assert marker.qc["residual"] == [0.1, 0.2]
    del old["qc"]["max"]  # a field that was always there is still required
    with pytest.raises(KeyError):
        Marker.from_json(old)
