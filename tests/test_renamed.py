"""Public names kept as deprecated aliases after a rename: they still answer, and warn."""

from __future__ import annotations

import dataclasses

import pytest

import s3fast

pytestmark = pytest.mark.unit


def test_transfer_stats_max_concurrency_is_the_ceiling_and_warns() -> None:
    names = [f.name for f in dataclasses.fields(s3fast.TransferStats)]
    stats = s3fast.TransferStats(**{name: i + 1 for i, name in enumerate(names)})
    assert "max_concurrency" not in names
    with pytest.warns(DeprecationWarning, match="concurrency_ceiling"):
        assert stats.max_concurrency == stats.concurrency_ceiling == 1
