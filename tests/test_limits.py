"""S3's limits and part planning (no I/O)."""

from __future__ import annotations

import pytest

from s3fast.limits import MAX_PARTS, GiB, MiB, TiB, part_size_for, split


@pytest.mark.unit
def test_part_planning() -> None:
    assert part_size_for(100, 8 * MiB) == 8 * MiB
    assert part_size_for(100, 1) == 5 * MiB
    big = part_size_for(5 * TiB, 8 * MiB)
    assert -(-5 * TiB // big) <= MAX_PARTS and big <= 5 * GiB
    assert part_size_for(200 * GiB, 8 * MiB) == 32 * MiB
    with pytest.raises(ValueError):
        part_size_for(6 * TiB, 8 * MiB)
    assert split(0, 9, 4) == [(0, 3), (4, 7), (8, 9)]
    assert split(10, 9, 4) == []
