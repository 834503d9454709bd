#!/usr/bin/env bash
# Set up (if needed), then open napari with the Scribble trainer docked and the
# nuclei sample (image + example scribbles) loaded. Without a display, or with
# --headless, run the same job on the command line instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--headless" ] || [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  [ "${1:-}" = "--headless" ] || echo "demo: no display found; running the headless job"
  out=$(mktemp -d)
  S=sample_data
  .venv/bin/frontier train $S/nuclei_image.tif -s $S/nuclei_scribbles.tif -o "$out/model.pt" --seconds 20
  .venv/bin/frontier predict "$out/model.pt" $S/nuclei_image.tif -o "$out/mask.tif" --probabilities "$out/probs.tif"
  .venv/bin/python - "$out/mask.tif" <<'PY'
import sys
from napari_frontier import read_image, score
from napari_frontier.learning.metrics import truth_from_mask
mask = read_image(sys.argv[1])
truth = read_image("sample_data/nuclei_truth.tif")
s = score((mask == 255) * 1 + (mask == 0) * 2, truth_from_mask(truth))
print(f"mask written to {sys.argv[1]}: IoU {s.foreground_iou:.3f}, Dice {s.foreground_dice:.3f}, boundary F1 {s.boundary_f1:.3f} against the ground truth")
PY
else
  exec .venv/bin/python scripts/demo.py
fi
