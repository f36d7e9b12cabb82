"""Sampled validation loss: a fixed subset, an honest standard error, and agreement with the full loss."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from koi_eval import all_windows, estimate_loss, sample_windows, window_losses


def test_windows_cover_each_shard_without_overlap():
    windows = all_windows([100, 33, 5], block_size=16)
    assert [(w.shard, w.start) for w in windows] == [(0, 0), (0, 16), (0, 32), (0, 48), (0, 64), (0, 80), (1, 0), (1, 16)]


def test_same_subset_every_time_and_seeded():
    windows = all_windows([10_000], block_size=32)
    a = sample_windows(windows, 0.1, seed=3)
    assert a == sample_windows(windows, 0.1, seed=3)
    assert a != sample_windows(windows, 0.1, seed=4)
    assert len(a) == round(0.1 * len(windows)) and a == sorted(a, key=lambda w: w.start)
    assert len(sample_windows(windows, 0.1, seed=3, max_windows=7)) == 7


def test_window_loss_equals_direct_cross_entropy(tokenized, bigram):
    _, _, val = tokenized
    windows = all_windows([len(val)], 64)[:5]
    got = window_losses(bigram, [val], windows, block_size=64, batch_size=2)
    for w, loss in zip(windows, got):
        seq = torch.from_numpy(val[w.start : w.start + 65].astype(np.int64))
        direct = F.cross_entropy(bigram(seq[None, :-1])[0], seq[1:])
        assert abs(loss - direct.item()) < 1e-5


def test_sampled_loss_is_within_its_standard_error_of_the_full_loss(tokenized, bigram):
    _, _, val = tokenized
    full = estimate_loss(bigram, [val], block_size=64, batch_size=64)
    assert not full.sampled and full.windows == (len(val) - 1) // 64
    within_one, estimates = 0, []
    for seed in range(30):
        est = estimate_loss(bigram, [val], block_size=64, batch_size=64, fraction=0.1, seed=seed)
        assert est.sampled and est.tokens == est.windows * 64
        assert abs(est.loss - full.loss) < 4 * est.stderr
        within_one += abs(est.loss - full.loss) <= est.stderr
        estimates.append(est.loss)
    # A calibrated standard error holds the full loss about 68% of the time (loosely: 40-97%).
    assert 12 <= within_one <= 29
    assert math.isclose(float(np.mean(estimates)), full.loss, abs_tol=0.05)


def test_time_bound_is_applied_only_when_asked_and_reported(tokenized, bigram):
    import time

    _, _, val = tokenized

    def slow(idx):
        time.sleep(0.05)
        return bigram(idx)

    unbounded = estimate_loss(slow, [val], block_size=64, batch_size=4, fraction=0.5, seed=0)
    assert not unbounded.time_bounded and unbounded.windows == round(0.5 * ((len(val) - 1) // 64))
    bounded = estimate_loss(slow, [val], block_size=64, batch_size=4, fraction=0.5, seed=0, max_seconds=0.12)
    assert bounded.time_bounded and bounded.sampled and 4 <= bounded.windows < unbounded.windows
    assert bounded.as_record()["val_time_bounded"] is True
