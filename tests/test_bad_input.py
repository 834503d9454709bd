"""Bad input: a specific error naming the problem, in the engine and the CLI; nothing lost.

Each table row is one bad input. The same rows go through :class:`Segmenter`
(the exception type and message) and through ``frontier`` (one line on
stderr, exit status 2, no traceback, no output file).
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from napari_frontier import cli
from napari_frontier.data.io import write_image
from napari_frontier.errors import (
    CheckpointError,
    FrontierError,
    FrontierIOError,
    ImageError,
    ProjectError,
    ScribbleError,
    ShapeMismatchError,
)
from napari_frontier.learning.config import TrainConfig
from napari_frontier.segmenter import Segmenter

FAST = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.05)
SMALL = dict(width=8, depth=1)
H = W = 32


def _image(dtype=np.float32):
    r = np.random.default_rng(0)
    return (r.random((H, W)) * 100).astype(dtype)


def _scribbles(dtype=np.uint8):
    s = np.zeros((H, W), dtype)
    s[4:10, 4:28] = 1
    s[20:26, 4:28] = 2
    return s


def _with(a, where, value):
    a = a.copy()
    a[where] = value
    return a


# (id, image, scribbles, error type, words the message must contain)
REFUSED = [
    ("shape-mismatch", _image(), _scribbles()[:16], ShapeMismatchError, "shape"),
    ("scribbles-transposed", _image()[:, :20], _scribbles()[:20], ShapeMismatchError, "shape"),
    ("value-above-k", _image(), _with(_scribbles(), (0, 0), 3), ScribbleError, "1..2"),
    ("value-255", _image(), _with(_scribbles(), (0, 0), 255), ScribbleError, "255"),
    ("negative", _image(), _with(_scribbles(np.int8), (0, 0), -1), ScribbleError, "-1"),
    (
        "uint32-huge",
        _image(),
        _with(_scribbles(np.uint32), (0, 0), 2**32 - 1),
        ScribbleError,
        "4294967295",
    ),
    ("int64-huge", _image(), _with(_scribbles(np.int64), (0, 0), 2**62), ScribbleError, "allowed"),
    (
        "fractional",
        _image(),
        _with(_scribbles(np.float32), (0, 0), 1.5),
        ScribbleError,
        "whole numbers",
    ),
    (
        "nan-scribbles",
        _image(),
        _with(_scribbles(np.float32), (0, 0), np.nan),
        ScribbleError,
        "whole numbers",
    ),
    (
        "only-is",
        _image(),
        np.where(_scribbles() == 1, 1, 0).astype(np.uint8),
        ScribbleError,
        '"is not"',
    ),
    (
        "only-is-not",
        _image(),
        np.where(_scribbles() == 2, 2, 0).astype(np.uint8),
        ScribbleError,
        '1 ("is")',
    ),
    ("no-strokes", _image(), np.zeros((H, W), np.uint8), ScribbleError, "no painted pixel"),
    ("bool-scribbles", _image(), _scribbles() == 1, ScribbleError, '"is not"'),
    (
        "painted-only-on-nan",
        _with(_image(), (slice(20, 26),), np.nan),
        _scribbles(),
        ScribbleError,
        "valid",
    ),
    (
        "empty-image",
        np.zeros((0, 0), np.float32),
        np.zeros((0, 0), np.uint8),
        ImageError,
        "no pixels",
    ),
    (
        "empty-rows",
        np.zeros((0, W), np.float32),
        np.zeros((0, W), np.uint8),
        ImageError,
        "no pixels",
    ),
    (
        "one-pixel",
        np.ones((1, 1), np.float32),
        np.ones((1, 1), np.uint8),
        ImageError,
        "too small",
    ),
    ("all-nan", np.full((H, W), np.nan, np.float32), _scribbles(), ImageError, "no valid pixel"),
    ("all-inf", np.full((H, W), -np.inf), _scribbles(), ImageError, "no valid pixel"),
    ("all-constant", np.full((H, W), 7.0, np.float32), _scribbles(), ImageError, "same value"),
    ("all-true-bool", np.ones((H, W), bool), _scribbles(), ImageError, "same value"),
    ("constant-rgb", np.full((H, W, 3), 200, np.uint8), _scribbles(), ImageError, "same value"),
    # N-D images are stacks (slice axes before Y, X): 2D scribbles do not fit them.
    (
        "4d-image",
        np.zeros((2, 2, H, W), np.float32),
        _scribbles(),
        ShapeMismatchError,
        "scribbles have shape",
    ),
    (
        "3d-stack-2d-strokes",
        np.zeros((5, H, W), np.float32),
        _scribbles(),
        ShapeMismatchError,
        "scribbles have shape",
    ),
    ("complex-dtype", _image().astype(np.complex64), _scribbles(), ImageError, "dtype"),
    ("text-scribbles", _image(), np.full((H, W), "a"), ScribbleError, "integer"),
]

# Awkward but valid: trains, and predictions are finite where the input is.
ACCEPTED = [
    ("two-pixels", np.array([[0.0, 1.0]], np.float32), np.array([[1, 2]], np.uint8)),
    ("one-row", _image()[:1], _scribbles()[[4]] + _with(np.zeros((1, W), np.uint8), (0, 30), 2)),
    ("uint32-huge", (_image() * 4e7).astype(np.uint32), _scribbles()),
    ("uint32-max", _with(_image(np.uint32), (0, 0), 2**32 - 1), _scribbles()),
    ("int64-huge", (_image().astype(np.int64) - 50) * 2**56, _scribbles()),
    ("uint64-max", _with(_image(np.uint64), (1, 1), 2**64 - 1), _scribbles()),
    ("int8-negative", (_image() - 50).astype(np.int8), _scribbles()),
    ("bool-image", _image() > 50, _scribbles()),
    ("float16", _image(np.float16), _scribbles()),
    ("float32-near-max", _image() * np.float32(3e36), _scribbles()),
    ("float64-extreme", (_image().astype(np.float64) - 50) * 3e306, _scribbles()),
    ("with-inf", _with(_image(), (slice(0, 3),), np.inf), _scribbles()),
    ("with-nan", _with(_image(), (slice(0, 3),), np.nan), _scribbles()),
    ("int-scribbles-float-dtype", _image(), _scribbles(np.float64)),
    ("rgb-uint16", np.stack([_image(np.uint16)] * 3, -1), _scribbles(np.uint16)),
]


def _ids(table):
    return [row[0] for row in table]


@pytest.mark.parametrize(
    ("name", "image", "scribbles", "error", "needle"), REFUSED, ids=_ids(REFUSED)
)
def test_engine_refuses_bad_input(name, image, scribbles, error, needle):
    seg = Segmenter(train_config=FAST, model_config=SMALL)
    with pytest.raises(error) as info:
        seg.fit(image, scribbles, steps=2)
    assert needle in str(info.value)
    assert isinstance(info.value, FrontierError)
    assert seg.step == 0


@pytest.mark.parametrize(("name", "image", "scribbles"), ACCEPTED, ids=_ids(ACCEPTED))
def test_engine_handles_awkward_input(name, image, scribbles):
    seg = Segmenter(train_config=FAST, model_config=SMALL)
    upd = seg.fit(image, scribbles, steps=3)
    assert np.isfinite(upd.loss)
    pred = seg.predict(image)
    p = pred.probabilities
    assert p.shape == (2, *scribbles.shape)
    assert np.isfinite(p[:, pred.valid]).all() and np.isnan(p[:, ~pred.valid]).all()
    np.testing.assert_allclose(p[:, pred.valid].sum(0), 1.0, atol=1e-5)
    x = seg.prepare(image).x
    assert np.isfinite(x).all() and np.abs(x).max() <= 5.0  # normalised, no overflow


def test_prediction_of_constant_image_is_allowed():
    """Only *training* on a constant image is refused; predicting it is fine."""
    seg = Segmenter(train_config=FAST, model_config=SMALL)
    seg.fit(_image(), _scribbles(), steps=2)
    p = seg.predict(np.full((H, W), 3.0)).probabilities
    assert np.isfinite(p).all()


# -- the same through the command line ------------------------------------------
def _cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def _assert_one_line_error(code, err, needle):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("frontier: error:") and "Traceback" not in err
    assert needle in err, err


TRAIN = ("--steps", "2", "--width", "8", "--depth", "1", "--threads", "1", "-q")


@pytest.mark.parametrize(
    ("name", "image", "scribbles", "error", "needle"), REFUSED, ids=_ids(REFUSED)
)
def test_cli_refuses_bad_input(tmp_path, capsys, name, image, scribbles, error, needle):
    np.save(tmp_path / "image.npy", image, allow_pickle=False)
    np.save(tmp_path / "scribbles.npy", scribbles, allow_pickle=False)
    out = tmp_path / "model.pt"
    code, err = _cli(
        capsys, "train", tmp_path / "image.npy", "-s", tmp_path / "scribbles.npy", "-o", out, *TRAIN
    )
    _assert_one_line_error(code, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.npy", "scribbles.npy"]


@pytest.mark.parametrize(("name", "image", "scribbles"), ACCEPTED[:6], ids=_ids(ACCEPTED[:6]))
def test_cli_handles_awkward_input(tmp_path, capsys, name, image, scribbles):
    np.save(tmp_path / "image.npy", image, allow_pickle=False)
    np.save(tmp_path / "scribbles.npy", scribbles, allow_pickle=False)
    code, err = _cli(
        capsys,
        "train",
        tmp_path / "image.npy",
        "-s",
        tmp_path / "scribbles.npy",
        "-o",
        tmp_path / "m.pt",
        *TRAIN,
    )
    assert code == 0, err
    code, err = _cli(
        capsys,
        "predict",
        tmp_path / "m.pt",
        tmp_path / "image.npy",
        "-o",
        tmp_path / "mask.npy",
        "-q",
    )
    assert code == 0, err
    assert np.load(tmp_path / "mask.npy").shape == scribbles.shape


# -- unreadable files ---------------------------------------------------------------
class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _bad_files(tmp_path):
    """name -> (path, words of the message)."""
    d = tmp_path / "bad"
    d.mkdir()
    write_image(d / "real.png", _scribbles())
    os.replace(d / "real.png", d / "png-named.tif")
    write_image(d / "full.tif", _image())
    data = (d / "full.tif").read_bytes()
    (d / "truncated.tif").write_bytes(data[: len(data) // 3])
    write_image(d / "real.tif", _image())
    os.replace(d / "real.tif", d / "tiff-named.png")
    (d / "empty.png").write_bytes(b"")
    (d / "garbage.npy").write_bytes(b"\x00garbage" * 20)
    (d / "notes.txt").write_text("hello")
    (d / "folder.tif").mkdir()
    np.save(
        d / "pickled.npy", np.array([_Payload(tmp_path / "pwned")], dtype=object), allow_pickle=True
    )
    return {
        "missing": (d / "missing.tif", "no such file"),
        "folder": (d / "folder.tif", "is a folder"),
        "png-named-tif": (d / "png-named.tif", "PNG file named .tif"),
        "truncated": (d / "truncated.tif", "cannot read"),
        "empty": (d / "empty.png", "empty"),
        "garbage-npy": (d / "garbage.npy", "cannot read"),
        "unsupported": (d / "notes.txt", "unsupported"),
        "pickled-npy": (d / "pickled.npy", "cannot read"),
    }


BAD_FILES = [
    "missing",
    "folder",
    "png-named-tif",
    "truncated",
    "empty",
    "garbage-npy",
    "unsupported",
    "pickled-npy",
]


@pytest.mark.parametrize("which", BAD_FILES)
def test_unreadable_files(tmp_path, capsys, which):
    from napari_frontier.data.io import read_image

    path, needle = _bad_files(tmp_path)[which]
    with pytest.raises(FrontierIOError, match=needle):
        read_image(path)
    write_image(tmp_path / "s.png", _scribbles())
    code, err = _cli(
        capsys, "train", path, "-s", tmp_path / "s.png", "-o", tmp_path / "m.pt", *TRAIN
    )
    _assert_one_line_error(code, err, needle)
    assert not (tmp_path / "m.pt").exists()
    assert not (tmp_path / "pwned").exists()


def test_tiff_named_png_is_read_by_its_content(tmp_path):
    """imageio looks at the content: a mislabelled TIFF still reads correctly."""
    from napari_frontier.data.io import read_image

    write_image(tmp_path / "real.tif", _image())
    os.replace(tmp_path / "real.tif", tmp_path / "tiff-named.png")
    np.testing.assert_array_equal(read_image(tmp_path / "tiff-named.png"), _image())


# -- bad output locations (the CLI refuses before training) -------------------------
@pytest.mark.parametrize("where", ["missing-folder", "is-a-folder", "read-only"])
def test_cli_checks_output_before_training(tmp_path, capsys, monkeypatch, where):
    import tempfile

    import napari_frontier.segmenter as segmenter

    np.save(tmp_path / "i.npy", _image())
    np.save(tmp_path / "s.npy", _scribbles())
    out = {
        "missing-folder": tmp_path / "nope" / "m.pt",
        "is-a-folder": tmp_path,
        "read-only": tmp_path / "m.pt",
    }[where]
    if where == "read-only":
        # Root ignores permission bits, so refuse the write the way the OS would.
        def refuse(*a, **k):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    trained = []
    monkeypatch.setattr(
        segmenter.Segmenter, "training", lambda *a, **k: trained.append(1) or iter(())
    )
    code, err = _cli(
        capsys, "train", tmp_path / "i.npy", "-s", tmp_path / "s.npy", "-o", out, *TRAIN
    )
    needle = {
        "missing-folder": "does not exist",
        "is-a-folder": "is a folder",
        "read-only": "Permission denied",
    }[where]
    _assert_one_line_error(code, err, needle)
    assert not trained  # failed in a second, not after the training budget
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.npy", "s.npy"]


# -- checkpoints ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    seg = Segmenter(train_config=FAST, model_config=SMALL)
    seg.fit(_image(), _scribbles(), steps=3)
    seg.save(d / "good.pt")
    seg3 = Segmenter(n_classes=3, train_config=FAST, model_config=SMALL)
    s3 = _with(_scribbles(), (slice(28, 30),), 3)
    seg3.fit(_image(), s3, steps=2)
    seg3.save(d / "three.pt")
    rgb = Segmenter(train_config=FAST, model_config=SMALL)
    rgb.fit(np.stack([_image()] * 3, -1), _scribbles(), steps=2)
    rgb.save(d / "rgb.pt")
    return seg, d


def _bad_checkpoints(seg, d, tmp_path):
    """name -> (path, error type, words)."""
    marker = tmp_path / "pwned"
    good = (d / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    payload = seg.state_dict()
    newer = {"format": "napari-frontier", **payload, "format_version": 2}
    torch.save(newer, tmp_path / "newer.pt")
    wide = {"format": "napari-frontier", "format_version": 1, **payload}
    wide["model_config"] = {**payload["model_config"], "width": 16}
    torch.save(wide, tmp_path / "other-shape.pt")
    classes = {"format": "napari-frontier", "format_version": 1, **payload, "n_classes": 3}
    torch.save(classes, tmp_path / "other-classes.pt")
    missing = {"format": "napari-frontier", "format_version": 1, "step": 3}
    torch.save(missing, tmp_path / "no-weights.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    evil = {"format": "napari-frontier", "format_version": 1, "x": _Payload(marker)}
    torch.save(evil, tmp_path / "evil-zip.pt")
    torch.save(evil, tmp_path / "evil-legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "evil-pickle.pt").write_bytes(pickle.dumps(evil))
    (tmp_path / "folder.pt").mkdir()
    return marker, {
        "truncated": (tmp_path / "truncated.pt", CheckpointError, "not a readable checkpoint"),
        "empty": (tmp_path / "empty.pt", CheckpointError, "not a readable checkpoint"),
        "newer-format": (tmp_path / "newer.pt", CheckpointError, "newer"),
        "other-shape": (tmp_path / "other-shape.pt", CheckpointError, "does not match"),
        "other-class-count": (tmp_path / "other-classes.pt", CheckpointError, "class count"),
        "no-weights": (tmp_path / "no-weights.pt", CheckpointError, "does not match"),
        "not-a-dict": (tmp_path / "list.pt", CheckpointError, "not a napari-frontier"),
        "foreign-dict": (tmp_path / "foreign.pt", CheckpointError, "not a napari-frontier"),
        "malicious-zip": (tmp_path / "evil-zip.pt", CheckpointError, "refused"),
        "malicious-legacy": (tmp_path / "evil-legacy.pt", CheckpointError, "refused"),
        "malicious-pickle": (tmp_path / "evil-pickle.pt", CheckpointError, "refused"),
        "folder": (tmp_path / "folder.pt", CheckpointError, "no such checkpoint"),
        "missing": (tmp_path / "missing.pt", CheckpointError, "no such checkpoint"),
    }


BAD_CHECKPOINTS = [
    "truncated",
    "empty",
    "newer-format",
    "other-shape",
    "other-class-count",
    "no-weights",
    "not-a-dict",
    "foreign-dict",
    "malicious-zip",
    "malicious-legacy",
    "malicious-pickle",
    "folder",
    "missing",
]


@pytest.mark.parametrize("which", BAD_CHECKPOINTS)
def test_bad_checkpoint_refused(tmp_path, capsys, trained_model, which):
    seg, d = trained_model
    marker, table = _bad_checkpoints(seg, d, tmp_path)
    path, error, needle = table[which]
    with pytest.raises(error, match=needle):
        Segmenter.load(path)
    np.save(tmp_path / "i.npy", _image())
    code, err = _cli(capsys, "predict", path, tmp_path / "i.npy", "-o", tmp_path / "mask.tif", "-q")
    _assert_one_line_error(code, err, needle)
    code, err = _cli(capsys, "info", path)
    if which in ("other-shape", "other-class-count", "no-weights"):
        assert code == 0  # a well-formed file: `info` shows what it holds
    else:
        _assert_one_line_error(code, err, needle)
    assert not marker.exists(), "unpickling ran code"
    assert not (tmp_path / "mask.tif").exists()


def test_model_for_other_channels_refused(tmp_path, capsys, trained_model):
    _, d = trained_model
    seg = Segmenter.load(d / "rgb.pt")
    with pytest.raises(ShapeMismatchError, match="channel"):
        seg.predict(_image())
    np.save(tmp_path / "i.npy", _image())
    code, err = _cli(capsys, "predict", d / "rgb.pt", tmp_path / "i.npy", "-o", tmp_path / "m.tif")
    _assert_one_line_error(code, err, "channel")
    seg3 = Segmenter.load(d / "three.pt")  # a 3-class model: K = 3 outputs, fine
    assert seg3.predict(_image()).probabilities.shape == (3, H, W)


def test_project_errors_are_clear(tmp_path, capsys):
    from napari_frontier.outputs.project import load_project, save_project

    (tmp_path / "fake.frontier").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ProjectError, match="not a readable"):
        load_project(tmp_path / "fake.frontier")
    save_project(tmp_path / "no-model.frontier", _scribbles(), image=_image())
    np.save(tmp_path / "i.npy", _image())
    code, err = _cli(
        capsys,
        "predict",
        tmp_path / "no-model.frontier",
        tmp_path / "i.npy",
        "-o",
        tmp_path / "m.tif",
    )
    _assert_one_line_error(code, err, "no model")
    write_image(tmp_path / "img.tif", _image())
    save_project(
        tmp_path / "ref.frontier", _scribbles(), image=_image(), image_path=tmp_path / "img.tif"
    )
    os.remove(tmp_path / "img.tif")
    with pytest.raises(FrontierIOError, match="missing"):
        load_project(tmp_path / "ref.frontier")
    write_image(tmp_path / "img.tif", _image()[:10])  # replaced by another image
    with pytest.raises(ProjectError, match="do not fit"):
        load_project(tmp_path / "ref.frontier")
