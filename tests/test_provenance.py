"""Outputs record where they came from; a batch resumes only what is up to date."""

import os

import numpy as np
import pytest

from napari_frontier import cli
from napari_frontier.data.io import read_image, write_image
from napari_frontier.learning.config import TrainConfig
from napari_frontier.outputs.batch import plan_batch, run_batch, summarize
from napari_frontier.outputs.provenance import (
    input_identity,
    model_checksum,
    part_files,
    read_provenance,
)
from napari_frontier.segmenter import Segmenter

zarr = pytest.importorskip("zarr")

FAST = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.05)


def _image(shape=(64, 72), seed=0):
    r = np.random.default_rng(seed)
    img = (r.random(shape) * 100).astype(np.float32)
    img[..., 20:40, 10:50] += 100
    return img


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two checkpoints: a model, and the same model trained a few steps more."""
    img = _image()
    s = np.zeros(img.shape, np.uint8)
    s[28:32, 15:45] = 1
    s[2:5] = 2
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(img, s, steps=5)
    folder = tmp_path_factory.mktemp("models")
    seg.save(folder / "m.pt")
    seg.fit(img, s, steps=3)
    seg.save(folder / "m2.pt")
    return folder / "m.pt", folder / "m2.pt"


def _cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _summary(err: str) -> str:
    return [line for line in err.splitlines() if line.startswith("frontier: ")][-1]


def test_single_named_output_is_always_written(tmp_path, models, capsys):
    m, m2 = models
    a, b = _image(seed=1), _image(seed=2)[:, ::-1].copy()
    write_image(tmp_path / "a.tif", a)
    write_image(tmp_path / "b.tif", b)
    out = tmp_path / "mask.tif"
    assert _cli(["predict", m, tmp_path / "a.tif", "-o", out], capsys)[0] == 0
    first = read_image(out)
    code, err = _cli(["predict", m, tmp_path / "b.tif", "-o", out, "-q"], capsys)
    assert code == 0 and "already" not in err and "skipped" not in err, err
    expected = Segmenter.load(m, device="cpu").predict(b).mask()
    np.testing.assert_array_equal(read_image(out), expected)
    assert not np.array_equal(first, expected)  # the test can tell a's mask from b's
    # retrained model, same input and output: written again
    _cli(["predict", m2, tmp_path / "b.tif", "-o", out], capsys)
    np.testing.assert_array_equal(read_image(out), Segmenter.load(m2).predict(b).mask())
    prov = read_provenance(out)
    assert prov["input"]["path"] == str((tmp_path / "b.tif").resolve())
    assert prov["model"] == model_checksum(Segmenter.load(m2, device="cpu"))


def test_batch_resume_redoes_what_changed(tmp_path, models, capsys):
    m, m2 = models
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.tif", _image(seed=1))
    write_image(src / "b.tif", _image(seed=2))
    out = tmp_path / "out"
    run = ["predict", m, src, "-o", out, "--probabilities", tmp_path / "probs"]
    code, err = _cli(run, capsys)
    assert code == 0 and _summary(err) == "frontier: 2 done", err
    for p in (out / "a.tif", tmp_path / "probs" / "a_probabilities.tif"):
        assert read_provenance(p)["options"]["format"] == "binary"

    # up to date: nothing rewritten
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    code, err = _cli(run, capsys)
    assert _summary(err) == "frontier: 0 done, 2 skipped (up to date)", err
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # a changed input (same size: only the modification time tells)
    a2 = _image(seed=3)
    write_image(src / "a.tif", a2)
    st = (src / "a.tif").stat()
    os.utime(src / "a.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    code, err = _cli(run, capsys)
    assert _summary(err) == "frontier: 0 done, 1 skipped (up to date), 1 redone (input changed)"
    np.testing.assert_array_equal(read_image(out / "a.tif"), Segmenter.load(m).predict(a2).mask())

    # a retrained model
    code, err = _cli(["predict", m2, *run[2:]], capsys)
    assert _summary(err) == "frontier: 0 done, 2 redone (model changed)", err
    # other options (format)
    code, err = _cli(["predict", m2, *run[2:], "--format", "labels"], capsys)
    assert _summary(err) == "frontier: 0 done, 2 redone (options changed)", err
    assert set(np.unique(read_image(out / "b.tif"))) <= {1, 2}

    # other input of the same name (another folder), and a crashed write
    other = tmp_path / "other"
    other.mkdir()
    write_image(other / "a.tif", _image(seed=4))
    (out / "b.tif").unlink()
    (out / ".b.tif.k3j4l5.part").write_bytes(b"half")
    code, err = _cli(
        ["predict", m2, other / "a.tif", src / "b.tif", "-o", out, "--probabilities",
         tmp_path / "probs", "--format", "labels"],
        capsys,
    )  # fmt: skip
    assert _summary(err) == "frontier: 0 done, 2 redone (other input: 1, interrupted: 1)", err
    assert not part_files(out / "b.tif")
    assert read_provenance(out / "a.tif")["input"]["path"] == str((other / "a.tif").resolve())

    # an output without provenance (older version, other tool); --overwrite redoes all
    write_image(out / "b.tif", np.zeros((64, 72), np.uint8))
    code, err = _cli(["predict", m2, src, "-o", out, "--format", "labels"], capsys)
    assert _summary(err) == "frontier: 0 done, 2 redone (other input: 1, no provenance: 1)", err
    code, err = _cli(["predict", m2, src, "-o", out, "--format", "labels", "--overwrite"], capsys)
    assert _summary(err) == "frontier: 0 done, 2 redone (overwrite)", err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_zarr_input_content_hash_and_zarr_output(tmp_path, models):
    m, _ = models
    seg = Segmenter.load(m, device="cpu")
    img = _image((64, 64), seed=5)
    z = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=img.shape, chunks=(32, 32),
                          dtype=img.dtype)  # fmt: skip
    z[...] = img
    (tmp_path / "out").mkdir()  # an existing folder: a batch, even of one input
    items = plan_batch([str(tmp_path / "in.zarr")], tmp_path / "out")
    assert items[0].resumable and items[0].lazy
    events = list(run_batch(seg, items, block=64))
    assert summarize(events) == "1 done"
    prov = read_provenance(items[0].mask)
    assert prov["input"]["sha256"] == input_identity(tmp_path / "in.zarr")["sha256"]
    assert summarize(list(run_batch(seg, items, block=64))) == "0 done, 1 skipped (up to date)"
    z[:32, :32] = img[:32, :32] + 1  # one chunk rewritten in place
    events = list(run_batch(seg, items, block=64))
    assert summarize(events) == "0 done, 1 redone (input changed)"


def test_model_checksum_follows_weights_not_files(tmp_path, models):
    m, m2 = models
    seg = Segmenter.load(m, device="cpu")
    seg.save(tmp_path / "again.pt")  # another file (another save time), same model
    assert model_checksum(Segmenter.load(tmp_path / "again.pt")) == model_checksum(seg)
    assert model_checksum(Segmenter.load(m2)) != model_checksum(seg)
