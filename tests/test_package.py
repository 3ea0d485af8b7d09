"""Packaging contracts: core import and HF Chronos loading are torch-free; the layers import
only downwards; the README commands and CI agree."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_jaxts_does_not_import_torch():
    code = "import sys, jaxts, jaxts.data, jaxts.layers; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# Makes `import torch` fail as it does where torch is not installed.
_NO_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
"""


def test_hf_chronos_directory_loads_without_torch(tmp_path):
    import jax
    import numpy as np
    from flax import nnx

    from bridges.chronos_t5 import save_hf
    from jaxts.models.chronos_t5 import ChronosT5, ChronosT5Config
    from jaxts.models.chronos_tokenizer import ChronosConfig
    from jaxts.models.t5 import T5Config
    from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline

    t5 = T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1,
                  num_heads=2)  # fmt: skip
    chronos = ChronosConfig(n_tokens=64, context_length=32, prediction_length=4)
    model = ChronosT5(ChronosT5Config(t5=t5, chronos=chronos), rngs=nnx.Rngs(3))
    save_hf(model, tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    x = np.sin(np.arange(40, dtype=np.float32) / 3)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "bin").mkdir()  # the old format needs torch: a one-line error, not a traceback
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "bin")
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")
    code = _NO_TORCH + (
        "import numpy as np, jax\n"
        "from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline\n"
        f"pipe = ChronosT5Pipeline.from_pretrained({str(tmp_path / 'hf')!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, pipe.predict(x, key=jax.random.key(1)))\n"
        "try:\n"
        f"    ChronosT5Pipeline.from_pretrained({str(tmp_path / 'bin')!r})\n"
        "except ValueError as e:\n"
        "    assert 'pytorch_model.bin: a PyTorch file; handling it needs torch' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('pytorch_model.bin loaded without torch')\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'torch']\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = ChronosT5Pipeline(model).predict(x, key=jax.random.key(1))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_the_blocker_blocks_torch():
    code = _NO_TORCH + "import torch"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "No module named 'torch'" in proc.stderr


_UPPER = {
    "jaxts": ("bridges", "train", "eval", "bench", "tests"),
    "bridges": ("train", "eval", "bench", "tests"),
    # the top layer: evaluation never trains (the Makefile makes missing checkpoints), and
    # nothing outside tests/ imports from it
    "eval": ("train", "bench", "tests"),
    "train": ("bench", "tests"),
    "bench": ("tests",),
}


@pytest.mark.parametrize("layer", sorted(_UPPER))
def test_layers_import_only_downwards(layer):
    """jaxts/ <- bridges/ <- train/, eval/, bench/ (eval/ not importing train/); the one exception: a pipeline's
    ``from_pretrained`` imports its family's bridge lazily (indented, inside the function)."""
    pattern = re.compile(rf"^(\s*)(?:from|import) ({'|'.join(_UPPER[layer])})\b", re.M)
    found = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for m in pattern.finditer(path.read_text()):
            lazy_bridge = m.group(2) == "bridges" and m.group(1) and path.parent.name == "pipelines"
            if not lazy_bridge:
                found.append(f"{path.relative_to(ROOT)}: {m.group(0).strip()}")
    assert not found


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_cmd = re.search(
        r"^(make \w+)\s+# creates \.venv/, runs the (?:whole )?test suite", readme, re.M
    )
    assert test_cmd, "README must state the test command"
    ci = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci[-1].strip() == test_cmd.group(1)


def test_plain_pytest_collects_from_the_repository_root():
    """The ``pytest`` script (not ``python -m pytest``, which puts the working directory on
    sys.path) must find ``tests.helpers`` and the repository packages."""
    script = Path(sys.executable).parent / "pytest"
    if not script.is_file():
        pytest.skip(f"no pytest script next to {sys.executable}")
    proc = subprocess.run(
        [str(script), "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/test_timer_xl_bridge.py"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test_from_openltm_returns_an_eval_mode_model" in proc.stdout
