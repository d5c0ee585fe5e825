"""Full-object checksums: pieces combine to the whole, and only full-object values are used.
The end-to-end checks (a flipped byte caught, checksums taken as bodies land) are in
tests/test_transport.py."""

from __future__ import annotations

import pytest

from s3fast.limits import MiB


@pytest.mark.unit
@pytest.mark.parametrize("name", ["crc32", "crc32c", "crc64nvme"])
def test_checksums_of_pieces_combine_to_the_whole(name: str) -> None:
    import itertools
    import os
    import zlib

    from s3fast._engine.checksums import ALGORITHMS, combined

    algorithm = ALGORITHMS[name]
    data = os.urandom(3 * MiB + 17)
    cuts = [0, 1, 4096, 1 * MiB, 3 * MiB, len(data)]
    pieces = [(algorithm.of(data[a:b]), b - a) for a, b in itertools.pairwise(cuts)]
    assert combined(algorithm, pieces) == algorithm.of(data)
    assert algorithm.decode(algorithm.encode(algorithm.of(data))) == algorithm.of(data)
    if name == "crc32":
        assert algorithm.of(data) == zlib.crc32(data)


@pytest.mark.unit
def test_only_full_object_checksums_are_used() -> None:
    from s3fast._engine.checksums import full_object

    crc = "/gcRcQ=="
    assert str(full_object({"ChecksumCRC32": crc, "ETag": '"e"'})) == f"CRC32 {crc}"
    assert full_object({"ChecksumCRC32": crc, "ChecksumType": "FULL_OBJECT", "ETag": '"e-2"'})
    assert full_object({"ChecksumCRC32": crc + "-2", "ETag": '"e-2"'}) is None
    assert full_object({"ChecksumCRC32": crc, "ChecksumType": "COMPOSITE"}) is None
    assert full_object({"ChecksumCRC32": crc, "ETag": '"e-2"'}) is None  # untyped, multipart
    assert full_object({"ChecksumCRC32": "not base64!", "ETag": '"e"'}) is None
    assert full_object({"ETag": '"e"'}) is None
