"""Training: config validation, physics-consistent augmentation, learning,
exact resume, divergence handling, torchrun (gloo, 2 processes) = 1 process,
and the `lfm-recon train` command."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from banks import Config, random_bank

from lfm_recon import LFMError, LightFieldOperator
from lfm_recon.cli import main
from lfm_recon.data import simulate_dataset
from lfm_recon.evaluate import evaluate
from lfm_recon.modelfile import load_model, read_model_file
from lfm_recon.training import TrainConfig, TrainingDiverged, train
from lfm_recon.training.augment import augment, bank_symmetries

CONFIG = """
psf = "bank.h5"
output = "run"
seed = 3
steps_per_epoch = 4
checkpoint_every = 2

[model]
n_layers = 3

[data]
train = "data.h5"
n_validation = 2
patch_lenslets = 0
batch_size = 2
unlabeled_batch_size = 2

[loss]
resynthesis = 0.5
adversarial = 0.05

[optim]
steps = 8
warmup_steps = 4
lr = 0.05
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, small_bank):
    """A bank, a data set of 8 paired + 6 unlabeled 7×7-lenslet samples, a config."""
    root = tmp_path_factory.mktemp("train")
    small_bank.save(root / "bank.h5")
    data = simulate_dataset(small_bank, 8, 6, lenslets=(7, 7), background=5.0, seed=11)
    data.save(root / "data.h5")
    (root / "config.toml").write_text(CONFIG)
    return root


def config(root: Path, text: str = CONFIG, **top) -> TrainConfig:
    path = root / "config.toml"
    path.write_text(text)
    return TrainConfig.from_file(path, **top)


def assert_same_state(a: dict, b: dict, **tolerance) -> None:
    """Equal network states: tensors within tolerance, the rest (the
    operator's bank hash) exactly."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b[key], **tolerance)
        else:
            assert value == b[key], key


def params(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items() if not k.startswith("op.")}


# --- config -----------------------------------------------------------------------------
def test_config_file_round_trip(workspace):
    cfg = config(workspace)
    assert cfg.model.n_layers == 3 and cfg.loss.adversarial == 0.05
    assert Path(cfg.psf) == workspace / "bank.h5"  # relative to the config file
    again = workspace / "again.toml"
    again.write_text(cfg.to_toml())
    assert TrainConfig.from_file(again) == cfg


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            ("[model]", "[model]\nlayers = 3"),
            r"\[model\]: unknown key\(s\) \['layers'\]",
            id="unknown-key",
        ),
        pytest.param(
            ("lr = 0.05", "lr = -1.0"), "optim.lr must be a finite number > 0", id="negative-lr"
        ),
        pytest.param(
            ("n_layers = 3", "n_layers = 2.5"), "n_layers must be an integer", id="float-layers"
        ),
        pytest.param(("seed = 3", 'precision = "fp8"'), "precision must be one of", id="precision"),
        pytest.param(("[loss]", '[loss]\ngan = "vanilla"'), "loss.gan must be one of", id="gan"),
        pytest.param(
            ("batch_size = 2", "batch_size = 0"), "data.batch_size must be ≥ 1", id="batch"
        ),
        pytest.param(('train = "data.h5"', ""), r"no light fields to learn from", id="no-train"),
        pytest.param(("[optim]", "[optim]\n[optim.extra]"), "unknown key", id="nested-table"),
        pytest.param(
            ("n_layers = 3", 'n_layers = 3\ndata_term = "poisson"\nstart = "zero"'),
            r"\[model\]: model start = 'zero' with data_term = 'poisson' starts dead",
            id="dead-poisson-start",
        ),
    ],
)
def test_bad_configs_are_named(workspace, edit, message):
    with pytest.raises(LFMError, match=message):
        config(workspace, CONFIG.replace(*edit, 1))


def test_adversarial_alone_is_refused(workspace):
    text = CONFIG.replace("resynthesis = 0.5", "resynthesis = 0.0\nsupervised = 0.0")
    with pytest.raises(LFMError, match="adversarial loss alone"):
        config(workspace, text)


# --- augmentation -------------------------------------------------------------------------
def test_augmentations_commute_with_the_physical_operator(small_bank):
    """Flips and transposes of volume and light field keep y = H x for a
    wave-optics bank (its kernels have these symmetries)."""
    assert bank_symmetries(small_bank) == {"flip_y": True, "flip_x": True, "transpose": True}
    op = LightFieldOperator(small_bank, dtype=torch.float64)
    x = torch.rand(1, *op.volume_shape((4, 4)), dtype=torch.float64)
    for code in range(8):
        torch.testing.assert_close(op(augment(x, code)), augment(op(x), code))


def test_asymmetric_bank_gets_no_augmentation():
    bank = random_bank(Config(nnum=3, s=2, radii=(1,), lenslets=(3, 3), dtype=torch.float32))
    assert not any(bank_symmetries(bank).values())


# --- training -------------------------------------------------------------------------------
def test_training_improves_on_ista_and_writes_a_model(workspace, small_bank):
    cfg = config(workspace, output=str(workspace / "run-learn"))
    cfg = TrainConfig.from_dict(
        {**cfg.to_dict(), "optim": {**cfg.to_dict()["optim"], "steps": 24}, "steps_per_epoch": 8}
    )
    result = train(cfg, progress=False)
    assert result.step == 24 and len(result.history) == 3
    # The untrained network equals 3 ISTA iterations: score that on the same frames.
    from lfm_recon.data import SimulatedData
    from lfm_recon.unfolded import UnfoldedISTA

    data = SimulatedData.load(workspace / "data.h5")
    op = LightFieldOperator(small_bank)
    net = UnfoldedISTA(op, 3)
    net.set_lambda_scale(torch.from_numpy(data.lightfields[:6]), 5.0)
    with torch.no_grad():
        x0 = net(torch.from_numpy(data.lightfields[6:]), 5.0)
    from lfm_recon.evaluate import score

    untrained = score(x0, data, np.arange(6, 8), op, 5.0).summary()["psnr"]
    assert result.best["psnr"] > untrained + 0.5
    model = load_model(result.model_path, bank=small_bank)
    info = read_model_file(result.model_path)["training"]
    assert info["step"] == result.best["step"] and info["config"]["model"]["n_layers"] == 3
    scores, _ = evaluate(model.op, data, "rl", 1)  # the data set fits the model's bank
    assert np.isfinite(scores.psnr).all()
    lines = (workspace / "run-learn" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"val_psnr"' in lines[0]


def _whole_and_resumed(workspace, monkeypatch, text, name):
    """Train 8 steps in one go, and again interrupted after the step-4
    checkpoint then resumed to 8: both results and both last checkpoints."""
    from lfm_recon.training.run_folder import RunFolder

    whole = train(config(workspace, text, output=str(workspace / f"{name}-whole")), progress=False)
    save = RunFolder.save_checkpoint

    def save_then_stop_at_4(folder, state):
        save(folder, state)
        if state["step"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunFolder, "save_checkpoint", save_then_stop_at_4)
    with pytest.raises(KeyboardInterrupt):
        train(config(workspace, text, output=f"{name}-half"), progress=False)
    monkeypatch.setattr(RunFolder, "save_checkpoint", save)
    half = workspace / f"{name}-half" / "checkpoint.pt"
    assert torch.load(half, weights_only=True)["step"] == 4
    resumed = train(config(workspace, text, output=f"{name}-half"), resume=True, progress=False)
    a = torch.load(workspace / f"{name}-whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(half, weights_only=True)
    assert a["step"] == b["step"] == resumed.step == 8
    assert_same_state(a["net"], b["net"], rtol=0, atol=0)
    assert whole.best["psnr"] == pytest.approx(resumed.best["psnr"])
    return a, b


def test_resume_reproduces_an_uninterrupted_run(workspace, monkeypatch):
    """8 steps in one go = interrupted after the step-4 checkpoint, then
    --resume to 8 (cosine schedule and adversarial stage included)."""
    a, b = _whole_and_resumed(workspace, monkeypatch, CONFIG, "run")
    for key in a["adversary"]["disc"]:
        torch.testing.assert_close(
            a["adversary"]["disc"][key], b["adversary"]["disc"][key], rtol=0, atol=0
        )


def test_resume_with_reused_simulated_draws_reproduces_an_uninterrupted_run(workspace, monkeypatch):
    """simulate.reuse = 3 with an RL start: interrupted at step 4 (inside the
    draw of step 3, whose cached starts the resumed run must rebuild) and
    resumed to 8 = 8 steps in one go."""
    text = CONFIG.replace(
        "n_layers = 3", 'n_layers = 2\ndata_term = "poisson"\nrl_start = 3\nrl_stop = "holdout"'
    ).replace("[loss]", "[data.simulate]\nbatch_size = 2\nreuse = 3\nlenslets = 7\n\n[loss]")
    _whole_and_resumed(workspace, monkeypatch, text, "reuse")


def test_existing_run_needs_resume_or_overwrite(workspace):
    cfg = config(workspace, CONFIG.replace("steps = 8", "steps = 2"), output="run-exists")
    train(cfg, progress=False)
    before = (workspace / "run-exists" / "model.pt").read_bytes()
    with pytest.raises(LFMError, match="--resume to continue it or --overwrite"):
        train(cfg, progress=False)
    assert (workspace / "run-exists" / "model.pt").read_bytes() == before
    changed = config(workspace, CONFIG.replace("lr = 0.05", "lr = 0.01"), output="run-exists")
    with pytest.raises(LFMError, match=r"differs from the checkpoint's in optim\.lr"):
        train(changed, resume=True, progress=False)


def test_refused_resume_leaves_the_run_as_it_was(workspace):
    """The config is compared with the checkpoint before anything is
    written: a refused --resume does not rewrite config.toml."""
    cfg = config(workspace, CONFIG.replace("steps = 8", "steps = 2"), output="run-refused")
    train(cfg, progress=False)
    folder = workspace / "run-refused"
    before = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    changed = config(workspace, CONFIG.replace("n_layers = 3", "n_layers = 4"), output=str(folder))
    with pytest.raises(LFMError, match=r"differs from the checkpoint's in model\.n_layers"):
        train(changed, resume=True, progress=False)
    after = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    assert after == before


def test_a_run_from_before_an_architecture_option_resumes(workspace):
    """A checkpoint written before an option of the model existed (its
    config lacks the key) resumes: the missing option is its default."""
    cfg = config(workspace, CONFIG.replace("steps = 8", "steps = 2"), output="run-older")
    train(cfg, progress=False)
    path = workspace / "run-older" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    for key in ("rl_accelerate", "noise_aware"):
        del state["config"]["model"][key]
    torch.save(state, path)
    assert train(cfg, resume=True, progress=False).step == 2
    state["config"]["model"]["n_layers"] = 5  # a real difference is still refused
    torch.save(state, path)
    with pytest.raises(LFMError, match=r"differs from the checkpoint's in model\.n_layers"):
        train(cfg, resume=True, progress=False)


def test_a_run_moved_with_its_data_resumes(workspace, tmp_path):
    """Paths are kept relative to the run folder: move the run and its data
    together, resume from the run's own config.toml."""
    import shutil

    moved = tmp_path / "project"
    (moved / "data").mkdir(parents=True)
    for name in ("bank.h5", "data.h5"):
        shutil.copy(workspace / name, moved / "data" / name)
    text = CONFIG.replace('"bank.h5"', '"data/bank.h5"').replace('"data.h5"', '"data/data.h5"')
    (moved / "config.toml").write_text(text.replace('output = "run"', 'output = "runs/a"'))
    train(TrainConfig.from_file(moved / "config.toml"), progress=False)
    recorded = (moved / "runs" / "a" / "config.toml").read_text()
    assert 'psf = "../../data/bank.h5"' in recorded and str(tmp_path) not in recorded
    elsewhere = tmp_path / "elsewhere"
    shutil.move(moved, elsewhere)
    run_config = elsewhere / "runs" / "a" / "config.toml"
    longer = recorded.replace("steps = 8", "steps = 8")  # same run, from its own record
    run_config.write_text(longer)
    result = train(TrainConfig.from_file(run_config), resume=True, progress=False)
    assert result.step == 8


def test_resume_keeps_the_original_schedule(workspace, monkeypatch):
    """Stopping a resumed run earlier (optim.steps 8 → 6) keeps the cosine
    laid over 8 steps; going beyond 8 is refused."""
    import math

    from lfm_recon.training.run_folder import RunFolder

    save = RunFolder.save_checkpoint

    def stop_at_4(folder, state):
        save(folder, state)
        if state["step"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunFolder, "save_checkpoint", stop_at_4)
    with pytest.raises(KeyboardInterrupt):
        train(config(workspace, output="run-schedule"), progress=False)
    monkeypatch.setattr(RunFolder, "save_checkpoint", save)
    longer = config(workspace, CONFIG.replace("steps = 8", "steps = 9"), output="run-schedule")
    with pytest.raises(LFMError, match=r"optim\.steps = 9 goes beyond the 8 steps"):
        train(longer, resume=True, progress=False)
    shorter = config(workspace, CONFIG.replace("steps = 8", "steps = 6"), output="run-schedule")
    assert train(shorter, resume=True, progress=False).step == 6
    state = torch.load(workspace / "run-schedule" / "checkpoint.pt", weights_only=True)
    lr = state["opt"]["param_groups"][0]["lr"]  # set for the last step, index 5
    assert lr == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 5 / 8)))


def test_metrics_log_has_no_repeated_epochs_after_a_crash(workspace, monkeypatch):
    """Epochs logged after the last checkpoint are recomputed on resume; the
    log lists each once."""
    import json

    from lfm_recon.training.run_folder import RunFolder

    text = CONFIG.replace("steps_per_epoch = 4", "steps_per_epoch = 2").replace(
        "checkpoint_every = 2", "checkpoint_every = 4"
    )
    append = RunFolder.append_metrics

    def crash_after_step_6(folder, record):
        append(folder, record)
        if record["step"] == 6:
            raise KeyboardInterrupt  # epoch 6 logged, last checkpoint at 4

    monkeypatch.setattr(RunFolder, "append_metrics", crash_after_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(config(workspace, text, output="run-log"), progress=False)
    monkeypatch.setattr(RunFolder, "append_metrics", append)
    train(config(workspace, text, output="run-log"), resume=True, progress=False)
    lines = (workspace / "run-log" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8]


def test_a_checkpoint_that_does_not_fit_the_network_is_refused(workspace):
    cfg = config(workspace, CONFIG.replace("steps = 8", "steps = 2"), output="run-strict")
    train(cfg, progress=False)
    path = workspace / "run-strict" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["net"]["stray"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(LFMError, match=r"does not fit this network.*stray"):
        train(cfg, resume=True, progress=False)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(workspace):
    # An absurd learning rate makes the steps overflow within a few updates.
    text = CONFIG.replace("lr = 0.05", "lr = 1e30").replace(
        "checkpoint_every = 2", "checkpoint_every = 1"
    )
    cfg = config(workspace, text, output="run-nan")
    with pytest.raises(TrainingDiverged, match=r"diverged at step (\d+).*last good checkpoint"):
        train(cfg, progress=False)
    state = torch.load(workspace / "run-nan" / "checkpoint.pt", weights_only=True)
    tensors = [v for v in state["net"].values() if isinstance(v, torch.Tensor)]
    assert tensors and all(torch.isfinite(v).all() for v in tensors)
    assert 1 <= state["step"] < 8


def test_data_set_of_another_psf_is_refused(workspace, reference):
    from lfm_recon import generate_psf

    other = generate_psf(reference, np.array([-20.0, 0.0, 20.0]), 1)
    simulate_dataset(other, 4, 0, lenslets=(7, 7), seed=1).save(workspace / "other.h5")
    cfg = config(workspace, CONFIG.replace('train = "data.h5"', 'train = "other.h5"'))
    with pytest.raises(LFMError, match=r"other\.h5 was simulated with PSF bank"):
        train(cfg, overwrite=True, progress=False)


# --- torchrun ---------------------------------------------------------------------------------
SCRIPT = """
import json, os, sys
import torch
from lfm_recon.training import TrainConfig, train
torch.set_num_threads(1)
cfg = TrainConfig.from_file(sys.argv[1], output=sys.argv[2])
result = train(cfg, overwrite=True, progress=False)
rank = os.environ.get("RANK", "0")
record = {"best": result.best, "history": result.history, "step": result.step}
with open(f"{sys.argv[2]}-result-{rank}.json", "w") as fh:
    json.dump(record, fh)
"""


def test_torchrun_two_processes_match_one(workspace, free_port):
    """2 processes (gloo) with half the batch each = 1 process with the whole batch."""
    script = workspace / "train_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    cfg_path = workspace / "ddp.toml"
    cfg_path.write_text(CONFIG.replace("steps = 8", "steps = 6"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port}",
    ]
    done = subprocess.run(
        [*run, str(script), str(cfg_path), str(workspace / "run-ddp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, str(script), str(cfg_path), str(workspace / "run-single")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a = torch.load(workspace / "run-ddp" / "checkpoint.pt", weights_only=True)
    b = torch.load(workspace / "run-single" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    # Every process returns the run's record (only rank 0 validates).
    import json

    ranks = [json.loads((workspace / f"run-ddp-result-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["best"] and ranks[0]["history"]
    assert ranks[0] == ranks[1]
    assert_same_state(a["net"], b["net"], rtol=1e-4, atol=1e-6)
    for key in a["adversary"]["disc"]:
        torch.testing.assert_close(
            a["adversary"]["disc"][key], b["adversary"]["disc"][key], rtol=1e-3, atol=1e-5
        )


# --- CLI -----------------------------------------------------------------------------------------
def test_cli_train(workspace, capsys):
    path = workspace / "cli.toml"
    path.write_text(CONFIG.replace("steps = 8", "steps = 4"))
    assert main(["train", str(path), "--output", str(workspace / "run-cli"), "-q"]) == 0
    assert (workspace / "run-cli" / "model.pt").is_file()
    path.write_text(CONFIG.replace("[model]", "[model]\nlayerz = 2"))
    assert main(["train", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s) ['layerz']" in err[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_cuda_training_runs_in_each_precision(workspace, precision):
    text = CONFIG.replace("seed = 3", f'seed = 3\ndevice = "cuda"\nprecision = "{precision}"')
    result = train(config(workspace, text, output=f"run-cuda-{precision}"), progress=False)
    assert result.step == 8 and np.isfinite(result.best["psnr"])
    model = load_model(result.model_path, device="cuda")
    assert model.op.device.type == "cuda"


def test_wgan_gp_and_tiff_unlabeled_light_fields(workspace):
    """WGAN-GP's penalty path, an SSIM term, and unlabeled frames from a TIFF stack."""
    import tifffile

    from lfm_recon.data import SimulatedData

    frames = SimulatedData.load(workspace / "data.h5").unlabeled[:, 0]
    tifffile.imwrite(workspace / "more.tif", frames, photometric="minisblack")
    text = (
        CONFIG.replace("adversarial = 0.05", 'adversarial = 0.05\ngan = "wgan-gp"\nssim = 0.1')
        .replace("unlabeled_batch_size = 2", 'unlabeled_batch_size = 2\nunlabeled = ["more.tif"]')
        .replace("warmup_steps = 4", "warmup_steps = 2")
    )
    cfg = config(workspace, text, output="run-wgan")
    assert cfg.data.unlabeled == (str(workspace / "more.tif"),)
    result = train(cfg, progress=False)
    assert result.step == 8 and np.isfinite(result.best["psnr"])
    last = result.history[-1]
    assert np.isfinite(last["loss_discriminator"]) and "loss_ssim" in last
