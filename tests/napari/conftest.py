"""GUI test fixtures: a viewer with the sample, the docked widget, no leaked threads."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_frontier.learning.config import TrainConfig

#: Small and fast: trainings in these tests last a few seconds on 2 cores.
SMALL_MODEL = dict(width=8, depth=1)
TEST_TRAIN = TrainConfig(threads=1, seed=0, update_interval=0.2)


@pytest.fixture(autouse=True)
def _no_leaked_workers(qtbot):
    """After each test: stop and wait for every napari/superqt worker."""
    yield
    from napari.qt.threading import WorkerBase
    from qtpy.QtCore import QThreadPool

    WorkerBase.await_workers(10_000)
    assert QThreadPool.globalInstance().waitForDone(10_000), "a worker thread is still running"


@pytest.fixture
def trainer(make_napari_viewer):
    """(viewer, widget) with the nuclei sample opened through the manifest."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-frontier", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    widget.session.configure(train_config=TEST_TRAIN, model_config=SMALL_MODEL)
    # As for a user who paints before pressing Train: the once-per-process
    # torch warm-up has finished (keeps the printed timings meaningful).
    from napari_frontier._napari.jobs import warmed_up

    assert warmed_up.wait(60)
    return viewer, widget
