"""Files and the command line: atomic writes, safe checkpoints, one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_frontier import cli
from napari_frontier.data.io import read_image, write_image
from napari_frontier.errors import CheckpointError, FrontierIOError
from napari_frontier.learning.config import TrainConfig
from napari_frontier.segmenter import Segmenter

FAST = TrainConfig(seed=0, threads=1, device="cpu")


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
def test_masks_round_trip(tmp_path, suffix):
    data = (np.arange(30 * 40) % 3).reshape(30, 40).astype(np.uint8) * 127
    path = write_image(tmp_path / f"m{suffix}", data)
    np.testing.assert_array_equal(read_image(path), data)
    assert [p.name for p in tmp_path.iterdir()] == [f"m{suffix}"]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import tifffile

    def boom(path, *a, **k):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    (tmp_path / "old.tif").write_bytes(b"keep")
    with pytest.raises(FrontierIOError, match="No space"):
        write_image(tmp_path / "old.tif", np.zeros((4, 4), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.tif"]
    assert (tmp_path / "old.tif").read_bytes() == b"keep"


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(FrontierIOError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    with pytest.raises(FrontierIOError, match="folder"):
        read_image(tmp_path)
    write_image(tmp_path / "real.png", np.zeros((4, 4), np.uint8))
    os.rename(tmp_path / "real.png", tmp_path / "fake.tif")  # a PNG named .tif
    with pytest.raises(FrontierIOError, match="cannot read"):
        read_image(tmp_path / "fake.tif")
    (tmp_path / "trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(FrontierIOError):
        read_image(tmp_path / "trunc.png")


@pytest.fixture
def trained(disk_image):
    image, scribbles, _ = disk_image
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(image, scribbles, steps=20)
    return seg, image


def test_checkpoint_reloads_identically(tmp_path, trained):
    seg, image = trained
    seg.save(tmp_path / "m.pt")
    again = Segmenter.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(
        seg.predict(image).probabilities, again.predict(image).probabilities
    )
    assert again.class_names == ("is", "is not") and again.step == seg.step


def test_bad_checkpoints_are_refused(tmp_path, trained):
    seg, _ = trained
    seg.save(tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        Segmenter.load(tmp_path / "trunc.pt")
    payload = seg.state_dict()
    payload["format_version"] = 99
    torch.save({"format": "napari-frontier", **payload}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer"):
        Segmenter.load(tmp_path / "newer.pt")
    payload = seg.state_dict()
    payload["model_config"]["width"] = 16
    torch.save({"format": "napari-frontier", "format_version": 1, **payload}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        Segmenter.load(tmp_path / "shape.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a napari-frontier"):
        Segmenter.load(tmp_path / "foreign.pt")


def test_checkpoints_with_settings_that_were_removed(tmp_path, trained):
    """Old checkpoints name removed settings: at the value every network has they load;
    another value is refused with a message that says which setting it is."""
    seg, image = trained
    payload = seg.state_dict()
    old = {"norm": "batch", "renorm_start": 0, "fuse": "add", "pixel_features": "fine"}
    payload["model_config"].update(old)
    payload["train_config"].update(focus=0.25, lr_decay_steps=100.0, smoothness_kind="crf")
    torch.save({"format": "napari-frontier", "format_version": 1, **payload}, tmp_path / "old.pt")
    again = Segmenter.load(tmp_path / "old.pt")
    np.testing.assert_array_equal(
        seg.predict(image).probabilities, again.predict(image).probabilities
    )
    payload["model_config"]["norm"] = "renorm"
    torch.save({"format": "napari-frontier", "format_version": 1, **payload}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"norm='renorm'.*no longer has.*retrain"):
        Segmenter.load(tmp_path / "bad.pt")


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "napari-frontier", "x": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        Segmenter.load(tmp_path / "evil.pt")
    assert not marker.exists()


def _run(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "napari_frontier.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_cli_train_predict_and_errors(tmp_path, disk_image):
    image, scribbles, truth = disk_image
    write_image(tmp_path / "img.tif", image)
    write_image(tmp_path / "scr.png", scribbles)
    r = _run(
        "train",
        "img.tif",
        "-s",
        "scr.png",
        "-o",
        "m.pt",
        "--steps",
        "30",
        "--threads",
        "1",
        "--smoothness",
        "0.5",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert Segmenter.load(tmp_path / "m.pt").train_config.smoothness == 0.5
    r = _run(
        "predict", "m.pt", "img.tif", "-o", "mask.tif", "--probabilities", "p.tif", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    mask = read_image(tmp_path / "mask.tif")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert ((mask == 255) == truth).mean() > 0.9
    assert read_image(tmp_path / "p.tif").shape == (2, *truth.shape)
    # several images: -o is a folder; an unreadable one is skipped and reported
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    r = _run(
        "predict", "m.pt", "img.tif", "broken.tif", "-o", "out", "--format", "labels", cwd=tmp_path
    )
    assert r.returncode == 1 and "skipped broken.tif" in r.stderr
    assert set(np.unique(read_image(tmp_path / "out" / "img.tif"))) <= {1, 2}
    # user errors: one line, exit 2, no traceback
    one_class = np.where(scribbles == 1, 1, 0).astype(np.uint8)
    write_image(tmp_path / "one.png", one_class)
    for args, needle in [
        (("train", "img.tif", "-s", "one.png", "-o", "x.pt", "--steps", "1"), "is not"),
        (("train", "img.tif", "-s", "missing.png", "-o", "x.pt"), "no such file"),
        (("predict", "img.tif", "img.tif", "-o", "x.tif"), "checkpoint"),
        (("predict", "m.pt", "broken.tif", "-o", "x.tif"), "cannot read"),
    ]:
        write_image(tmp_path / "small.png", scribbles[:10])
        r = _run(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = _run("train", "img.tif", "-s", "small.png", "-o", "x.pt", cwd=tmp_path)
    assert r.returncode == 2 and "shape" in r.stderr
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.tif").exists()


def test_cli_help_explains_options(capsys):
    for cmd in ("train", "predict", "export"):
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "--output" in text
        if cmd == "predict":  # the default mask keeps every class
            assert "labels for more classes" in " ".join(text.split())


def test_cli_export_program_matches_model(tmp_path, trained):
    seg, image = trained
    seg.save(tmp_path / "m.pt")
    assert cli.main(["export", str(tmp_path / "m.pt"), "-o", str(tmp_path / "m.pt2")]) == 0
    exported = torch.export.load(str(tmp_path / "m.pt2")).module()
    m = seg.model.config.multiple
    x = torch.from_numpy(seg.prepare(image[: 6 * m, : 5 * m]).x[None])  # any multiple of m
    model = seg.predict_model.eval()  # the checkpoint holds the predicting weights
    with torch.no_grad():
        np.testing.assert_allclose(exported(x).numpy(), model(x).numpy(), atol=1e-4)


def test_cli_predict_tta_equals_the_api_and_is_recorded(tmp_path, disk_image):
    from napari_frontier.outputs.provenance import read_provenance

    image, scribbles, _ = disk_image
    seg = Segmenter(train_config=TrainConfig(seed=0, threads=1), model_config=dict(width=8))
    seg.fit(image, scribbles, steps=20)
    seg.save(tmp_path / "m.pt")
    write_image(tmp_path / "img.tif", image)
    args = ["predict", str(tmp_path / "m.pt"), str(tmp_path / "img.tif"), "-q"]
    assert (
        cli.main(
            [
                *args,
                "-o",
                str(tmp_path / "a.tif"),
                "--probabilities",
                str(tmp_path / "pa.tif"),
                "--tta",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [*args, "-o", str(tmp_path / "b.tif"), "--probabilities", str(tmp_path / "pb.tif")]
        )
        == 0
    )
    seg.tta = True
    np.testing.assert_allclose(
        read_image(tmp_path / "pa.tif"), seg.predict(image).probabilities, atol=1e-5
    )
    seg.tta = False
    np.testing.assert_allclose(
        read_image(tmp_path / "pb.tif"), seg.predict(image).probabilities, atol=1e-5
    )
    assert read_provenance(tmp_path / "a.tif")["options"]["tta"] == "flips"
    assert "tta" not in read_provenance(tmp_path / "b.tif")["options"]


def test_cli_export_prints_no_library_warning(tmp_path, trained):
    seg, _ = trained
    seg.save(tmp_path / "m.pt")
    r = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "napari_frontier.cli",
            "export",
            "m.pt",
            "-o",
            "m.pt2",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    # our own message only (torch's logger once warned of the temporary's name)
    assert r.stderr.startswith("frontier: wrote m.pt2, a torch.export program")
    assert "warn" not in r.stderr.lower() and ".part" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt2"]


def _three_classes():
    r = np.random.default_rng(0)
    image = np.zeros((64, 64), np.float32)
    image[:, 21:42], image[:, 42:] = 100, 200
    image += r.normal(0, 5, image.shape).astype(np.float32)
    s = np.zeros((64, 64), np.uint8)
    s[10:50, 5:8], s[10:50, 30:33], s[10:50, 55:58] = 1, 2, 3
    return image, s


def test_cli_three_classes_keep_their_labels_and_frontier(tmp_path, capsys):
    import json

    image, scribbles = _three_classes()
    seg = Segmenter(n_classes=3, train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(image, scribbles, steps=60)
    seg.save(tmp_path / "m3.pt")
    write_image(tmp_path / "img.tif", image)
    args = ["predict", str(tmp_path / "m3.pt"), str(tmp_path / "img.tif")]
    out = ["-o", str(tmp_path / "m3.tif"), "--frontier", str(tmp_path / "f.geojson")]
    assert cli.main([*args, *out]) == 0
    mask = read_image(tmp_path / "m3.tif")
    np.testing.assert_array_equal(mask, seg.predict(image).labels)  # labels by default
    assert set(np.unique(mask)) == {1, 2, 3}
    assert "class labels 1..3" in capsys.readouterr().err
    doc = json.loads((tmp_path / "f.geojson").read_text())
    assert {f["properties"]["class"] for f in doc["features"]} == {1, 2, 3}  # every class
    assert cli.main([*args, "-o", str(tmp_path / "b.tif"), "--format", "binary"]) == 0
    assert set(np.unique(read_image(tmp_path / "b.tif"))) <= {0, 255}
    assert "0 = any other class" in capsys.readouterr().err
    code = cli.main([*args, *out, "--frontier-classes", "2,4"])
    assert code == 2 and "classes 4: the model has classes 1..3" in capsys.readouterr().err
    code = cli.main([*args, "-o", str(tmp_path / "c.tif"), "--frontier-classes", "all"])
    assert code == 2 and "give that too" in capsys.readouterr().err


def test_cli_train_reports_held_out_strokes_only_when_asked(tmp_path, disk_image):
    image, scribbles, _ = disk_image
    write_image(tmp_path / "img.tif", image)
    write_image(tmp_path / "scr.png", scribbles)
    base = ("train", "img.tif", "-s", "scr.png", "--steps", "5", "--threads", "1", "--width", "8")
    r = _run(*base, "-o", "a.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("frontier: trained 5 steps") and line.endswith("wrote a.pt")
    assert "held-out" not in line and "n/a" not in line
    r = _run(*base, "-o", "b.pt", "--holdout", "0.3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "on the held-out strokes" in r.stderr and "n/a" not in r.stderr
