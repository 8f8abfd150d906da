"""Checkpoint files: atomic writes, metadata, and clear errors for bad files."""
from __future__ import annotations

import os

import pytest
import torch

import ascan_kernels as K
from ascan.train import checkpoint as ck


def test_atomic_write_failure_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "w.safetensors"
    ck.save_weights(path, {"a": torch.ones(3)}, {"model": "m"})
    before = path.read_bytes()

    def boom(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # a kill mid-write, as far as Python can see one

    with pytest.raises(KeyboardInterrupt):
        K.atomic_write(path, boom)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_weights_roundtrip_with_meta(tmp_path):
    t = {"x": torch.randn(2, 3), "y": torch.arange(4), "view": torch.randn(4, 4)[:, 1]}
    ck.save_weights(tmp_path / "w.safetensors", t, {"model": "ascan_t", "model_kwargs": {"num_classes": 3}})
    back, meta = ck.load_weights(tmp_path / "w.safetensors")
    assert meta == {"model": "ascan_t", "model_kwargs": {"num_classes": 3}}
    for k in t:
        assert torch.equal(back[k], t[k])


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}"])
def test_corrupt_weights_file_is_a_checkpoint_error(tmp_path, content):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(ck.CheckpointError, match="bad.safetensors.*corrupt"):
        ck.load_weights(p)


def test_truncated_weights_file_is_a_checkpoint_error(tmp_path):
    p = tmp_path / "w.safetensors"
    ck.save_weights(p, {"a": torch.randn(1000)}, {"model": "m"})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        ck.load_weights(p)


def test_foreign_safetensors_and_missing_file(tmp_path):
    from safetensors.torch import save_file
    save_file({"a": torch.ones(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ck.CheckpointError, match="no ascan metadata"):
        ck.load_weights(tmp_path / "foreign.safetensors")
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_weights(tmp_path / "nope.safetensors")


def test_load_into_names_what_does_not_fit():
    from ascan import build_model
    m = build_model("ascan_t", num_classes=10, in_chans=1)
    other = build_model("ascan_t", num_classes=7, in_chans=1).state_dict()
    with pytest.raises(ck.CheckpointError, match=r"another shape \(e\.g\. head\.weight"):
        ck.load_into(m, other, {"model": "ascan_t", "model_kwargs": {"num_classes": 7}}, "x.safetensors")
    with pytest.raises(ck.CheckpointError, match="holds a 'ascan_s' model, not 'ascan_t'"):
        ck.load_into(m, other, {"model": "ascan_s"}, "x.safetensors", expect_model="ascan_t")


def test_incomplete_checkpoint_directories_are_ignored_and_cleaned(tmp_path):
    def make(step):
        tmp = ck.begin_checkpoint(tmp_path, step)
        ck.save_weights(tmp / "model.safetensors", {"a": torch.full((1,), float(step))}, {"model": "m"})
        ck.save_torch(tmp / "trainer.pt", {"step": step})
        return ck.commit_checkpoint(tmp_path, tmp, step, keep=2)
    make(1)
    make(2)
    # an interrupted save: the temporary directory of step 3 and a lone ckpt dir without trainer.pt
    half = ck.begin_checkpoint(tmp_path, 3)
    (half / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "ckpt-00000004").mkdir()
    assert ck.latest_checkpoint(tmp_path).name == "ckpt-00000002"
    make(5)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-00000002", "ckpt-00000004", "ckpt-00000005"]  # keep=2 complete ones; temporaries gone
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt-00000002", "ckpt-00000005"]
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    assert sorted(os.listdir(tmp_path / "ckpt-00000005")) == ["model.safetensors", "trainer.pt"]


def test_resolve_weights(tmp_path):
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.resolve_weights(tmp_path / "nothing")
    with pytest.raises(ck.CheckpointError, match="holds no checkpoint"):
        ck.resolve_weights(tmp_path)
