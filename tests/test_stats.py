"""Per-sample statistics: the formulas, the table, its memory, and `StatsRecorder`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kakurenbo_hf.core.config import KakurenboArguments
from kakurenbo_hf.core.engine import HidingEngine
from kakurenbo_hf.distributed.recorder import StatsRecorder
from kakurenbo_hf.core.stats import SampleStats, per_sample_statistics


def reference(logits, labels):
    logits = logits.float()
    loss = F.cross_entropy(logits, labels, reduction="none")
    confidence = torch.softmax(logits, dim=-1).max(dim=-1).values
    correct = logits.argmax(dim=-1) == labels
    return loss, confidence, correct


# --- per_sample_statistics -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_per_sample_statistics_matches_torch(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(32, 10, generator=g) * 3
    labels = torch.randint(0, 10, (32,), generator=g)
    loss, confidence, correct = per_sample_statistics(logits, labels)
    ref_loss, ref_conf, ref_correct = reference(logits, labels)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(confidence, ref_conf)
    assert torch.equal(correct, ref_correct)
    assert loss.shape == confidence.shape == correct.shape == (32,)
    assert correct.dtype == torch.bool
    assert loss.dtype == confidence.dtype == torch.float32


def test_confidence_is_over_classes_not_batch():
    logits = torch.tensor([[1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0])
    _, confidence, correct = per_sample_statistics(logits, labels)
    over_classes = torch.tensor([np.e / (np.e + 2), np.e**5 / (np.e**5 + 2)], dtype=torch.float32)
    over_batch = torch.softmax(logits, dim=0).max(dim=-1).values  # the official code's bug
    torch.testing.assert_close(confidence, over_classes)
    assert not torch.allclose(confidence, over_batch, atol=1e-2)
    assert correct.tolist() == [True, True]
    # a sample's confidence does not depend on its batch mates
    alone = per_sample_statistics(logits[:1], labels[:1])[1]
    torch.testing.assert_close(alone, confidence[:1])


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0]])
    labels = torch.tensor([0, 0])
    loss, confidence, correct = per_sample_statistics(logits, labels)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[1].item() == pytest.approx(2000.0)
    assert confidence.tolist() == [1.0, 1.0]
    assert correct.tolist() == [True, False]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(16, 7, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 7, (16,), generator=g)
    loss, confidence, correct = per_sample_statistics(logits, labels)
    ref_loss, ref_conf, ref_correct = reference(logits.float(), labels)
    assert loss.dtype == confidence.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(confidence, ref_conf)
    assert torch.equal(correct, ref_correct)


def test_no_grad_graph():
    logits = torch.randn(4, 3, requires_grad=True)
    hidden = logits * 2  # non-leaf, as a model's output
    outputs = per_sample_statistics(hidden, torch.tensor([0, 1, 2, 0]))
    assert all(not t.requires_grad and t.grad_fn is None for t in outputs)
    assert logits.grad is None


def test_labels_of_other_integer_dtypes():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0], dtype=torch.int32)
    loss, _, correct = per_sample_statistics(logits, labels)
    ref_loss, _, ref_correct = reference(logits, labels.long())
    torch.testing.assert_close(loss, ref_loss)
    assert torch.equal(correct, ref_correct)


# --- SampleStats -----------------------------------------------------------------------------


def test_initial_table():
    stats = SampleStats(5)
    assert np.isinf(stats.loss).all() and (stats.loss > 0).all()
    assert stats.num_seen == 0
    assert not stats.correct.any()
    with pytest.raises(ValueError):
        SampleStats(0)


def test_update_writes_values():
    stats = SampleStats(6)
    stats.update(torch.tensor([4, 1]), torch.tensor([0.5, 2.0]), torch.tensor([0.75, 0.25]), torch.tensor([True, False]))
    assert stats.loss.tolist() == [np.inf, 2.0, np.inf, np.inf, 0.5, np.inf]
    assert stats.confidence[[4, 1]].tolist() == [0.75, 0.25]
    assert stats.correct.tolist() == [False, False, False, False, True, False]
    assert stats.num_seen == 2
    stats.update([1], [0.125], [0.5], [True])  # plain lists, overwrite
    assert stats.loss[1] == 0.125 and stats.correct[1]
    stats.update([], [], [], [])  # empty is a no-op
    assert stats.num_seen == 2


def test_update_with_repeated_indices():
    # accelerate pads uneven batches with repeated samples: same sample, same values
    stats = SampleStats(4)
    stats.update(np.array([2, 0, 2, 0]), np.array([0.3, 0.1, 0.3, 0.1]), np.array([0.9, 0.5, 0.9, 0.5]),
                 np.array([True, False, True, False]))
    assert stats.loss[[0, 2]] == pytest.approx([0.1, 0.3])
    assert stats.correct.tolist() == [False, False, True, False]
    assert stats.num_seen == 2


def test_update_out_of_range():
    stats = SampleStats(4)
    for bad in ([4], [-1], [0, 10]):
        with pytest.raises(IndexError):
            stats.update(bad, [0.0] * len(bad), [0.0] * len(bad), [True] * len(bad))
    assert stats.num_seen == 0  # nothing written by a rejected update


def test_state_dict_round_trip_and_size_check():
    stats = SampleStats(5)
    stats.update([0, 3], [1.0, 2.0], [0.5, 0.75], [True, False])
    state = stats.state_dict()
    other = SampleStats(5)
    other.load_state_dict(state)
    for name in ("loss", "confidence", "correct"):
        np.testing.assert_array_equal(getattr(other, name), getattr(stats, name))
    state["loss"][:] = 0.0  # a copy
    assert stats.loss[0] == 1.0
    other.load_state_dict({k: torch.from_numpy(v) for k, v in stats.state_dict().items()})  # tensors too
    np.testing.assert_array_equal(other.loss, stats.loss)
    with pytest.raises(ValueError, match="6"):
        SampleStats(6).load_state_dict(stats.state_dict())
    with pytest.raises(ValueError):
        SampleStats(4).load_state_dict(stats.state_dict())


def test_memory_per_sample():
    n = 100_000
    stats = SampleStats(n)
    assert stats.nbytes == stats.loss.nbytes + stats.confidence.nbytes + stats.correct.nbytes
    assert stats.nbytes / n <= 10
    engine = HidingEngine(n, num_epochs=3, arguments=KakurenboArguments())
    engine.stats.update(np.arange(n), np.ones(n), np.ones(n), np.ones(n, bool))
    engine.plan_epoch(1)
    per_sample = (engine.stats.nbytes + engine.hidden.nbytes) / n
    assert per_sample <= 10, per_sample


# --- StatsRecorder ---------------------------------------------------------------------------


def test_recorder_add_and_flush():
    stats = SampleStats(8)
    recorder = StatsRecorder(stats)
    logits = torch.randn(3, 4)
    labels = torch.tensor([0, 1, 2])
    values = per_sample_statistics(logits, labels)
    recorder.add(torch.tensor([5, 1, 7]), *values)
    recorder.add(torch.tensor([[2]]), torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([True]))
    assert len(recorder) == 4
    assert stats.num_seen == 0  # nothing written before the flush
    assert recorder.flush() == 4
    assert len(recorder) == 0
    np.testing.assert_allclose(stats.loss[[5, 1, 7]], values[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats.confidence[[5, 1, 7]], values[1].numpy(), rtol=1e-3)
    assert stats.correct[[5, 1, 7]].tolist() == values[2].tolist()
    assert stats.loss[2] == 0.5 and stats.confidence[2] == 0.25 and stats.correct[2]
    assert stats.num_seen == 4
    assert recorder.flush() == 0  # nothing new


def test_recorder_does_not_keep_graph():
    stats = SampleStats(3)
    recorder = StatsRecorder(stats)
    loss = torch.tensor([0.5, 1.5], requires_grad=True) * 1
    recorder.add(torch.tensor([0, 2]), loss, torch.tensor([0.9, 0.1]), torch.tensor([1, 0]))
    assert all(not t.requires_grad for chunk in recorder._chunks for t in chunk if isinstance(t, torch.Tensor))
    recorder.flush()
    assert stats.loss[[0, 2]].tolist() == [0.5, 1.5]
    assert stats.correct.tolist() == [True, False, False]


class CapturingTransport:
    """Rank 1 of 2: hands its round buffers to the main process (captured here)."""

    num_processes, is_main = 2, False

    def __init__(self, rows_elsewhere=0):
        self.buffers, self.rows_elsewhere = [], rows_elsewhere

    def max_over_ranks(self, value):
        return max(value, self.rows_elsewhere)

    def gather_to_main(self, buffer):
        self.buffers.append(buffer.clone())
        return None


class MainTransport:
    """Rank 0 of 2: receives rank 1's captured buffers, round by round."""

    num_processes, is_main = 2, True

    def __init__(self, other_buffers, rows_elsewhere=0):
        self.other, self.calls, self.rows_elsewhere = list(other_buffers), [], rows_elsewhere

    def max_over_ranks(self, value):
        return max(value, self.rows_elsewhere)

    def gather_to_main(self, buffer):
        self.calls.append(tuple(buffer.shape))
        other = self.other.pop(0) if self.other else torch.full_like(buffer, 255)
        return [buffer, other]


def _other_rank(records, num_samples=10, round_bytes=1 << 20, rows_elsewhere=0):
    transport = CapturingTransport(rows_elsewhere)
    other = StatsRecorder(None, num_samples=num_samples, round_bytes=round_bytes)
    for indices, loss, confidence, correct, step in records:
        other.add(torch.tensor(indices), torch.tensor(loss), torch.tensor(confidence), torch.tensor(correct), step=step)
    assert other.flush(transport) == 0  # it does not hold the table
    return transport.buffers


def test_records_are_compact():
    assert StatsRecorder(SampleStats(10)).dtype.itemsize == 15
    assert StatsRecorder(None, num_samples=2**31).dtype.itemsize == 19


def test_recorder_flush_sends_to_the_main_process_only():
    stats = SampleStats(10)
    recorder = StatsRecorder(stats, round_bytes=1 << 20)
    recorder.add(torch.tensor([0, 1]), torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.75]), torch.tensor([True, False]))
    buffers = _other_rank([([8, 9], [0.8, 0.9], [0.25, 0.125], [True, False], 0)])
    transport = MainTransport(buffers, rows_elsewhere=2)
    assert recorder.flush(transport) == 4
    assert transport.calls == [(2 * 15,)]  # one round, as long as the longest rank's records
    assert stats.loss.tolist() == pytest.approx([0.1, 0.2] + [np.inf] * 6 + [0.8, 0.9])
    assert stats.confidence[[0, 1, 8, 9]].tolist() == [0.5, 0.75, 0.25, 0.125]
    assert stats.correct.tolist() == [True, False] + [False] * 6 + [True, False]
    assert stats.num_seen == 4


def test_recorder_flush_in_bounded_rounds():
    """Rounds of at most round_bytes arrive at the main process, however many records there are."""
    stats = SampleStats(1000)
    round_bytes = 15 * 2 * 50  # 50 records per rank per round
    recorder = StatsRecorder(stats, round_bytes=round_bytes)
    mine = np.arange(0, 1000, 2)
    recorder.add(torch.tensor(mine), torch.tensor(mine / 1000.0), torch.full((500,), 0.5), torch.ones(500, dtype=torch.bool))
    theirs = np.arange(1, 1000, 2)[:130]  # fewer records: the other rank pads its last rounds
    buffers = _other_rank([(theirs.tolist(), (theirs / 1000.0).tolist(), [0.25] * 130, [False] * 130, 0)],
                          num_samples=1000, round_bytes=round_bytes, rows_elsewhere=500)
    transport = MainTransport(buffers, rows_elsewhere=130)
    assert recorder.flush(transport) == 630
    assert len(transport.calls) == 10 and all(shape == (50 * 15,) for shape in transport.calls)
    assert stats.loss[mine].tolist() == pytest.approx((mine / 1000.0).tolist())
    assert stats.loss[theirs].tolist() == pytest.approx((theirs / 1000.0).tolist())
    assert stats.num_seen == 630


def test_recorder_flush_with_transport_when_empty():
    """A rank with nothing recorded still joins the collective (it would hang otherwise)."""
    stats = SampleStats(4)
    recorder = StatsRecorder(stats)
    transport = MainTransport(_other_rank([([3], [0.5], [0.5], [True], 0)], num_samples=4), rows_elsewhere=1)
    assert recorder.flush(transport) == 1
    assert stats.loss[3] == 0.5 and stats.correct[3]


def test_recorder_repeated_sample_keeps_newest_record():
    """even_batches padding can show a sample twice in an epoch: the later step's record wins."""
    stats = SampleStats(5)
    recorder = StatsRecorder(stats)
    recorder.add(torch.tensor([2, 4]), torch.tensor([1.0, 4.0]), torch.tensor([0.5, 0.5]), torch.tensor([False, True]), step=7)
    recorder.add(torch.tensor([2]), torch.tensor([3.0]), torch.tensor([0.25]), torch.tensor([True]), step=6)
    recorder.add(torch.tensor([4]), torch.tensor([2.0]), torch.tensor([0.75]), torch.tensor([False]), step=9)
    assert recorder.flush() == 4  # every record written, the newest of each sample last
    assert stats.loss[2] == 1.0 and not stats.correct[2]  # step 7 beats step 6 though added first
    assert stats.loss[4] == 2.0 and stats.confidence[4] == 0.75 and not stats.correct[4]


def test_recorder_result_does_not_depend_on_flush_points():
    records = [([0, 1], [1.0, 2.0], 0), ([1, 2], [3.0, 4.0], 1), ([0], [5.0], 2), ([2, 3], [6.0, 7.0], 3)]
    once, twice = SampleStats(4), SampleStats(4)
    r_once, r_twice = StatsRecorder(once), StatsRecorder(twice)
    for i, (idx, loss, step) in enumerate(records):
        for recorder in (r_once, r_twice):
            n = len(idx)
            recorder.add(torch.tensor(idx), torch.tensor(loss), torch.full((n,), 0.5), torch.ones(n, dtype=torch.bool),
                         step=step)
        if i == 1:
            r_twice.flush()  # a checkpoint mid-epoch
    r_once.flush()
    r_twice.flush()
    assert once.loss.tolist() == twice.loss.tolist() == [5.0, 3.0, 6.0, 7.0]
