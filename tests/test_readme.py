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


def test_readme_training_recipe_is_the_package_recipe():
    # The training TOML the README shows must be the recipe the benchmark
    # measured and the demo ships (lfm_recon.unfolded.RECIPE), and valid.
    import tomllib

    from lfm_recon.training import TrainConfig
    from lfm_recon.unfolded import RECIPE

    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    recipes = [tomllib.loads(b) for b in blocks if "[model]" in b and "[optim]" in b]
    assert len(recipes) == 1
    assert recipes[0]["model"] == RECIPE
    assert TrainConfig.from_dict(recipes[0]).model.holdout_refit == RECIPE["holdout_refit"]
