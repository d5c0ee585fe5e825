"""The package's public surface: sorted __all__ lists, exports, one version, the licence."""

from __future__ import annotations

import importlib
import importlib.metadata
import pathlib
import tomllib
import typing

import pytest

import s3fast

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent
PUBLIC_MODULES = [
    "s3fast",
    "s3fast.errors",
    "s3fast.limits",
    "s3fast.objects",
    "s3fast.progress",
    "s3fast.sharding",
    "s3fast.testing",
    "s3fast.tuning",
    "s3fast.urls",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    names = module.__all__
    assert names == sorted(names) and len(set(names)) == len(names)
    missing = [n for n in names if not hasattr(module, n)]
    assert missing == []


def test_stats_type_is_exported() -> None:
    """What S3.stats and AsyncS3.stats return can be named from the package."""
    for cls in (s3fast.S3, s3fast.AsyncS3):
        hints = typing.get_type_hints(cls.stats.fget)  # type: ignore[attr-defined]
        assert hints["return"] is s3fast.TransferStats


def test_every_public_name_of_the_package_is_exported() -> None:
    """The names the docs use at the top level are in __all__."""
    for name in ("S3", "AsyncS3", "TransferConfig", "TransferStats", "Progress", "shard"):
        assert name in s3fast.__all__


def test_one_version_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "s3fast.__version__"}
    assert importlib.metadata.version("s3fast") == s3fast.__version__


def test_licence_file_matches_the_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
