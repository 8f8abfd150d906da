"""torchrun on CPU (gloo): DDP and FSDP2 give the 1-process result for the same global batch.

The equivalence runs use the diffusion trainer: the UNet normalises with GroupNorm and
LayerNorm, which see one sample at a time, so 2 ranks x 8 samples compute exactly what
1 rank x 16 does, up to the order of the gradient all-reduce's float sums. (The
classifiers use BatchNorm, whose per-rank batch statistics differ from a 16-sample
batch's without SyncBatchNorm, and torch's SyncBatchNorm runs on CUDA only: the
classifier DDP test checks that ranks stay in sync and that only rank 0 writes.)
"""
from __future__ import annotations

import pytest
import torch

from ascan.train.checkpoint import latest_checkpoint, load_sharded_into

from _train_helpers import assert_same_training, assert_same_weights, run_cli, torchrun, weights

LR = 2e-3  # train-diffusion's default
DIFF = ["train-diffusion", "--batch-size", 16, "--image-size", 8, "--max-steps", 4, "--log-every", 1,
        "--ema", 0.99, "--warmup-steps", 2, "--samples-per-class", 1, "--sample-steps", 2, "--no-train-judge",
        "--judge", "/nonexistent"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    r = run_cli(*DIFF, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_ddp_two_processes_match_one(one_process, tmp_path):
    r = torchrun(2, *DIFF, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on 2 x cpu" in r.stdout and "(2 proc x 1 accum x 8)" in r.stdout
    a = weights(latest_checkpoint(one_process) / "model.safetensors")
    b = weights(latest_checkpoint(tmp_path) / "model.safetensors")
    assert_same_training(a, b, lr=LR)
    # the comparison is not trivial: conv_out starts at zero and training moved it
    assert a["conv_out.weight"].abs().max() > 0


@pytest.mark.slow  # ~40 s (two torchrun launches); DDP's equivalence runs by default
def test_fsdp2_two_processes_match_one_and_reload_into_a_plain_model(one_process, tmp_path):
    r = torchrun(2, *DIFF, "--fsdp", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = latest_checkpoint(tmp_path)
    full = weights(ckpt / "model.safetensors")
    assert_same_training(weights(latest_checkpoint(one_process) / "model.safetensors"), full, lr=LR)
    # the sharded checkpoint (one file per rank) loads into a plain, unsharded model
    assert len(list((ckpt / "sharded").glob("*.distcp"))) == 2
    from ascan import build_model
    plain = build_model("ascan_unet_c2i_t", num_classes=10, in_channels=1)
    load_sharded_into(plain, ckpt / "sharded")
    assert_same_weights({k: v for k, v in plain.state_dict().items()}, full)
    # and the run resumes under FSDP from its full-state checkpoint
    r = torchrun(2, "train-diffusion", "--resume", tmp_path, "--max-steps", 6)
    assert r.returncode == 0, r.stderr[-3000:]
    assert latest_checkpoint(tmp_path).name == "ckpt-00000006"


@pytest.mark.slow  # ~30 s; the UNet DDP test covers the distributed loop by default
def test_classifier_ddp_ranks_agree_and_rank0_writes(tmp_path):
    r = torchrun(2, "train", "--batch-size", 16, "--max-steps", 3, "--log-every", 1, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("step 3/") == 1  # one progress line per step: rank 0 logs alone
    assert (tmp_path / "best.safetensors").is_file() and latest_checkpoint(tmp_path).name == "ckpt-00000003"
    state = torch.load(latest_checkpoint(tmp_path) / "trainer.pt", weights_only=True)
    assert state["world"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank seeds
    r = run_cli("train", "--resume", tmp_path, "--max-steps", 4)
    assert r.returncode == 1 and "written by 2 processes" in r.stderr
