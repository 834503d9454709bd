"""A fixed-seed training run computes what it computed before (``tests/data/golden_training.npz``).

Refactors of training must leave this passing. When training is meant to
change, regenerate the file with ``python tests/data/make_golden.py`` and
say so in the commit. The tolerance absorbs other CPUs and thread counts.
"""

import importlib.util
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).parent / "data"


def _generator():
    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_matches_the_golden_run():
    threads = torch.get_num_threads()
    try:
        got = _generator().run()
    finally:
        torch.set_num_threads(threads)
    want = np.load(DATA / "golden_training.npz")
    assert sorted(got) == sorted(want.files)
    for key in want.files:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-3, atol=1e-4, err_msg=key)
