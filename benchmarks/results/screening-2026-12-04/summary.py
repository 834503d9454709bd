"""Per-half table: features=both (pixel readout) against filters, seed 0/1 medians at 150/300/1500 steps."""

import re
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse(paths):
    d = {}
    for p in paths:
        for line in Path(p).read_text().splitlines():
            m = re.match(
                r"\s+(\S+) frontier seed (\d+): 150:([\d.]+) 300:([\d.]+) 1500:([\d.]+)", line
            )
            if m:
                d.setdefault(m[1], {})[int(m[2])] = tuple(float(v) for v in m.groups()[2:])
    return d


R = str(HERE.parent / "screening-2026-12-03") + "/"
base = parse(
    [
        R + "q13_defaults_same_session.txt",
        R + "q27_jitter_shared_rgb.txt",
        R + "q39_hue_blobs_defaults.txt",
        str(HERE / "q3_filters_he_nuclei.txt"),
    ]
)
new = parse(
    [
        str(HERE / "q1_both_pixel_readout_halfA.txt"),
        str(HERE / "q2_both_pixel_readout_halfB_partial.txt"),
    ]
)
A = [
    "food_4class",
    "ct_lung_tumour",
    "hela_nuclei",
    "he_nuclei",
    "textures",
    "gravel_on_grass",
    "hue_blobs",
]
B = ["food_rice", "mri_brain_tumour", "huh7_cells", "nuclei", "brick_on_gravel", "noisy_blobs"]


def med(v, i, seeds=None):
    xs = [t[i] for s, t in v.items() if seeds is None or s in seeds]
    return statistics.median(xs) if xs else float("nan")


for name, half in (("A", A), ("B", B)):
    print(f"-- half {name}")
    rows = []
    for c in half:
        b, n = base.get(c, {}), new.get(c, {})
        rb = [med(b, i, {0, 1}) for i in range(3)]
        rn = [med(n, i) for i in range(3)]
        sp = max(t[2] for t in n.values()) - min(t[2] for t in n.values()) if n else float("nan")
        rows.append((c, rb, rn, sp))
        print(
            f"{c:18s} filters "
            + " ".join(f"{v:.3f}" for v in rb)
            + "   both "
            + " ".join(f"{v:.3f}" for v in rn)
            + f"  spread {sp:.3f}  seeds {sorted(n)}"
        )
    ok = [r for r in rows if not any(v != v for v in r[1] + r[2])]
    for lab, j in (("filters", 1), ("both", 2)):
        print(
            f"{'mean ' + lab:18s} "
            + " ".join(f"{statistics.mean(r[j][i] for r in ok):.3f}" for i in range(3)),
            " worst",
            " ".join(f"{min(r[j][i] for r in ok):.3f}" for i in range(3)),
            f"(n={len(ok)})",
        )
