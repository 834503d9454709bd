"""benchmarks/quality.py with the patch jitter patched (a probe, run from the project root).

GAIN, SHIFT: amplitudes of the gain and of the shift (1 = the defaults);
PERCH=1: drawn per channel, as before 0f25292;
SHIFT_P: the shift applied to this share of patches only (1 = every patch).
"""

import os
import sys

import numpy as np

sys.path.insert(0, "benchmarks")
import napari_frontier.learning.sampling as s

GAIN = float(os.environ.get("GAIN", "1"))
SHIFT = float(os.environ.get("SHIFT", "1"))
PERCH = bool(int(os.environ.get("PERCH", "0")))
SHIFT_P = float(os.environ.get("SHIFT_P", "1"))


def _augment(x, t, rng, jitter=1.0):
    k = int(rng.integers(4))
    if k:
        x = np.rot90(x, k, axes=(1, 2))
        t = np.rot90(t, k)
    flip = rng.random() < 0.5
    if flip:
        x = x[:, :, ::-1]
        t = t[:, ::-1]
    x = np.array(x, dtype=np.float32)
    img = x[:-1]
    r, q = rng.random(2)
    if jitter:
        g = GAIN * jitter
        lo, hi = 1.25**-g, 1.25**g
        sh = SHIFT * jitter
        if SHIFT_P < 1 and rng.random() >= SHIFT_P:
            sh = 0.0
        if PERCH:  # the jitter of before 0f25292: drawn per channel
            for c in range(img.shape[0]):
                img[c] *= np.float32(lo + (hi - lo) * rng.random())
                img[c] += np.float32(-sh * 0.1 + 0.2 * sh * rng.random())
        else:
            img *= np.float32(lo + (hi - lo) * r)
            img += np.float32(-sh * 0.1 + 0.2 * sh * q)
    if rng.random() < 0.3:
        img += rng.normal(0, 0.02, size=img.shape).astype(np.float32)
    return x, np.ascontiguousarray(t)


s._augment = _augment
import quality  # noqa: E402

sys.argv = ["quality.py", *sys.argv[1:]]
quality.main()
