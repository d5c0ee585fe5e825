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
CLI_BLOCK = re.search(r"## Command line\n.*?```sh\n(.*?)```", README.read_text(), flags=re.S)


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


def test_readme_command_line_runs(demo_bucket: dict[str, str], tmp_path: pathlib.Path) -> None:
    """The command-line block runs as written (all but `s3fast bench`: benchmarks are not
    tests), with the package's console script on PATH."""
    assert CLI_BLOCK is not None
    lines = [line for line in CLI_BLOCK.group(1).splitlines() if "s3fast bench" not in line]
    assert len(lines) >= 8
    bindir = os.path.dirname(sys.executable)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        env={**demo_bucket, "PATH": bindir + os.pathsep + demo_bucket.get("PATH", "")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "world" in done.stdout and "s3://s3fast-demo/cli/a.txt" in done.stdout
    assert (tmp_path / "txt" / "a.txt").read_text() == "hello\n"
    assert (tmp_path / "restored" / "sub" / "b.txt").read_text() == "world\n"
