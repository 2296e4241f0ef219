"""Layout choice: the auto policy by size and memory budget, registered names, factory strings."""

from __future__ import annotations

import pytest

from clapkit.index import AudioIndex, choose_index
from clapkit.units import parse_bytes


def test_auto_choice_follows_size_and_budget():
    assert choose_index(5_000, 512).key == "Flat"
    assert choose_index(50_000, 512).key == "IVF1024,Flat"
    # 1M × 512 floats are 2 GB: IVF-Flat fits 2 GiB; at 1 GiB only PQ codes do.
    plan = choose_index(1_000_000, 512, "2GiB")
    assert plan.key == "IVF4096,Flat" and plan.kind == "ivf-flat" and plan.bytes <= parse_bytes("2GiB")
    plan = choose_index(1_000_000, 512, "1GiB")
    assert plan.kind == "ivf-pq" and plan.key == "IVF4096,PQ64x8"
    assert choose_index(100_000_000, 512, "16GiB").key.startswith("IVF32768_HNSW32,PQ")
    with pytest.raises(ValueError, match="raise memory_budget"):
        choose_index(100_000_000, 512, "100MiB")


def test_named_and_factory_layouts():
    assert choose_index(10_000, 64, index="ivf-flat").key == "IVF256,Flat"
    assert choose_index(10_000, 64, index="IVF16,SQ8").kind == "custom"
    with pytest.raises(ValueError, match="flat, hnsw, ivf-flat, ivf-pq"):
        choose_index(10, 64, index="annoy")


def test_memory_budget_units_follow_si_and_iec():
    # 1M × 512-d as IVF4096,Flat takes ~2.06e9 bytes: within 2 GiB (2.15e9), over 2 GB (2e9).
    assert choose_index(1_000_000, 512, "2GiB").kind == "ivf-flat"
    assert choose_index(1_000_000, 512, "2GB").kind == "ivf-pq"
    assert choose_index(1_000_000, 512, 2 * 10**9).kind == "ivf-pq"
    with pytest.raises(ValueError, match=r"memory budget '4G'.*GB.*GiB"):
        choose_index(10, 64, "4G")  # a bare prefix is ambiguous between 10^9 and 2^30


def test_index_memory_budget_uses_the_same_convention():
    assert AudioIndex(8, memory_budget="1GB").memory_budget == 10**9
    assert AudioIndex(8, memory_budget="1GiB").memory_budget == 2**30
    with pytest.raises(ValueError, match="memory budget 'lots'"):
        AudioIndex(8, memory_budget="lots")
