"""progress= callbacks on batch calls: one report at the start, then one per range, part or
object (never per read), and a callback that raises fails the call."""

from __future__ import annotations

import os

import pytest

from s3fast import S3, Progress, TransferConfig
from s3fast.limits import MiB

SMALL = TransferConfig(range_size=256 * 1024, part_size=5 * MiB, multipart_threshold=5 * MiB)


def test_progress_on_gets_and_puts(bucket: str, tmp_path: object) -> None:
    blobs = {f"p/{i}": os.urandom(n) for i, n in enumerate([0, 10, 300_000, 6 * MiB + 5])}
    total = sum(len(b) for b in blobs.values())
    with S3(s3root=f"s3://{bucket}", config=SMALL) as s3:
        up: list[Progress] = []
        s3.put_many(list(blobs.items()), progress=up.append)
        assert up[0] == Progress(0, 4, 0, total) and up[-1] == Progress(4, 4, total, total)
        assert len(up) <= 1 + 4 + 2 + 4  # at most once per part or object, never per read

        down: list[Progress] = []
        objs = s3.get_recursive(["p"], progress=down.append)
        assert down[0] == Progress(0, 4, 0, total) and down[-1] == Progress(4, 4, total, total)
        assert [p.bytes_done for p in down] == sorted(p.bytes_done for p in down)
        ranges = 1 + 2 + 25  # 256 KiB ranges of the two larger objects (empty/tiny: one each)
        assert len(down) <= 1 + 4 + ranges + 1
        assert sum(o.size for o in objs) == total

        many: list[Progress] = []
        s3.get_many(list(blobs), in_memory=True, progress=many.append)
        assert many[-1] == Progress(4, 4, total, None)

        files = []
        for i in range(3):
            path = os.path.join(str(tmp_path), f"f{i}")
            with open(path, "wb") as f:
                f.write(b"z" * (1000 * (i + 1)))
            files.append((f"files/{i}", path))
        seen: list[Progress] = []
        s3.put_files(files, progress=seen.append)
        assert seen[-1] == Progress(3, 3, 6000, 6000)
        seen = []
        s3.info_many([k for k, _ in files], progress=seen.append)
        assert seen[-1].objects_done == 3


def test_progress_callback_error_fails_the_call(bucket: str) -> None:
    def boom(p: Progress) -> None:
        if p.objects_done:
            raise RuntimeError("stop")

    with S3(s3root=f"s3://{bucket}") as s3:
        s3.put("k", "v")
        with pytest.raises(RuntimeError, match="stop"):
            s3.get_many(["k"], progress=boom)
        with pytest.raises(TypeError):
            s3.get_many(["k"], progress=5)  # type: ignore[arg-type]
