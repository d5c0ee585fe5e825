"""The README's Python examples run as written, against the local SeaweedFS."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from .conftest import Server, _empty_bucket

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture
def demo_bucket(seaweed: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    client = seaweed.client()
    client.create_bucket(Bucket="s3fast-demo")  # type: ignore[attr-defined]
    env = {**os.environ, **seaweed.env()}
    yield env
    _empty_bucket(client, "s3fast-demo")
    client.delete_bucket(Bucket="s3fast-demo")  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, demo_bucket: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        env=demo_bucket,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
