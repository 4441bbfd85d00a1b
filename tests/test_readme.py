"""The Python snippets of README.md run as written (docs that run)."""

import re
from pathlib import Path

from lfm_recon import Microscope

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    Microscope.preset("reference").save("my_scope.toml")  # the file the README assumes
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["y"].shape[-2:] == (21 * 15, 21 * 15)
    assert (tmp_path / "bank.h5").exists()
