"""Every example script runs in its --quick mode (docs that run)."""

import subprocess
import sys
from pathlib import Path

import pytest
from lf_frames import SAMPLES

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("[0-9][0-9]_*.py"))
NEEDS_SAMPLES = {"05_real_data", "06_network_real_data"}  # read the real light-field samples


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_quick(script, tmp_path):
    argv = [sys.executable, str(script), "--quick", "-o", str(tmp_path)]
    if script.stem in NEEDS_SAMPLES:
        if not SAMPLES.is_dir():
            pytest.skip(f"real samples folder {SAMPLES} is absent (set LFM_SAMPLES to it)")
        argv += ["--samples", str(SAMPLES)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert any(tmp_path.iterdir())
