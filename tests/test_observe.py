"""observe.py: batch summaries, the self-removing forward pre-hook, step timing."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import torch

from perfcallbacks.observe import StepTimer, batch_stats, iter_tensors


def test_batch_stats_from_mask():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    stats = batch_stats({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": mask})
    assert (stats.batch_size, stats.seq_len, stats.lengths) == (2, 4, (3, 1))
    assert stats.pad_fraction == 0.5 and stats.total_tokens == 8 and stats.real_tokens == 4
    assert stats.dtypes == ("int64",) and stats.device == "cpu"


def test_batch_stats_from_pad_id_and_plain_tensors():
    ids = torch.tensor([[5, 6, 0, 0], [5, 6, 7, 0]])
    assert batch_stats({"input_ids": ids}, pad_token_id=0).lengths == (2, 3)
    assert batch_stats({"input_ids": ids}).lengths == ()  # no mask, no pad id: unknown, not guessed
    x = batch_stats((torch.randn(8, 3), torch.zeros(8)))
    assert x.batch_size == 8 and x.seq_len is None and x.pad_fraction is None


def test_batch_stats_walks_containers_and_skips_junk():
    Pair = namedtuple("Pair", "x y")

    @dataclass
    class Batch:
        input_ids: torch.Tensor
        label: int

    assert batch_stats(Pair(torch.zeros(4, 2), torch.zeros(4))).batch_size == 4
    assert batch_stats(Batch(torch.zeros(3, 5, dtype=torch.long), 1)).seq_len == 5
    assert batch_stats({"text": ["a", "b"]}) is None
    assert batch_stats(object()) is None
    assert batch_stats(torch.tensor(1.0)) is None  # scalars carry no batch
    assert [k for k, _ in iter_tensors({"a": {"b": torch.zeros(1)}})] == ["a.b"]


def test_row_hashes_find_identical_rows():
    ids = torch.tensor([[1, 2], [3, 4], [1, 2]])
    hashes = batch_stats({"input_ids": ids}, hash_rows=True).row_hashes
    assert hashes[0] == hashes[2] != hashes[1]
    assert batch_stats({"input_ids": ids}).row_hashes == ()


def test_step_timer_excludes_first_step_and_measures_gaps():
    timer = StepTimer()
    timer.start(0.0)
    timer.end(1.0)  # warm-up step: excluded
    timer.start(1.5)
    timer.end(1.7)
    timer.start(2.0)
    timer.end(2.1)
    assert [round(t, 6) for t in timer.step_times] == [0.2, 0.1]
    assert [round(t, 6) for t in timer.data_wait_times] == [0.5, 0.3]
    timer.reset_gap()
    timer.start(10.0)
    timer.end(10.2)
    assert len(timer.data_wait_times) == 2  # no gap across an epoch boundary
    timer.end(11.0)  # end without start is ignored
    assert timer.steps_seen == 4
