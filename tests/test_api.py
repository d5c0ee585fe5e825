"""Every public method of S3 and AsyncS3, on SeaweedFS and on moto, content checked by hash."""

from __future__ import annotations

import hashlib
import io
import os
import stat

import pytest

from s3fast import (
    S3,
    AsyncS3,
    MetaflowS3Exception,
    MetaflowS3InvalidObject,
    MetaflowS3NotFound,
    MetaflowS3URLException,
    RangeInfo,
    S3GetObject,
    S3PutObject,
    TransferConfig,
)
from s3fast.limits import MiB

# Small sizes that still exercise parallel ranges and multipart uploads.
SMALL_PARTS = TransferConfig(range_size=256 * 1024, part_size=5 * MiB, multipart_threshold=5 * MiB)

AWKWARD = {
    "empty": b"",
    "plain.txt": b"hello world",
    "ünïcödé/✓ data.bin": os.urandom(1000),
    "with space/a b.txt": b"spaces",
    "hash#1/x?y=z.txt": b"hash and query characters",
    "quote'\"/q.txt": b"quotes",
    "/".join(["d"] * 300) + "/leaf": b"deep",
    "dir": b"an object that is also a prefix",
    "dir/child": b"child",
    "big.bin": os.urandom(6 * MiB + 123),
}


def sha(data: bytes | None) -> str:
    assert data is not None
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def seeded(bucket: str, boto: object) -> str:
    root = f"s3://{bucket}/root"
    for key, data in AWKWARD.items():
        boto.put_object(Bucket=bucket, Key=f"root/{key}", Body=data)  # type: ignore[attr-defined]
    return root


@pytest.mark.parametrize("in_memory", [False, True])
def test_get_many_awkward_keys(seeded: str, in_memory: bool) -> None:
    keys = list(AWKWARD)
    with S3(s3root=seeded, config=SMALL_PARTS) as s3:
        objs = s3.get_many(keys, in_memory=in_memory)
        assert [o.key for o in objs] == keys
        for obj, key in zip(objs, keys, strict=True):
            assert obj.exists and obj.downloaded
            assert obj.url == f"{seeded}/{key}"
            assert sha(obj.blob) == sha(AWKWARD[key]), key
            assert obj.size == len(AWKWARD[key])
            assert obj.range_info == RangeInfo(len(AWKWARD[key]), 0, len(AWKWARD[key]))
            assert obj.etag
            if in_memory:
                assert obj.path is None
            else:
                assert obj.path is not None and os.path.dirname(obj.path) in s3.tmpdirs
                assert stat.S_IMODE(os.stat(obj.path).st_mode) == 0o600
                assert stat.S_IMODE(os.stat(os.path.dirname(obj.path)).st_mode) == 0o700
        paths = [o.path for o in objs]
    assert all(p is None or not os.path.exists(p) for p in paths)


def test_get_single_and_root(seeded: str) -> None:
    with S3(s3root=seeded + "/plain.txt") as s3:
        obj = s3.get()
        assert obj.blob == b"hello world" and obj.text == "hello world"
        assert obj.key == seeded + "/plain.txt" and obj.prefix is None
    with S3() as s3:
        obj = s3.get(seeded + "/big.bin", return_info=False)
        assert sha(obj.blob) == sha(AWKWARD["big.bin"])
        assert not obj.has_info and obj.range_info is None and obj.metadata is None
        assert obj.key == obj.url


def test_ranges(seeded: str) -> None:
    data = AWKWARD["big.bin"]
    n = len(data)
    cases = [
        (S3GetObject("big.bin", 0, 10), data[:10], RangeInfo(n, 0, 10)),
        (S3GetObject("big.bin", 100, None), data[100:], RangeInfo(n, 100, n - 100)),
        (S3GetObject("big.bin", None, -50), data[-50:], RangeInfo(n, n - 50, 50)),
        (S3GetObject("big.bin", n - 5, 1000), data[-5:], RangeInfo(n, n - 5, 5)),
        (
            S3GetObject("big.bin", 1000, 3 * MiB),
            data[1000 : 1000 + 3 * MiB],
            RangeInfo(n, 1000, 3 * MiB),
        ),
        (S3GetObject("plain.txt", 6, 100), b"world", RangeInfo(11, 6, 5)),
    ]
    with S3(s3root=seeded, config=SMALL_PARTS) as s3:
        for in_memory in (False, True):
            objs = s3.get_many([c[0] for c in cases], in_memory=in_memory)
            for obj, (_, want, info) in zip(objs, cases, strict=True):
                assert obj.blob == want
                assert obj.range_info == info
                assert obj.size == len(want)
        one = s3.get(S3GetObject("big.bin", 10, 20))
        assert one.blob == data[10:30]


def test_missing(seeded: str) -> None:
    with S3(s3root=seeded) as s3:
        with pytest.raises(MetaflowS3NotFound) as err:
            s3.get("nope")
        assert seeded + "/nope" in str(err.value)
        assert isinstance(err.value, FileNotFoundError) and isinstance(
            err.value, MetaflowS3Exception
        )
        with pytest.raises(MetaflowS3NotFound):
            s3.get_many(["plain.txt", "nope"])
        objs = s3.get_many(["plain.txt", "nope"], return_missing=True)
        assert [o.exists for o in objs] == [True, False]
        assert objs[1].key == "nope" and not objs[1].downloaded and objs[1].blob is None
        assert not s3.get("nope", return_missing=True).exists
        assert not s3.info("nope", return_missing=True).exists
        with pytest.raises(MetaflowS3NotFound):
            s3.info("nope")
        with pytest.raises(MetaflowS3NotFound):
            s3.info_many(["plain.txt", "nope"])


def test_put_get_roundtrip_all_value_types(bucket: str, tmp_path: object) -> None:
    big = os.urandom(11 * MiB + 7)
    with S3(s3root=f"s3://{bucket}/up", config=SMALL_PARTS) as s3:
        assert s3.put("s", "ünï text") == f"s3://{bucket}/up/s"
        s3.put("b", b"\x00\x01")
        s3.put("f", io.BytesIO(big), content_type="application/x-big", metadata={"n": [1, 2]})
        s3.put(S3PutObject("k"), b"via S3PutObject key")
        assert s3.get("s").text == "ünï text"
        assert s3.get("b").blob == b"\x00\x01"
        got = s3.get("f")
        assert sha(got.blob) == sha(big)
        assert got.content_type == "application/x-big" and got.metadata == {"n": [1, 2]}
        assert s3.get("k").blob == b"via S3PutObject key"
        info = s3.info("f")
        assert info.size == len(big) and info.metadata == {"n": [1, 2]} and not info.downloaded
        assert info.last_modified and info.last_modified > 1.6e9


def test_a_file_download_spans_several_receive_windows(bucket: str) -> None:
    """One body into a file over several of the receive windows it is written from (plain
    HTTP, HTTPS, moto): byte-exact, whole and ranged."""
    from s3fast._engine.sinks import WINDOW

    blob = os.urandom(2 * WINDOW + 1234)
    config = TransferConfig(range_size=8 * MiB)
    with S3(s3root=f"s3://{bucket}/windows", config=config) as s3:
        s3.put("blob", blob)
        got = s3.get("blob")
        with open(str(got.path), "rb") as f:
            assert sha(f.read()) == sha(blob)
        part = s3.get(S3GetObject("blob", WINDOW - 1, WINDOW + 2))
        with open(str(part.path), "rb") as f:
            assert f.read() == blob[WINDOW - 1 : 2 * WINDOW + 1]


def test_put_many_and_files(bucket: str, tmp_path: object) -> None:
    import pathlib

    tmp = pathlib.Path(str(tmp_path))
    files = {}
    for i, size in enumerate([0, 10, 6 * MiB + 1]):
        p = tmp / f"f{i}"
        data = os.urandom(size)
        p.write_bytes(data)
        files[f"files/{i}"] = (str(p), data)
    with S3(s3root=f"s3://{bucket}", config=SMALL_PARTS) as s3:
        res = s3.put_files([(k, p) for k, (p, _) in files.items()])
        assert res == [(k, f"s3://{bucket}/{k}") for k in files]
        res = s3.put_files(
            [
                S3PutObject(
                    "files/meta", path=files["files/1"][0], metadata={"a": "b"}, content_type="x/y"
                )
            ]
        )
        assert res == [("files/meta", f"s3://{bucket}/files/meta")]
        for k, (_, data) in files.items():
            assert sha(s3.get(k).blob) == sha(data)
        meta = s3.info("files/meta")
        assert meta.metadata == {"a": "b"} and meta.content_type == "x/y"
        res = s3.put_many(
            [
                ("m/1", "one"),
                S3PutObject("m/2", value=b"two", metadata={"z": 1}),
                ("m/3", io.BytesIO(b"three")),
            ]
        )
        assert [k for k, _ in res] == ["m/1", "m/2", "m/3"]
        assert [o.blob for o in s3.get_many(["m/1", "m/2", "m/3"])] == [b"one", b"two", b"three"]
        assert s3.info("m/2").metadata == {"z": 1}
        with pytest.raises(MetaflowS3NotFound, match="Local file not found"):
            s3.put_files([("x", str(tmp / "does-not-exist"))])
        with pytest.raises(MetaflowS3InvalidObject):
            s3.put_many([("x", 42)])
        # The same key twice (metaflow.S3 accepts it): the last value is stored, and every
        # entry reported, as two calls in a row would leave it.
        res = s3.put_many([("dup", "a"), ("other", "o"), ("dup", "b")])
        assert [k for k, _ in res] == ["dup", "other", "dup"]
        assert s3.get("dup").text == "b" and s3.get("other").text == "o"
        assert s3.put_many([("dup", "c"), ("dup", "d")], overwrite=False) == []
        assert s3.get("dup").text == "b"
        dups = [tmp / "dup1", tmp / "dup2"]
        for path, text in zip(dups, ["first", "second"], strict=True):
            path.write_text(text)
        res = s3.put_files([("pf", str(dups[0])), ("pf", str(dups[1]))])
        assert [k for k, _ in res] == ["pf", "pf"] and s3.get("pf").text == "second"


def test_overwrite_false(bucket: str) -> None:
    with S3(s3root=f"s3://{bucket}", config=SMALL_PARTS) as s3:
        s3.put("a", "first")
        assert s3.put("a", "second", overwrite=False) == f"s3://{bucket}/a"
        assert s3.get("a").text == "first"
        res = s3.put_many([("a", "x"), ("b", "new")], overwrite=False)
        assert res == [("b", f"s3://{bucket}/b")]
        assert s3.get("a").text == "first" and s3.get("b").text == "new"
        big = os.urandom(6 * MiB)
        s3.put("big", big)
        s3.put("big", os.urandom(6 * MiB), overwrite=False)  # multipart path, skipped
        assert sha(s3.get("big").blob) == sha(big)


def test_listing(seeded: str) -> None:
    with S3(s3root=seeded) as s3:
        top = s3.list_paths()
        by_key = {o.key: o for o in top}
        assert by_key["plain.txt"].exists and by_key["plain.txt"].size == 11
        assert by_key["empty"].exists and by_key["empty"].size == 0  # metaflow says "missing"
        assert not by_key["d"].exists and by_key["d"].url == seeded + "/d/"
        # "dir" is both an object and a prefix: one entry for each
        assert sorted(o.exists for o in top if o.key == "dir") == [False, True]
        rec = s3.list_recursive()
        assert sorted(o.key for o in rec) == sorted(AWKWARD)
        assert all(o.exists for o in rec)
        sub = s3.list_recursive(["dir"])
        assert [o.url for o in sub] == [seeded + "/dir/child"] and sub[0].key == "child"
        assert [o.key for o in s3.list_paths(["ünïcödé"])] == ["✓ data.bin"]
        assert s3.list_paths(["nothing-here"]) == []


def test_get_recursive_and_all(seeded: str) -> None:
    with S3(s3root=seeded, config=SMALL_PARTS) as s3:
        objs = s3.get_recursive(["dir", "with space"])
        assert {o.url for o in objs} == {
            seeded + "/dir",
            seeded + "/dir/child",
            seeded + "/with space/a b.txt",
        }
        child = next(o for o in objs if o.url.endswith("child"))
        assert child.key == "child" and child.prefix == seeded + "/dir" and child.blob == b"child"
        objs = s3.get_recursive(["dir"], return_info=True)
        assert {o.key for o in objs} == {"dir", "dir/child"} and all(o.has_info for o in objs)
        everything = s3.get_all(in_memory=True)
        assert {o.url[len(seeded) + 1 :]: sha(o.blob) for o in everything} == {
            k: sha(v) for k, v in AWKWARD.items()
        }


def test_info_many(seeded: str) -> None:
    with S3(s3root=seeded) as s3:
        objs = s3.info_many([*AWKWARD, "nope"], return_missing=True)
        assert [o.size for o in objs] == [len(v) for v in AWKWARD.values()] + [None]
        assert not any(o.downloaded for o in objs)


def test_url_errors(seeded: str) -> None:
    with S3() as s3:
        for bad in ["plain.txt", "s3://", "s3://b", "http://x/y", "s3://UPPER bad/x"]:
            with pytest.raises(MetaflowS3URLException):
                s3.get(bad)
        with pytest.raises(MetaflowS3URLException):
            s3.get_all()
        with pytest.raises(MetaflowS3URLException):
            s3.get(123)  # type: ignore[arg-type]
    with S3(s3root=seeded) as s3, pytest.raises(MetaflowS3URLException, match="absolute"):
        s3.get(seeded + "/plain.txt")
    with pytest.raises(MetaflowS3URLException):
        S3(s3root="not-s3://x")


def test_closed_client_refuses(seeded: str) -> None:
    s3 = S3(s3root=seeded)
    s3.close()
    with pytest.raises(RuntimeError, match="closed"):
        s3.get("plain.txt")
    s3.close()  # twice is fine


@pytest.mark.asyncio
async def test_async_api(seeded: str) -> None:
    async with AsyncS3(s3root=seeded, config=SMALL_PARTS) as s3:
        objs = await s3.get_many(["big.bin", "plain.txt"], in_memory=True)
        assert sha(objs[0].blob) == sha(AWKWARD["big.bin"])
        obj = await s3.get("plain.txt")
        assert obj.blob == b"hello world"
        url = await s3.put("async/x", b"from async", metadata={"k": "v"})
        assert (await s3.info("async/x")).metadata == {"k": "v"}
        assert url == seeded + "/async/x"
        assert [o.key for o in await s3.list_paths(["async"])] == ["x"]
        assert len(await s3.list_recursive(["dir"])) == 1
        assert len(await s3.get_recursive(["async"])) == 1
        assert len(await s3.get_all()) == len(AWKWARD) + 1
        assert (await s3.put_many([("async/y", "y")])) == [("async/y", seeded + "/async/y")]
        assert len(await s3.info_many(["async/x", "async/y"])) == 2
        dirs = s3.tmpdirs
    assert dirs and not any(map(os.path.exists, dirs))


def test_botocore_transport_gives_the_same_results(seeded: str, tmp_path: object) -> None:
    """transport="botocore" (everything through aiobotocore) is the oracle for the lean path."""
    import dataclasses
    import pathlib

    keys = [
        *AWKWARD,
        S3GetObject("big.bin", 1000, 300_000),
        S3GetObject("big.bin", None, -77),
        "nope",
    ]
    local = pathlib.Path(str(tmp_path)) / "up"
    local.write_bytes(os.urandom(6 * MiB + 3))

    def run(transport: str) -> list[object]:
        cfg = dataclasses.replace(SMALL_PARTS, transport=transport)
        with S3(s3root=seeded, config=cfg) as s3:
            out: list[object] = []
            for in_memory in (False, True):
                objs = s3.get_many(keys, return_missing=True, in_memory=in_memory)
                out += [
                    (
                        o.url,
                        o.size,
                        o.range_info,
                        o.metadata,
                        o.etag,
                        sha(o.blob) if o.exists else None,
                    )
                    for o in objs
                ]
            out += [(o.url, o.size) for o in s3.list_recursive()]
            out += [(o.url, o.size) for o in s3.list_paths(["dir", ""])]
            out += [(o.url, o.size, o.content_type) for o in s3.info_many(list(AWKWARD))]
        with S3(s3root=seeded + "-uploads", config=cfg) as s3:  # outside the listed prefix
            s3.put_files([(transport, str(local))])
            out.append(sha(s3.get(transport).blob))
        return out

    assert run("botocore") == run("http")
