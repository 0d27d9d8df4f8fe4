"""`Topology`: every collective is the identity in one process (no process group), and in two real
processes (`accelerate launch --multi_gpu --num_processes 2` on CPU, gloo) each returns the right
values and counts the bytes it moved in `topology.traffic`.

Run as a script (`python tests/test_topology.py --out DIR` under `accelerate launch`), this file is
the 2-process worker: each rank checks every collective, then writes the bytes each one counted.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist

from kakurenbo_hf.core.sharding import LocalCollective, shard_of, whole_table
from kakurenbo_hf.distributed.recorder import record_dtype
from kakurenbo_hf.distributed.topology import Topology
from kakurenbo_hf.distributed.transport import MainProcessTransport, ShardedTransport, broadcast_decision
from kakurenbo_hf.strategies.kakurenbo import lowest_loss_mask

NUM_SAMPLES = 20  # over 2 ranks: shards [0, 16) and [16, 20) (boundaries are multiples of 8)
MASK = np.arange(NUM_SAMPLES) % 3 == 0
OBJECT = {"epoch": 3, "plan": [1, 2.5, None], "name": "hide"}
# all_to_all_bytes: items of 3 bytes; rank r sends SEND_COUNTS[r][d] items to rank d.
ITEMSIZE = 3
SEND_COUNTS = [[1, 2], [3, 0]]


# --- one process: the identities --------------------------------------------------------------------


def test_single_process_topology_needs_no_process_group():
    assert not dist.is_initialized()
    topology = Topology.single()
    assert (topology.rank, topology.world_size, topology.num_ranks) == (0, 1, 1)
    assert topology.device == torch.device("cpu")
    assert topology.is_main and not topology.is_distributed
    assert Topology().world_size == 1 and Topology.single("cpu").device.type == "cpu"
    accelerator = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"))
    assert repr(Topology.from_accelerator(accelerator)) == "Topology(rank=0, world_size=1, device='cpu')"


def test_a_topology_of_several_processes_needs_its_process_group():
    with pytest.raises(RuntimeError, match="process group"):
        Topology(0, 2)
    with pytest.raises(ValueError):
        Topology(2, 2)


def test_single_process_collectives_are_identities():
    topology = Topology.single()
    values = np.array([1.5, -2.0])
    assert np.array_equal(topology.sum(values), values)
    assert topology.max(7) == 7
    assert np.array_equal(topology.gather(np.array([4, 5])), [[4, 5]])
    bits = np.packbits(MASK)
    assert np.array_equal(topology.gather_bits(bits, whole_table(NUM_SAMPLES)), bits)
    assert topology.all_true([True, False, 1]) == [True, False, True]
    assert topology.all_true([]) == []
    assert topology.sum_ints([3, np.int64(4)]) == [3, 4]
    assert topology.broadcast_object(OBJECT) is OBJECT
    array = topology.broadcast_array(np.arange(4, dtype=np.float64), 4, torch.float32)
    assert array.dtype == np.float32 and np.array_equal(array, np.arange(4))
    buffer = torch.arange(6, dtype=torch.uint8)
    assert topology.gather_to_main(buffer) == [buffer]
    payload = np.arange(6, dtype=np.uint8)
    assert np.array_equal(topology.all_to_all_bytes(payload, np.array([2]), 3), payload)
    assert topology.traffic == {"sent": 0, "received": 0}


def test_single_process_misuse_is_refused():
    topology = Topology.single()
    with pytest.raises(ValueError, match="whole table"):
        topology.gather_bits(np.zeros(2, dtype=np.uint8), shard_of(NUM_SAMPLES, 2, 0))
    with pytest.raises(ValueError, match="send_counts"):
        topology.all_to_all_bytes(np.zeros(6, dtype=np.uint8), np.array([1]), 3)
    with pytest.raises(ValueError, match="send_counts"):
        topology.all_to_all_bytes(np.zeros(6, dtype=np.uint8), np.array([1, 1]), 3)


def test_single_topology_is_a_collective_like_the_local_one():
    loss = np.random.default_rng(0).random(50)
    expected = lowest_loss_mask(loss, 17, whole_table(50), LocalCollective())
    assert np.array_equal(lowest_loss_mask(loss, 17, whole_table(50), Topology.single()), expected)


def test_transports_over_a_single_topology():
    topology = Topology.single()
    main = MainProcessTransport(topology)
    assert (main.num_processes, main.is_main, main.sharded) == (1, True, False)
    assert main.max_over_ranks(5) == 5
    buffer = torch.zeros(4, dtype=torch.uint8)
    assert main.gather_to_main(buffer) == [buffer]
    sharded = ShardedTransport(topology, NUM_SAMPLES)
    assert (sharded.num_processes, sharded.is_main, sharded.sharded) == (1, True, True)
    dtype = record_dtype(NUM_SAMPLES)
    columns = _columns([5, 1, 5], step=2)
    received = sharded.exchange(columns, dtype)
    assert received.dtype == dtype
    for name in dtype.names:
        assert np.array_equal(received[name], columns[name])
    bits, weights, draws = np.packbits(MASK), np.linspace(0, 1, NUM_SAMPLES, dtype=np.float32), np.arange(3)
    out = broadcast_decision(topology, bits, {"epoch": 1}, bits.size, weights=weights, draws=draws)
    assert np.array_equal(out[0], bits) and out[1] == {"epoch": 1}
    assert np.array_equal(out[2], weights) and np.array_equal(out[3], draws)
    assert broadcast_decision(topology, bits, {"epoch": 1}, bits.size)[2:] == (None, None)
    assert topology.traffic == {"sent": 0, "received": 0}


def _columns(indices, step: int) -> dict[str, np.ndarray]:
    """Records (one array per field of `record_dtype`) for `indices`, with values derived from them."""
    indices = np.asarray(indices, dtype=np.int32)
    return {"step": np.full(indices.size, step, dtype=np.int32), "index": indices,
            "loss": (indices / 10).astype(np.float32), "confidence": (indices / 100).astype(np.float16),
            "correct": (indices % 2).astype(np.uint8)}


# --- two processes --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_collectives_in_two_processes(tmp_path):
    from launch import launch

    launch(os.path.abspath(__file__), "--out", str(tmp_path), timeout=240)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["topology"] for r in ranks] == [[0, 2, True], [1, 2, False]]
    pickled = 8 + len(pickle.dumps(OBJECT))
    # (sent, received) per collective and rank: all-reduces and all-gathers move as much each way;
    # broadcasts and the gather go one way; the all-to-all moves what each rank sends elsewhere.
    expected = {
        "sum": [(16, 16)] * 2, "sum_float": [(24, 24)] * 2, "max": [(8, 8)] * 2, "gather": [(16, 16)] * 2,
        "gather_bits": [(2, 2)] * 2, "all_true": [(24, 24)] * 2, "sum_ints": [(16, 16)] * 2,
        "broadcast_object": [(pickled, 0), (0, pickled)], "broadcast_array": [(20, 0), (0, 20)],
        "gather_to_main": [(0, 6), (6, 0)], "all_to_all_bytes": [(6, 9), (9, 6)],
        "exchange": [(15, 0), (0, 15)], "max_over_ranks": [(8, 8)] * 2,
        "broadcast_decision": [(8 + len(pickle.dumps(({"epoch": 2}, NUM_SAMPLES, None))) + 3 + 4 * NUM_SAMPLES, 0),
                               (0, 8 + len(pickle.dumps(({"epoch": 2}, NUM_SAMPLES, None))) + 3 + 4 * NUM_SAMPLES)],
    }
    for rank, record in enumerate(ranks):
        counted = {name: tuple(moved) for name, moved in record["traffic"].items()}
        assert counted == {name: moved[rank] for name, moved in expected.items()}, rank
        assert record["total"] == {"sent": sum(s for s, _ in counted.values()),
                                   "received": sum(r for _, r in counted.values())}
    # Every byte sent is received somewhere.
    assert sum(r["total"]["sent"] for r in ranks) == sum(r["total"]["received"] for r in ranks)


def _worker(out: str) -> None:
    """One rank of `test_collectives_in_two_processes`: every collective checked, its bytes written."""
    from accelerate import Accelerator

    torch.set_num_threads(1)
    topology = Topology.from_accelerator(Accelerator(cpu=True))
    rank, traffic = topology.rank, {}
    assert topology.world_size == 2, "launch with --num_processes 2"

    def counted(name, result):
        """Note the bytes the collective that returned `result` added to `topology.traffic`."""
        total = (sum(s for s, _ in traffic.values()), sum(r for _, r in traffic.values()))
        traffic[name] = (topology.traffic["sent"] - total[0], topology.traffic["received"] - total[1])
        return result

    total = counted("sum", topology.sum(np.array([rank + 1, 10 * (rank + 1)], dtype=np.int64)))
    assert total.dtype == np.int64 and total.tolist() == [3, 30], total
    total = counted("sum_float", topology.sum(np.array([0.5, rank, -rank])))
    assert total.dtype == np.float64 and total.tolist() == [1.0, 1.0, -1.0], total
    assert counted("max", topology.max(5 * rank + 1)) == 6
    gathered = counted("gather", topology.gather(np.array([rank, rank * rank], dtype=np.int64)))
    assert gathered.shape == (2, 2) and gathered.tolist() == [[0, 0], [1, 1]], gathered
    shard = shard_of(NUM_SAMPLES, 2, rank)
    bits = counted("gather_bits", topology.gather_bits(np.packbits(MASK[shard.start : shard.stop]), shard))
    assert np.array_equal(bits, np.packbits(MASK)), bits
    votes = [[True, True, False], [True, False, False]][rank]
    assert counted("all_true", topology.all_true(votes)) == [True, False, False]
    assert counted("sum_ints", topology.sum_ints([rank, 100])) == [1, 200]
    assert counted("broadcast_object", topology.broadcast_object(OBJECT if rank == 0 else None)) == OBJECT
    array = counted("broadcast_array", topology.broadcast_array(
        np.arange(5, dtype=np.float64) if rank == 0 else np.full(5, -1.0), 5, torch.float32))
    assert array.dtype == np.float32 and array.tolist() == [0, 1, 2, 3, 4], array
    parts = counted("gather_to_main", topology.gather_to_main(torch.full((6,), rank + 1, dtype=torch.uint8)))
    if rank == 0:
        assert [part.tolist() for part in parts] == [[1] * 6, [2] * 6], parts
    else:
        assert parts is None
    # Item k that rank r sends to rank d: the bytes (r, d, k).
    sends = SEND_COUNTS[rank]
    payload = np.array([(rank, dest, k) for dest in range(2) for k in range(sends[dest])], dtype=np.uint8).reshape(-1)
    received = counted("all_to_all_bytes", topology.all_to_all_bytes(payload, np.array(sends), ITEMSIZE))
    expected = [(source, rank, k) for source in range(2) for k in range(SEND_COUNTS[source][rank])]
    assert received.dtype == np.uint8 and received.reshape(-1, 3).tolist() == [list(e) for e in expected], received
    # The sharded transport: rank 0 sends records of samples 3 and 17, rank 1 of 18 (samples 0-15 are rank 0's).
    dtype = record_dtype(NUM_SAMPLES)
    records = counted("exchange", ShardedTransport(topology, NUM_SAMPLES).exchange(
        _columns([3, 17] if rank == 0 else [18], step=rank), dtype))
    assert records["index"].tolist() == ([3] if rank == 0 else [17, 18]), records
    assert records["step"].tolist() == ([0] if rank == 0 else [0, 1]) and records.dtype == dtype
    assert np.array_equal(records["loss"], (records["index"] / 10).astype(np.float32))
    weights = np.linspace(0, 1, NUM_SAMPLES, dtype=np.float32)
    decision = counted("broadcast_decision", broadcast_decision(
        topology, np.packbits(MASK) if rank == 0 else np.zeros(3, np.uint8), {"epoch": 2} if rank == 0 else None, 3,
        weights=weights if rank == 0 else None, draws=None if rank == 0 else np.arange(4)))
    assert np.array_equal(decision[0], np.packbits(MASK)) and decision[1] == {"epoch": 2}
    assert np.array_equal(decision[2], weights) and decision[3] is None  # rank 0 has no draws
    assert counted("max_over_ranks", MainProcessTransport(topology).max_over_ranks(rank)) == 1
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump({"topology": [topology.rank, topology.world_size, topology.is_main], "traffic": traffic,
                   "total": topology.traffic}, handle)
    dist.barrier()  # a clean gloo shutdown: without it an exit can abort
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    _worker(parser.parse_args().out)
