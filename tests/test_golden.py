"""A fixed-seed training run computes what it computed before (``tests/data/golden_training.npz``).

Refactors of training must leave this passing. When training is meant to
change, regenerate the file with ``python tests/data/make_golden.py`` and
say so in the commit. The run is made in a process of its own with torch's
portable CPU kernels, which give the same numbers on any x86-64 CPU with MKL
(``make_golden.REPRODUCIBLE_ENV``); the tolerance is for rounding only.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"


def _generator():
    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not torch.backends.mkl.is_available(),
    reason="the golden numbers are MKL's (x86-64); other BLAS libraries round differently",
)
def test_training_matches_the_golden_run(tmp_path):
    out = tmp_path / "run.npz"
    env = {**os.environ, **_generator().REPRODUCIBLE_ENV}
    subprocess.run(
        [sys.executable, str(DATA / "make_golden.py"), str(out)], env=env, check=True, timeout=600
    )
    got = np.load(out)
    want = np.load(DATA / "golden_training.npz")
    assert sorted(got.files) == sorted(want.files)
    for key in want.files:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-3, atol=1e-4, err_msg=key)
