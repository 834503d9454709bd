"""Soak test: live training in a real napari viewer for minutes; memory and UI stalls.

Opens the nuclei sample with the Scribble trainer, trains live, and every few
seconds paints or erases a stroke (sent to the trainer) and pans/zooms the
camera (new live overlays), with the widget's autosave running. A 10 ms
QTimer heartbeat measures how long the event loop was blocked. Prints RSS at
start, after the warm-up and at the end, the growth rate after the warm-up,
and the longest stalls.

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/soak.py --minutes 10
    ... --size 4096     # the sample tiled to a 4096 x 4096 image
    ... --stack 64      # a 64-slice stack of the sample; pans also move the slider

A benchmark, not a test: it asserts nothing; numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to train")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline RSS")
    ap.add_argument("--stroke-every", type=float, default=3.0, help="seconds between strokes")
    ap.add_argument("--camera-every", type=float, default=7.0, help="seconds between pans")
    ap.add_argument("--autosave-every", type=float, default=60.0, help="autosave period (s)")
    ap.add_argument("--size", type=int, default=0, help="tile the sample to SIZE x SIZE")
    ap.add_argument("--stack", type=int, default=0, help="a stack of STACK shifted samples")
    ap.add_argument(
        "--erase",
        choices=("brush", "assign"),
        default="brush",
        help="erase with the eraser brush along an earlier stroke (what a person does; the "
        "default) or by assigning the original scribbles to the layer's data (a script or an "
        "undo of many strokes: whole-array diff after the debounce; the protocol before 2026-12-02)",
    )
    ap.add_argument(
        "--stall-profile",
        action="store_true",
        help="sample the main thread's stack during stalls > 50 ms; print where they are",
    )
    ap.add_argument(
        "--trace-numpy",
        action="store_true",
        help="trace numpy allocations; print what grew between the warm-up and the end",
    )
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="frontier-soak-")
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        os.makedirs(os.path.join(tmp, var.lower()), mode=0o700, exist_ok=True)
        os.environ[var] = os.path.join(tmp, var.lower())
    os.environ.setdefault("NAPARI_CONFIG", os.path.join(tmp, "napari.yaml"))
    os.environ.setdefault("MESA_SHADER_CACHE_DISABLE", "true")

    import psutil
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_frontier._napari.jobs import warmed_up

    proc = psutil.Process()
    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-frontier", "nuclei")
    if args.size or args.stack:
        base = viewer.layers["nuclei"].data
        marks = viewer.layers["scribbles"].data
        if args.size:
            reps = -(-args.size // base.shape[0]), -(-args.size // base.shape[1])
            image = np.tile(base, reps)[: args.size, : args.size]
            marks = np.tile(marks, reps)[: args.size, : args.size]
        else:
            image = np.stack([np.roll(base, 7 * z, axis=1) for z in range(args.stack)])
            marks = np.stack([np.roll(marks, 7 * z, axis=1) if z % 8 == 0 else 0 * marks
                              for z in range(args.stack)])  # fmt: skip
        viewer.layers["nuclei"].data = image
        viewer.layers["scribbles"].data = marks.astype(np.uint8)
        viewer.reset_view()
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    widget.autosaver.set_interval(int(args.autosave_every * 1000))
    scribbles = viewer.layers["scribbles"]
    original = scribbles.data.copy()
    h, w = original.shape[-2:]
    rng = np.random.default_rng(0)
    app = QApplication.instance()
    while not warmed_up.wait(0.05):
        app.processEvents()

    ticks: list[float] = []
    rss: list[tuple[float, float]] = []
    strokes = {"painted": 0, "erased": 0}
    t0 = time.perf_counter()

    def tick():
        ticks.append(time.perf_counter())

    def sample_rss():
        rss.append((time.perf_counter() - t0, proc.memory_info().rss / 2**20))

    live: list[tuple] = []  # strokes painted and not erased yet, oldest first

    def drag(start: tuple, label: int) -> None:
        # One stroke: 20 brush dabs along 40 px, as a mouse drag paints them.
        scribbles.brush_size = 5
        *lead, y, x = start
        for dx in range(0, 40, 2):
            scribbles.paint((*lead, y, x + dx), label, refresh=False)
        scribbles.refresh()

    def stroke():
        # Paint a short stroke, or (one time in four, and whenever ten are
        # live) erase one so the painted area stays bounded.
        if live and (rng.random() < 0.25 or len(live) >= 10):
            if args.erase == "assign":
                scribbles.data = original.copy()
                live.clear()
            else:
                drag(live.pop(0), 0)  # the eraser: label 0 along the oldest stroke
            strokes["erased"] += 1
            return
        label = int(rng.integers(1, 3))
        y, x = int(rng.integers(20, h - 20)), int(rng.integers(20, w - 60))
        lead = tuple(int(v) for v in viewer.dims.current_step[: original.ndim - 2])
        drag((*lead, y, x), label)
        live.append((*lead, y, x))
        strokes["painted"] += 1

    def camera():
        cam = viewer.camera
        cam.center = (float(rng.uniform(0, h)), float(rng.uniform(0, w)))
        cam.zoom = float(rng.uniform(0.5, 3.0)) * 512 / max(h, w)  # same share of the image
        if original.ndim > 2:
            viewer.dims.set_current_step(0, int(rng.integers(original.shape[0])))

    timers = []
    for interval, fn in (
        (10, tick),
        (1000, sample_rss),
        (args.stroke_every * 1000, stroke),
        (args.camera_every * 1000, camera),
    ):
        t = QTimer()
        t.setInterval(int(interval))
        t.timeout.connect(fn)
        t.start()
        timers.append(t)

    stall_stacks = _start_stall_profiler(ticks) if args.stall_profile else None
    snapshots = []
    if args.trace_numpy:
        import tracemalloc

        tracemalloc.start(12)

        def snap():
            snapshots.append(
                tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
                )
            )

        QTimer.singleShot(int(args.warmup * 1000), snap)
    sample_rss()
    click = time.perf_counter()
    widget.start()
    click = time.perf_counter() - click
    end_at = args.minutes * 60

    def finish():
        for t in timers[2:]:
            t.stop()
        widget.stop()

        if args.trace_numpy:
            snap()

        def wait_stopped():
            if widget.is_training or widget.autosaver.writing:
                QTimer.singleShot(100, wait_stopped)
            else:
                sample_rss()
                app.quit()

        wait_stopped()

    QTimer.singleShot(int(end_at * 1000), finish)
    app.exec()
    for t in timers:
        t.stop()

    session = widget.session
    gaps = np.diff(ticks)
    tick_t = np.asarray(ticks[:-1]) - t0
    after = gaps[tick_t >= args.warmup]
    times = np.array([t for t, _ in rss])
    mem = np.array([m for _, m in rss])
    start_mb = mem[0]
    warm_mb = mem[np.searchsorted(times, args.warmup)] if times[-1] > args.warmup else mem[-1]
    late = times >= args.warmup
    slope = np.polyfit(times[late] / 60, mem[late], 1)[0] if late.sum() > 10 else float("nan")
    worst = np.argsort(gaps)[::-1][:5]
    lat = np.asarray(session.stroke_latencies)
    what = f"{args.size}x{args.size} tiled" if args.size else f"{args.stack}-slice stack of the"
    what = what if args.size or args.stack else "the"
    print(
        f"soak: {args.minutes:g} min of live training in napari ({what} nuclei sample, default model)"
    )
    print(f"image {original.shape}; erasing by {args.erase}; Train click {click * 1000:.0f} ms")
    print(f"load average at the end: {os.getloadavg()}; cpu count {os.cpu_count()}")
    print(
        f"training steps: {session.history[-1].step if session.history else 0}; "
        f"overlays shown: {session.overlay_count}; strokes painted {strokes['painted']}, "
        f"erased {strokes['erased']}; scribble updates received by the trainer: "
        f"{session.scribbles_received}; autosaves: {widget.autosaver.count}"
    )
    if lat.size:
        print(
            f"stroke -> overlay latency: median {np.median(lat):.2f} s, "
            f"p95 {np.percentile(lat, 95):.2f} s, max {lat.max():.2f} s ({lat.size} strokes)"
        )
    print(
        f"RSS: start {start_mb:.0f} MiB, after warm-up ({args.warmup:g} s) {warm_mb:.0f} MiB, "
        f"end {mem[-1]:.0f} MiB, peak {mem.max():.0f} MiB; growth after warm-up "
        f"{mem[-1] - warm_mb:+.0f} MiB ({slope:+.2f} MiB/min fitted)"
    )
    every = max(1, round(args.minutes / 10))
    marks = range(0, int(times[-1] // 60) + 1, every)
    trend = ", ".join(
        f"{m}:{mem[min(np.searchsorted(times, m * 60), len(mem) - 1)]:.0f}" for m in marks
    )
    print(f"RSS (MiB) by minute: {trend}")
    if len(snapshots) == 2:
        first, last = snapshots
        total = sum(t.size for t in last.traces) - sum(t.size for t in first.traces)
        print(
            f"numpy buffers alive: {total / 2**20:+.1f} MiB from the warm-up to the end; grew most:"
        )
        for d in last.compare_to(first, "traceback")[:6]:
            frames = [f for f in d.traceback.format() if "File" in f][-4:]
            where = " < ".join(f.split('"')[1].split("/")[-1] + f.split(",")[1] for f in frames)
            print(f"  {d.size_diff / 2**20:+8.1f} MiB ({d.count_diff:+d} blocks)  {where}")
    print(
        f"event loop (10 ms heartbeat, {len(gaps)} ticks): longest stall {gaps.max() * 1000:.0f} ms "
        f"at t={tick_t[gaps.argmax()]:.0f} s; longest after warm-up {after.max() * 1000:.0f} ms; "
        f"p99 {np.percentile(gaps, 99) * 1000:.0f} ms (after warm-up "
        f"{np.percentile(after, 99) * 1000:.0f} ms); median {np.median(gaps) * 1000:.0f} ms; "
        f"stalls > 250 ms: {(gaps > 0.25).sum()}"
    )
    print(
        "five longest stalls: "
        + ", ".join(f"{gaps[i] * 1000:.0f} ms @ {tick_t[i]:.0f} s" for i in worst)
    )
    if stall_stacks is not None:
        from collections import Counter

        print("where the main thread was during stalls > 50 ms (samples every 5 ms):")
        for where, n in Counter(stall_stacks).most_common(12):
            print(f"  {n * 5:6d} ms  {where}")
    # app.quit() has closed the window already.
    return 0


def _start_stall_profiler(ticks: list) -> list:
    """Sample the main thread's innermost frames every 5 ms while the heartbeat is late."""
    import threading
    import traceback

    main_id = threading.main_thread().ident
    found: list[str] = []

    def sample():
        while True:
            time.sleep(0.005)
            if not ticks or time.perf_counter() - ticks[-1] < 0.05:
                continue
            frame = sys._current_frames().get(main_id)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)
            ours = [f for f in stack if "site-packages" not in f.filename or "napari" in f.filename]
            top = (ours or stack)[-3:]
            found.append(
                " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(top))
            )

    threading.Thread(target=sample, daemon=True).start()
    return found


if __name__ == "__main__":
    sys.exit(main())
