"""The layering of the package, as the import-linter contracts in pyproject.toml state it."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    # the lint-imports beside this interpreter (a venv's), else one on PATH
    here = Path(sys.executable).with_name("lint-imports")
    exe = str(here) if here.exists() else shutil.which("lint-imports")
    assert exe, "lint-imports not found: pip install 'napari-frontier[testing]'"
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"lint-imports failed:\n{r.stdout}\n{r.stderr}"
