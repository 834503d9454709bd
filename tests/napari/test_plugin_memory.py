"""About two minutes of live training with strokes and pans: memory stays flat.

Memory is measured by what numpy has allocated (tracemalloc's numpy domain:
live buffers and their peak), not by time or RSS, so the figures do not
depend on how fast or busy the machine is.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]

TIMEOUT = 60_000
MiB = 2**20


def _numpy_bytes() -> tuple[int, int]:
    """(bytes, count) of the numpy buffers alive now."""
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    )
    stats = snap.statistics("filename")
    return sum(s.size for s in stats), sum(s.count for s in stats)


def test_strokes_and_pans_keep_numpy_memory_flat(trainer, qtbot):
    from napari_frontier._napari import layers as L

    viewer, widget = trainer
    session = widget.session
    scribbles = viewer.layers["scribbles"]
    original = scribbles.data.copy()
    h, w = original.shape
    rng = np.random.default_rng(0)
    arrays = {role: L.find_layer(viewer, role, L.Image).data for role in L.OVERLAYS}

    def stroke(i):
        if i % 4 == 3:  # back to the sample's strokes now and then (a whole-array change)
            scribbles.data = original.copy()
            return
        y, x = int(rng.integers(20, h - 20)), int(rng.integers(20, w - 60))
        scribbles.brush_size = 5
        for dx in range(0, 40, 4):
            scribbles.paint((y, x + dx), 1 + i % 2, refresh=False)
        scribbles.refresh()

    def pan():
        viewer.camera.center = (float(rng.uniform(0, h)), float(rng.uniform(0, w)))
        viewer.camera.zoom = float(rng.uniform(0.5, 3.0))

    def run(rounds):
        for i in range(rounds):
            stroke(i)
            if i % 2:
                pan()
            n = session.overlay_count
            qtbot.waitUntil(lambda n=n: session.overlay_count > n, timeout=TIMEOUT)
            qtbot.wait(300)

    tracemalloc.start(1)
    try:
        widget.start()
        run(8)  # warm-up: caches, the first deltas, napari's undo history filling
        base, base_count = _numpy_bytes()
        tracemalloc.reset_peak()
        overlays = session.overlay_count
        run(30)
        end, end_count = _numpy_bytes()
        peak = tracemalloc.get_traced_memory()[1]
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        widget.stop()
        qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    shown = session.overlay_count - overlays
    print(
        f"\nnumpy buffers: {base / MiB:.1f} MiB ({base_count}) after warm-up, "
        f"{end / MiB:.1f} MiB ({end_count}) after {shown} more overlays; "
        f"peak of all traced memory {(peak - current) / MiB:+.1f} MiB above the end"
    )
    assert shown >= 30
    # Nothing accumulates: live numpy memory and the number of buffers stay flat.
    assert end - base < 8 * MiB
    assert end_count - base_count < 500
    # No pile of overlays: the peak (a whole-slice prediction's temporaries in
    # the worker, about 13 slices of float32 here) stays bounded.
    slice_bytes = h * w * 4
    assert peak - current < 20 * slice_bytes
    # The overlay layers were written in place, never given new arrays.
    for role, data in arrays.items():
        assert L.find_layer(viewer, role, L.Image).data is data
    assert len(session.stroke_latencies) <= session.stroke_latencies.maxlen


@pytest.mark.parametrize("saves", [4])
def test_background_autosaves_keep_no_copy_of_the_scribbles(trainer, qtbot, tmp_path, saves):
    """Each autosave copies the scribbles; only the last copy may stay (to skip
    saving again when nothing changed), however many autosaves ran."""
    viewer, widget = trainer
    saver = widget.autosaver
    saver.folder = tmp_path
    saver.set_interval(0)
    scribbles = viewer.layers["scribbles"]
    copy_bytes = scribbles.data.nbytes
    tracemalloc.start()
    try:
        for i in range(saves):
            scribbles.data[i, :10] = 1  # something changed: a new file each time
            saver.autosave(background=True)
            qtbot.waitUntil(lambda n=i + 1: saver.count >= n and not saver.writing, timeout=TIMEOUT)
            if i == 0:
                first, _ = _numpy_bytes()
        last, _ = _numpy_bytes()
    finally:
        tracemalloc.stop()
    assert saver.count == saves
    assert last - first < copy_bytes, (last - first, copy_bytes)
