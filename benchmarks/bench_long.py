"""Benchmark: long recordings — resident memory, throughput and disk use
against the number of frames.

Reference configuration (nnum 15, 11 depths, s 5, 21×21 lenslets: 0.49 MB
per float32 volume). A recording of ``--frames`` simulated light fields is
written once as one multi-page TIFF; then each run reconstructs it with
``reconstruct_files`` in a fresh process (so its peak resident memory,
VmHWM, is its own) while this process samples the disk space used in the
run's output folder every 50 ms (st_blocks, so sparse files count what
they hold). Reported per run: volumes/s over the whole call (the
assembly of older versions included), peak RSS, peak disk / final output.

Yardsticks, in the same session on the same machine: the same runs at 100
frames (memory must not grow with the frames), and the same runs of another
checkout of the package (``--baseline PATH``, e.g. the commit before the
in-place outputs: its source folder is put first on PYTHONPATH).

    python -m benchmarks.bench_long [--frames 2000 --short 100] [--kinds h5,tif,zarr]
        [--layers 2] [--batch 8] [--baseline /path/to/old/checkout] [--json out.json]

The network is untrained (its speed does not depend on its weights); by
default a light one (2 layers, no CNN prior) so that file I/O weighs as
much as possible in the throughput. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

OUTPUT_NAMES = {"h5": "out.h5", "tif": "out.tif", "folder": "out", "zarr": "out.ome.zarr"}


def _child(args) -> None:
    """One run, in its own process; prints a JSON line."""
    import torch

    import lfm_recon
    from lfm_recon.reconstruct import reconstruct_files

    assert (
        Path(lfm_recon.__file__)
        .resolve()
        .is_relative_to(Path(os.environ["PYTHONPATH"].split(os.pathsep)[0]).resolve())
    )
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    start = time.perf_counter()
    report = reconstruct_files(
        [args.recording],
        args.output,
        model=args.model,
        background=5.0,
        batch=args.batch,
        device="cpu",
        progress=False,
    )
    seconds = time.perf_counter() - start
    hwm = _vm_hwm()
    print(json.dumps({"seconds": seconds, "frames": report.frames, "vm_hwm": hwm}))


def _vm_hwm() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _disk_used(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass  # renamed or removed while walking
    return total


def _make_inputs(folder: Path, frames: int, layers: int) -> tuple[Path, Path, Path]:
    import tifffile
    import torch

    from lfm_recon import LightFieldOperator, UnfoldedISTA
    from lfm_recon.data import sample
    from lfm_recon.modelfile import save_model

    bank, _ = sample()
    op = LightFieldOperator(bank)
    net = UnfoldedISTA(op, config=None, n_layers=layers, data_term="poisson")
    save_model(net, folder / "model.pt")
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((1, *op.volume_shape((21, 21)))) > 0.999).astype(np.float32))
    y = op.simulate(x, photons=300, background=5, seed=0)[0, 0].numpy()
    recordings = {}
    for n in sorted({frames, *_short(frames)}):
        path = folder / f"recording-{n}.tif"
        with tifffile.TiffWriter(path) as tif:  # page by page: memory stays small
            for t in range(n):
                tif.write(np.roll(y, 7 * t, axis=1).astype(np.uint16), contiguous=True)
        recordings[n] = path
    return folder / "model.pt", recordings


_SHORT: list[int] = []


def _short(frames: int) -> list[int]:
    return [s for s in _SHORT if s < frames]


def _run(code_path: str | None, recording: Path, model: Path, kind: str, batch: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_long-run-", dir=recording.parent))
    output = work / OUTPUT_NAMES[kind]
    # The child runs as a script from the run's folder, so that nothing but
    # PYTHONPATH decides which lfm_recon it imports.
    env = dict(os.environ)
    source = code_path or str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--recording"]
    cmd += [str(recording), "--model", str(model), "--output", str(output)]
    cmd += ["--batch", str(batch)]
    peak = {"bytes": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["bytes"] = max(peak["bytes"], _disk_used(work))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        done = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, check=False)
    finally:
        stop.set()
        sampler.join()
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    final = _disk_used(work)
    peak["bytes"] = max(peak["bytes"], final)
    result.update(
        lfm_recon=source,
        kind=kind,
        code="baseline" if code_path else "this",
        volumes_per_s=result["frames"] / result["seconds"],
        output_bytes=final,
        peak_disk_bytes=peak["bytes"],
        disk_ratio=peak["bytes"] / final,
    )
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--kinds", default="h5,tif,zarr")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--baseline", default=None, help="source folder of another checkout")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recording", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    _SHORT.append(args.short)
    folder = Path(tempfile.mkdtemp(prefix="bench_long-"))
    model, recordings = _make_inputs(folder, args.frames, args.layers)
    results = []
    codes = [None] if args.baseline is None else [None, str(Path(args.baseline).resolve())]
    for kind in args.kinds.split(","):
        for n in sorted(recordings):
            for _ in range(args.repeat):
                for code in codes:
                    if kind == "zarr" and code is not None:
                        continue  # no OME-Zarr output before
                    r = _run(code, recordings[n], model, kind, args.batch)
                    results.append(r)
                    print(
                        f"{kind:6s} {r['code']:8s} {r['frames']:5d} frames:"
                        f" {r['volumes_per_s']:6.2f} volumes/s, peak RSS"
                        f" {r['vm_hwm'] / 2**20:7.0f} MiB, peak disk"
                        f" {r['peak_disk_bytes'] / 1e6:8.1f} MB for a"
                        f" {r['output_bytes'] / 1e6:8.1f} MB output"
                        f" (×{r['disk_ratio']:.3f})",
                        flush=True,
                    )
                    if args.json:
                        Path(args.json).write_text(json.dumps(results, indent=1))
    subprocess.run(["rm", "-rf", str(folder)], check=False)


if __name__ == "__main__":
    main()
