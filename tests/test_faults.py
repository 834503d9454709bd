"""Faults survived: failed writes, failed training steps, out of memory; projects round-trip."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_frontier import cli
from napari_frontier.data.io import save_checkpoint, write_image
from napari_frontier.errors import FrontierIOError
from napari_frontier.learning.config import TrainConfig, TrainingDiverged, TrainingOutOfMemory
from napari_frontier.outputs.project import load_model, load_project, save_project
from napari_frontier.segmenter import Segmenter

FAST = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.0)
SMALL = dict(width=8, depth=1)


# -- output faults ----------------------------------------------------------------
@pytest.fixture
def tiny_tmpfs():
    """A 64 KiB tmpfs (a really full disk); skipped where mounting is not allowed."""
    where = Path(f"/tmp/frontier-tmpfs-{uuid.uuid4().hex[:8]}")
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True
    )
    if r.returncode != 0:
        where.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


def _writers(seg, image):
    """name -> function(path) writing one kind of file."""
    return {
        "mask-tif": lambda p: write_image(p.with_suffix(".tif"), image),
        "probabilities-npy": lambda p: write_image(p.with_suffix(".npy"), image),
        "checkpoint": lambda p: seg.save(p.with_suffix(".pt")),
        "project": lambda p: save_project(p.with_suffix(".frontier"), image > 0.5, image=image),
    }


@pytest.fixture(scope="module")
def seg_and_image():
    r = np.random.default_rng(0)
    image = r.random((256, 256)).astype(np.float32)  # 256 KiB, incompressible
    scribbles = np.zeros((256, 256), np.uint8)
    scribbles[10:20, 10:100], scribbles[100:110, 10:100] = 1, 2
    seg = Segmenter(train_config=FAST, model_config=dict(width=16, depth=2))
    seg.fit(image, scribbles, steps=2)
    return seg, image


@pytest.mark.parametrize("kind", ["mask-tif", "probabilities-npy", "checkpoint", "project"])
def test_full_disk_leaves_previous_file_and_no_partial(tiny_tmpfs, seg_and_image, kind):
    seg, image = seg_and_image
    write = _writers(seg, image)[kind]
    target = tiny_tmpfs / "out"
    suffix = {"mask-tif": ".tif", "probabilities-npy": ".npy", "checkpoint": ".pt"}.get(
        kind, ".frontier"
    )
    previous = target.with_suffix(suffix)
    previous.write_bytes(b"previous version")
    with pytest.raises(FrontierIOError, match="No space left"):
        write(target)
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == [previous.name]
    assert previous.read_bytes() == b"previous version"


def test_read_only_filesystem(tiny_tmpfs, seg_and_image):
    seg, image = seg_and_image
    (tiny_tmpfs / "old.tif").write_bytes(b"old")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    for name, write in _writers(seg, image).items():
        with pytest.raises(FrontierIOError, match="Read-only file system"):
            write(tiny_tmpfs / "old")
        assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["old.tif"], name
    assert (tiny_tmpfs / "old.tif").read_bytes() == b"old"


@pytest.mark.parametrize("kind", ["mask-tif", "probabilities-npy", "checkpoint", "project"])
def test_simulated_write_error_mid_write(tmp_path, monkeypatch, seg_and_image, kind):
    """The data is written, then the disk fills up at the flush: nothing partial stays."""
    seg, image = seg_and_image
    write = _writers(seg, image)[kind]
    before = {p.name for p in tmp_path.iterdir()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(FrontierIOError, match="No space left"):
        write(tmp_path / "out")
    assert {p.name for p in tmp_path.iterdir()} == before


def test_cli_rescues_model_when_save_fails(tmp_path, monkeypatch, capsys, disk_image):
    """Minutes of training are not lost to a full disk: the model goes to the autosave folder."""
    import napari_frontier.data.io as fio

    image, scribbles, _ = disk_image
    np.save(tmp_path / "i.npy", image)
    np.save(tmp_path / "s.npy", scribbles)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    real = fio.save_checkpoint
    out = tmp_path / "model.pt"

    def full_at_output(path, payload):
        if Path(path) == out:
            raise FrontierIOError(f"{path}: write failed (No space left on device)")
        return real(path, payload)

    monkeypatch.setattr(fio, "save_checkpoint", full_at_output)
    monkeypatch.setattr("napari_frontier.segmenter.save_checkpoint", full_at_output)
    argv = ["train", str(tmp_path / "i.npy"), "-s", str(tmp_path / "s.npy"), "-o", str(out)]
    code = cli.main([*argv, "--steps", "3", "--width", "8", "--depth", "1", "--threads", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "No space left" in err and "saved to" in err
    rescued = Path(err.split("saved to ")[1].split(" instead")[0])
    assert rescued.is_file() and rescued.parent == tmp_path / "data/napari-frontier/autosave"
    assert Segmenter.load(rescued).step == 3


# -- training faults -------------------------------------------------------------------
def _fresh(disk_image, **tc):
    image, scribbles, _ = disk_image
    cfg = TrainConfig(**{**FAST.__dict__, **tc})
    seg = Segmenter(train_config=cfg, model_config=SMALL)
    return seg, image, scribbles


def _weights(seg):
    """The weights that predict (a weight average where the segmenter keeps one)."""
    model = seg.model_for_prediction()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Fail:
    """Wraps a model's forward: raise ``exc`` (or return NaN) on chosen calls."""

    def __init__(self, model, exc=None, calls=(3,), nan=False):
        self.forward, self.exc, self.calls, self.nan = model.forward, exc, set(calls), nan
        self.n = 0
        self.batch_sizes = []
        model.forward = self

    def __call__(self, x):
        self.n += 1
        self.batch_sizes.append(x.shape[0])
        out = self.forward(x)
        if self.n in self.calls:
            if self.nan:
                return out * float("nan")
            raise self.exc
        return out


@pytest.mark.parametrize(
    "fault",
    ["exception", "nan-loss", "inf-input"],
)
def test_failed_step_stops_with_last_good_weights(disk_image, fault):
    seg, image, scribbles = _fresh(disk_image, update_interval=1e9)
    gen = seg.training(image, scribbles)
    first = next(gen)  # yields after the first step; weights at this point are "good"
    good = _weights(seg)
    p_before = seg.predict(image).probabilities
    if fault == "exception":
        _Fail(seg.model, RuntimeError("injected fault"), calls=(3,))
        expected = RuntimeError
    elif fault == "nan-loss":
        _Fail(seg.model, nan=True, calls=(3,))
        expected = TrainingDiverged
    else:
        _Fail(seg.model, nan=True, calls=range(1, 100))
        expected = TrainingDiverged
    with pytest.raises(expected):
        next(gen)  # steps 2, 3 (fails) ... the next yield never comes
    del seg.model.forward  # back to the class's forward
    assert _same(_weights(seg), good)
    assert seg.step == first.step
    np.testing.assert_array_equal(seg.predict(image).probabilities, p_before)
    # The segmenter stays usable: training again continues from those weights.
    assert np.isfinite(seg.fit(image, scribbles, steps=2).loss)


@pytest.mark.parametrize(
    "oom",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB"),
    ],
    ids=["torch-oom", "memory-error", "cpu-allocator"],
)
def test_out_of_memory_retries_with_smaller_batch(disk_image, oom):
    seg, image, scribbles = _fresh(disk_image, batch_size=4)
    seg._ensure_model(1)
    seg._ensure_optimizer()  # the weight average is a copy of the model: leave it unwrapped
    fail = _Fail(seg.model, oom, calls=(1,))
    updates = list(seg.training(image, scribbles, steps=5))
    assert fail.batch_sizes[:2] == [4, 2]  # failed at 4, retried at 2
    assert any("out of memory" in u.message and "batch size 2" in u.message for u in updates)
    assert updates[-1].step == 5 and np.isfinite(updates[-1].loss)


def test_out_of_memory_then_smaller_patches_then_gives_up(disk_image):
    seg, image, scribbles = _fresh(disk_image, batch_size=2, patch_size=64)
    seg._ensure_model(1)
    good = _weights(seg)
    fail = _Fail(seg.model, torch.OutOfMemoryError("out of memory"), calls=range(1, 100))
    with pytest.raises(TrainingOutOfMemory, match="even with one patch of 16 px"):
        list(seg.training(image, scribbles, steps=5))
    # batch 2 -> 1, then patches 64 -> 32 -> 16, then it stops
    assert fail.batch_sizes == [2, 1, 1, 1]
    assert _same(_weights(seg), good) and seg.step == 0


def test_cli_diverged_training_keeps_last_good_weights(tmp_path, capsys, disk_image, monkeypatch):
    import napari_frontier.learning.trainer as trainer_module

    image, scribbles, _ = disk_image
    np.save(tmp_path / "i.npy", image)
    np.save(tmp_path / "s.npy", scribbles)
    real, calls = trainer_module.masked_cross_entropy, []

    def nan_after_five(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) > 5 else loss

    monkeypatch.setattr(trainer_module, "masked_cross_entropy", nan_after_five)
    argv = ["train", str(tmp_path / "i.npy"), "-s", str(tmp_path / "s.npy")]
    argv += ["-o", str(tmp_path / "m.pt"), "--steps", "20", "--width", "8", "--depth", "1", "-q"]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "diverged" in err
    assert "wrote the last good weights" in err
    seg = Segmenter.load(tmp_path / "m.pt")
    assert 1 <= seg.step <= 5
    assert all(torch.isfinite(v).all() for v in seg.model.state_dict().values())


def test_snapshot_while_training_is_the_last_good_weights(disk_image):
    """What another thread saves mid-step is the consistent copy of the last update."""
    seg, image, scribbles = _fresh(disk_image, update_interval=1e9)
    gen = seg.training(image, scribbles, steps=6)
    upd = next(gen)
    good = _weights(seg)
    snapshots = []
    real = seg.model.forward

    def forward(x):
        snapshots.append(seg.state_dict())  # as the GUI's autosave timer would
        return real(x)

    seg.model.forward = forward
    upd2 = next(gen)  # the final update: 5 more steps changed the weights meanwhile
    gen.close()
    assert upd2.done and upd2.step == upd.step + 5 and len(snapshots) >= 5
    for snap in snapshots:
        assert snap["step"] == upd.step
        assert _same(snap["state_dict"], good)
    assert not _same(_weights(seg), good)
    assert seg._trainer is None


# -- projects ------------------------------------------------------------------------
def test_project_round_trip_same_scribbles_and_predictions(tmp_path, disk_image):
    image, scribbles, _ = disk_image
    seg = Segmenter(train_config=FAST, model_config=SMALL)
    seg.fit(image, scribbles, steps=5)
    settings = {"train_config": {"batch_size": 4}, "note": "x"}
    write_image(tmp_path / "img.tif", image)
    for embed in (True, False):
        path = save_project(
            tmp_path / f"p{embed}.frontier",
            scribbles,
            image=image,
            image_path=tmp_path / "img.tif",
            embed_image=embed,
            segmenter=seg,
            image_name="disk",
            settings=settings,
        )
        project = load_project(path)
        np.testing.assert_array_equal(project.scribbles, scribbles)
        assert project.scribbles.dtype == scribbles.dtype
        np.testing.assert_array_equal(project.image, image)
        assert project.image_name == "disk" and project.settings == settings
        np.testing.assert_array_equal(
            project.segmenter.predict(image).probabilities, seg.predict(image).probabilities
        )
        assert load_model(path).step == seg.step
    # The CLI predicts with a project as it does with a checkpoint.
    assert (
        cli.main(
            ["predict", str(path), str(tmp_path / "img.tif"), "-o", str(tmp_path / "m.tif"), "-q"]
        )
        == 0
    )


def test_project_image_found_next_to_moved_project(tmp_path, disk_image):
    image, scribbles, _ = disk_image
    (tmp_path / "a").mkdir()
    write_image(tmp_path / "a" / "img.tif", image)
    save_project(tmp_path / "a" / "p.frontier", scribbles, image_path=tmp_path / "a" / "img.tif")
    os.rename(tmp_path / "a", tmp_path / "b")  # the whole folder moved
    np.testing.assert_array_equal(load_project(tmp_path / "b" / "p.frontier").image, image)


def test_project_newer_format_refused(tmp_path, disk_image):
    import json
    import zipfile

    from napari_frontier.errors import ProjectError

    image, scribbles, _ = disk_image
    save_project(tmp_path / "p.frontier", scribbles, image=image)
    with zipfile.ZipFile(tmp_path / "p.frontier") as zf:
        meta = json.loads(zf.read("project.json"))
        members = {n: zf.read(n) for n in zf.namelist()}
    meta["format_version"] = 99
    members["project.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "new.frontier", "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(ProjectError, match="newer"):
        load_project(tmp_path / "new.frontier")


def test_checkpoint_payload_written_atomically(tmp_path):
    save_checkpoint(tmp_path / "m.pt", {"x": torch.zeros(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
