"""Bad training input: a clear error naming the problem, and nothing half-written on disk."""
from __future__ import annotations

import pytest
import torch

from ascan.train import CheckpointError, DataError, TrainingError, fit, validate
from ascan.train.checkpoint import list_checkpoints

from _train_helpers import TINY, run_cli


def _png(path, seed=0):
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)


def _folder(root, classes=("cat", "dog"), n=6):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            _png(root / c / f"{i}.png", seed=hash((c, i)) % 1000)
    return root


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        fit(**TINY, data=str(tmp_path / "nope"), out=str(tmp_path / "o"))
    r = run_cli("train", "--data", tmp_path / "nope", "--out", tmp_path / "o")
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "empty_class").mkdir()
    with pytest.raises(DataError, match="'empty_class' hold no images"):
        fit(**TINY, data=str(root), out=str(tmp_path / "o"))


def test_folder_without_classes(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="no class folders"):
        fit(**TINY, data=str(tmp_path / "d"), out=str(tmp_path / "o"))


def test_corrupt_image_names_the_file_and_leaves_no_checkpoint(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"corrupt or unreadable image .*broken\.png"):
        fit(**dict(TINY, ema=0.0, batch_size=4), data=str(root), image_size=32, holdout=0.01,
            out=str(tmp_path / "o"))
    assert list_checkpoints(tmp_path / "o") == []
    assert not (tmp_path / "o" / "best.safetensors").exists()


def test_image_folder_trains_and_validates(tmp_path):
    root = _folder(tmp_path / "d")
    s = fit(**dict(TINY, ema=0.0, batch_size=4), data=str(root), image_size=32, max_steps=2, holdout=0.25,
            out=str(tmp_path / "o"))
    assert s["step"] == 2 and s["metrics"]["held_out"] == 4
    v = validate(tmp_path / "o", data=str(root))
    assert v["held_out"] == 4 and v["top1"] == pytest.approx(s["metrics"]["top1"])


def test_checkpoint_of_another_model(tmp_path):
    fit(**TINY, max_steps=1, out=str(tmp_path / "t"))
    with pytest.raises(CheckpointError, match="holds a 'ascan_t' model, this run builds 'ascan_s'"):
        fit(**TINY, model="ascan_s", max_steps=2, out=str(tmp_path / "t"), resume=True)
    # a diffusion checkpoint handed to validate
    from ascan.train.diffusion import fit_diffusion
    from _train_helpers import TINY_DIFFUSION
    fit_diffusion(**TINY_DIFFUSION, max_steps=1, out=str(tmp_path / "u"))
    with pytest.raises(CheckpointError, match="'diffusion' checkpoint .* not a classifier"):
        validate(tmp_path / "u" / "ckpt-00000001" / "model.safetensors")
    r = run_cli("validate", "--checkpoint", tmp_path / "u" / "ckpt-00000001" / "model.safetensors")
    assert r.returncode == 1 and "not a classifier" in r.stderr


def test_corrupt_checkpoint_for_validate(tmp_path):
    p = tmp_path / "best.safetensors"
    p.write_bytes(b"\x00" * 100)
    r = run_cli("validate", "--checkpoint", p)
    assert r.returncode == 1 and "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_out_of_memory_is_reported_and_no_checkpoint_written(tmp_path, monkeypatch):
    from ascan.train import classify

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(classify.ClassifyTask, "loss", oom)
    with pytest.raises(TrainingError, match=r"out of memory .* micro-batch of 16 .*lower --batch-size"):
        fit(**TINY, max_steps=2, out=str(tmp_path / "o"))
    assert list_checkpoints(tmp_path / "o") == []


def test_non_finite_loss_stops_without_a_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="the loss is (nan|inf)"):
        fit(**dict(TINY, ema=0.0, warmup_steps=0), lr=1e30, clip_grad=0.0, max_steps=20, out=str(tmp_path / "o"))
    assert list_checkpoints(tmp_path / "o") == []


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="multiple of processes x accum_steps"):
        fit(**dict(TINY, batch_size=10), accum_steps=4, out=str(tmp_path / "o"))  # 10 % (1 x 4) != 0
    with pytest.raises(ValueError, match="amp must be"):
        fit(**TINY, amp="fp8", out=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="larger than the training set"):
        fit(**dict(TINY, batch_size=4096), out=str(tmp_path / "o"))
    r = run_cli("train", "--sync-bn", "--max-steps", 1, "--out", tmp_path / "s")
    assert r.returncode == 0  # one process: a note, no error
    assert "has no effect in a single process" in r.stdout
