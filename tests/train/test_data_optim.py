"""The data pipeline's determinism and the optimizer pieces against their definitions."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ascan.train.data import ResumableSampler, Seeded, digits, sample_seed
from ascan.train.optim import EMA, param_groups, warmup_cosine


def test_digits_split_is_fixed_stratified_and_disjoint():
    tr, ho = digits(size=32)
    assert len(tr) + len(ho) == 1797 and 0.19 < len(ho) / 1797 < 0.21
    assert tr.images.shape[1:] == (1, 32, 32) and 0 <= float(tr.images.min()) and float(tr.images.max()) <= 1
    assert torch.bincount(ho.labels, minlength=10).min() >= 35  # every class held out
    tr2, ho2 = digits(size=32)
    assert torch.equal(ho.images, ho2.images)
    # no held-out image is also a training image
    flat_tr = {tuple(x.flatten().tolist()) for x in tr.images[:, :, ::4, ::4]}
    assert sum(tuple(x.flatten().tolist()) in flat_tr for x in ho.images[:, :, ::4, ::4]) < 5


def test_seeded_augmentation_is_per_sample_and_leaves_the_global_rng_alone():
    from ascan.train.data import image_transforms
    tr, _ = digits(size=32)
    ds = Seeded(tr, image_transforms(32, True, True, (0.5,), (0.5,)), seed=3)
    state = torch.get_rng_state()
    a0 = ds[5][0]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(ds[5][0], a0)          # the same sample, the same draw
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], a0)      # another epoch, another draw
    assert sample_seed(0, 0, 1) != sample_seed(0, 1, 0) != sample_seed(1, 0, 0)


def test_resumable_sampler_continues_the_epoch_order():
    data = list(range(50))
    full = ResumableSampler(data, 2, 1, shuffle=True, seed=4, drop_last=False)
    full.set_position(3, 0)
    part = ResumableSampler(data, 2, 1, shuffle=True, seed=4, drop_last=False)
    part.set_position(3, 10)
    assert list(part) == list(full)[10:] and len(part) == len(full) - 10


def test_param_groups_skip_norms_biases_embeddings():
    m = nn.ModuleDict({"lin": nn.Linear(4, 4), "bn": nn.BatchNorm2d(4), "emb": nn.Embedding(5, 4),
                       "ln": nn.LayerNorm(4), "conv": nn.Conv2d(4, 4, 3)})
    decay, no_decay = param_groups(m, 0.1)
    assert {id(p) for p in decay["params"]} == {id(m["lin"].weight), id(m["conv"].weight)}
    assert id(m["emb"].weight) in {id(p) for p in no_decay["params"]} and no_decay["weight_decay"] == 0.0


def test_warmup_cosine_matches_its_formula():
    f = warmup_cosine(100, 10, 0.01)
    assert f(0) == 0.1 and f(9) == 1.0
    assert math.isclose(f(55), 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert math.isclose(f(100), 0.01) and math.isclose(f(1000), 0.01)


def test_ema_matches_float64_recurrence():
    m = nn.Linear(3, 2)
    ema = EMA(m, 0.9)
    ref = {k: v.detach().double().clone() for k, v in m.state_dict().items()}
    for n in range(5):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        ema.update(m)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in m.state_dict().items():
            ref[k] = d * ref[k] + (1 - d) * v.double()
    for k, v in ema.named().items():
        torch.testing.assert_close(v.double(), ref[k], rtol=1e-6, atol=1e-7)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ema.swap(m)
    torch.testing.assert_close(m.weight.double(), ref["weight"], rtol=1e-6, atol=1e-7)
    ema.swap(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
