"""Byte sizes: SI suffixes are powers of 10, IEC suffixes powers of 2, plain numbers bytes."""

from __future__ import annotations

import pytest

from clapkit.units import parse_bytes


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        (4096, 4096),
        (1.5e3, 1500),
        ("100B", 100),
        ("1kB", 1000),
        ("1.5 kb", 1500),
        ("256MB", 256 * 10**6),
        ("256mb", 256 * 10**6),
        ("16GB", 16 * 10**9),
        ("2TB", 2 * 10**12),
        ("1KiB", 1024),
        ("512MiB", 512 * 2**20),
        ("8GiB", 8 * 2**30),
        ("8 gib", 8 * 2**30),
        ("1TiB", 2**40),
        (" .5GiB ", 2**29),
    ],
)
def test_si_and_iec_sizes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "MB", "lots", "-3MB", "4G", "4Gi", "1 PB", "1e9", "1,000", -1])
def test_bad_sizes_name_the_text_and_the_valid_forms(text):
    with pytest.raises(ValueError, match=r"index size .*kB, MB, GB, TB \(powers of 1000\).*KiB, MiB, GiB, TiB"):
        parse_bytes(text, "index size")
