"""s3fast.shard: balanced by bytes, deterministic, every object exactly once."""

from __future__ import annotations

import random

import pytest

from s3fast import S3Object, shard


def _objs(sizes: list[int]) -> list[S3Object]:
    return [S3Object("s3://b/p", f"s3://b/p/{i}", None, size=n) for i, n in enumerate(sizes)]


@pytest.mark.unit
def test_greedy_largest_first_into_the_lightest_shard() -> None:
    objs = _objs([1, 7, 3, 5, 5, 2])
    shards = shard(objs, 2)
    # 7 -> s0 (7), 5 -> s1 (5), 5 -> s1 (10), 3 -> s0 (10), 2 -> s0 (tie: 12), 1 -> s1 (11)
    assert [[o.key for o in s] for s in shards] == [["1", "2", "5"], ["0", "3", "4"]]
    assert [sum(o.size for o in s) for s in shards] == [12, 11]


@pytest.mark.unit
def test_every_object_once_balanced_and_deterministic() -> None:
    rng = random.Random(6)
    sizes = [rng.randint(0, 10**9) for _ in range(1000)]
    objs = _objs(sizes)
    for n in (1, 3, 8, 64):
        shards = shard(objs, n)
        assert len(shards) == n
        flat = [o for s in shards for o in s]
        assert sorted(map(id, flat)) == sorted(map(id, objs))
        totals = [sum(o.size for o in s) for s in shards]
        assert max(totals) - min(totals) <= max(sizes)
        assert shards == shard(objs, n)  # same input, same shards
        for s in shards:  # input order within a shard
            assert [int(o.key) for o in s] == sorted(int(o.key) for o in s)


@pytest.mark.unit
def test_pairs_key_function_and_fewer_objects_than_shards() -> None:
    assert shard([("a", 3), ("b", 1)], 3) == [[("a", 3)], [("b", 1)], []]
    assert shard(["xx", "y", "zzz"], 2, size=len) == [["zzz"], ["xx", "y"]]
    assert shard([], 2) == [[], []]


@pytest.mark.unit
@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_bad_shard_counts(n: object) -> None:
    with pytest.raises(ValueError):
        shard(_objs([1]), n)  # type: ignore[arg-type]


@pytest.mark.unit
def test_objects_without_a_size_are_refused() -> None:
    with pytest.raises(ValueError, match="no size"):
        shard([S3Object(None, "s3://b/missing", None)], 2)
