"""Packaging contracts: core import is torch-free; the README commands and CI agree."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_jaxts_does_not_import_torch():
    code = "import sys, jaxts, jaxts.data, jaxts.layers; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_cmd = re.search(
        r"^(make \w+)\s+# creates \.venv/, runs the whole test suite", readme, re.M
    )
    assert test_cmd, "README must state the test command"
    ci = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci[-1].strip() == test_cmd.group(1)
