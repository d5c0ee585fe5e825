"""A pytest plugin that runs Metaflow's own S3 suite (``test/data/s3/test_s3.py``) against
``s3fast.S3``, unchanged, or against ``metaflow.S3`` itself for comparison.

Loaded with ``-p tests.metaflow_suite.plugin`` (the runner in this package does that):

``--s3-impl=s3fast``
    Before the suite is imported, the names it takes from ``metaflow.plugins.datatools.s3``
    (``S3``, ``S3GetObject``, ``S3PutObject`` and the exceptions) are pointed at s3fast's.
``--s3-impl=metaflow``
    Nothing is patched: metaflow.S3 runs its own suite.
``--big-file=skip`` (default) or ``full``
    ``s3_data.py`` builds a 5 GiB object at import time (uploaded once, held in memory for the
    ``put_files`` cases, written to disk and read back as a whole by several tests: tens of
    GiB of disk, memory and traffic). ``skip`` loads ``s3_data.py`` with that one size
    replaced by 1 KiB and deselects the ``5gb`` cases; the file itself is not edited.
    ``full`` runs it as it is.
``--mfsuite-report=PATH``
    Write each test's outcome (passed, failed, error, skipped) as JSON.
``--mfsuite-only=PATH``
    Run only the tests whose node ids are listed in PATH (one a line, ``#`` comments).

Benchmark-marked tests are deselected with ``-m "not benchmark"`` (the marker is registered
here, so pytest-benchmark is not needed).
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time
from collections.abc import Sequence
from types import CodeType, ModuleType
from typing import Any

import pytest

# What the suite imports from metaflow.plugins.datatools.s3, and more of the same family.
PATCHED = (
    "S3",
    "S3GetObject",
    "S3PutObject",
    "MetaflowS3AccessDenied",
    "MetaflowS3Exception",
    "MetaflowS3InsufficientDiskSpace",
    "MetaflowS3InvalidObject",
    "MetaflowS3InvalidRange",
    "MetaflowS3NotFound",
    "MetaflowS3URLException",
)
BIG_KEY = "5gb_file"  # the dict key in s3_data.py whose value is 5 * 1024**3
SMALL_SIZE = 1024


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("metaflow-suite", "Metaflow's S3 suite against s3fast")
    group.addoption("--s3-impl", choices=("s3fast", "metaflow"), default="s3fast")
    group.addoption("--big-file", choices=("skip", "full"), default="skip")
    group.addoption("--mfsuite-report", default=None, metavar="PATH")
    group.addoption("--mfsuite-only", default=None, metavar="PATH", help="run only these node ids")


def point_metaflow_at_s3fast() -> None:
    """Point the names the suite imports from ``metaflow.plugins.datatools.s3`` at s3fast's."""
    import metaflow.plugins.datatools.s3 as mfs3

    import s3fast

    for name in PATCHED:
        setattr(mfs3, name, getattr(s3fast, name))


class _ShrinkBigFile(ast.NodeTransformer):
    def __init__(self) -> None:
        self.replaced = 0

    def visit_Dict(self, node: ast.Dict) -> ast.AST:
        self.generic_visit(node)
        for i, key in enumerate(node.keys):
            if isinstance(key, ast.Constant) and key.value == BIG_KEY:
                node.values[i] = ast.copy_location(ast.Constant(SMALL_SIZE), node.values[i])
                self.replaced += 1
        return node


class _SmallDataLoader(importlib.machinery.SourceFileLoader):
    """Loads ``s3_data.py`` from its source (never a cached .pyc) with the 5 GiB size
    replaced."""

    def get_code(self, fullname: str) -> CodeType:
        source = self.get_data(self.path)
        tree = ast.parse(source, self.path)
        shrink = _ShrinkBigFile()
        tree = ast.fix_missing_locations(shrink.visit(tree))
        if not shrink.replaced:
            raise RuntimeError(
                f"{self.path} has no {BIG_KEY!r} entry any more: update "
                "tests/metaflow_suite/plugin.py, or run with --big-file=full"
            )
        return compile(tree, self.path, "exec", dont_inherit=True)


class _SmallDataFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.rpartition(".")[2] != "s3_data":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        if not os.path.exists(os.path.join(os.path.dirname(spec.origin), "test_s3.py")):
            return None
        spec.loader = _SmallDataLoader(fullname, spec.origin)
        return spec


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Before the suite's conftest and modules are imported."""
    opts = early_config.known_args_namespace
    if opts.s3_impl == "s3fast":
        point_metaflow_at_s3fast()
    if opts.big_file == "skip":
        sys.meta_path.insert(0, _SmallDataFinder())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "benchmark: pytest-benchmark's marker (deselected here)")


def pytest_report_header(config: pytest.Config) -> str:
    import metaflow.plugins.datatools.s3 as mfs3

    s3 = mfs3.S3
    return (
        f"metaflow suite: S3 is {s3.__module__}.{s3.__qualname__}; "
        f"5 GiB case: {config.getoption('big_file')}"
    )


def _wanted(item: pytest.Item, big_file: str, only: set[str] | None) -> bool:
    callspec = getattr(item, "callspec", None)
    if big_file == "skip" and callspec is not None and "5gb" in callspec.id:
        return False
    return only is None or item.nodeid in only


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    only = None
    if path := config.getoption("mfsuite_only"):
        with open(path) as f:
            only = {s for line in f if (s := line.strip()) and not s.startswith("#")}
    keep, drop = [], []
    for item in items:
        (keep if _wanted(item, config.getoption("big_file"), only) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


_outcomes: dict[str, str] = {}  # node id -> passed, failed, error or skipped
_durations: dict[str, float] = {}  # node id -> seconds (setup, call and teardown)
_started = time.monotonic()


def pytest_sessionstart(session: pytest.Session) -> None:
    global _started
    _started = time.monotonic()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    previous = _outcomes.get(report.nodeid)
    if previous in ("failed", "error"):  # keep the first failure (a teardown error after it)
        return
    if report.when == "call":
        outcome = report.outcome
    elif report.failed:
        outcome = "error"
    elif report.skipped:
        outcome = "skipped"
    else:
        outcome = previous or "passed"
    _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("mfsuite_report")
    if not path:
        return
    import metaflow.plugins.datatools.s3 as mfs3

    report: dict[str, Any] = {
        "impl": session.config.getoption("s3_impl"),
        "s3_class": f"{mfs3.S3.__module__}.{mfs3.S3.__qualname__}",
        "big_file": session.config.getoption("big_file"),
        "exitstatus": int(exitstatus),
        "seconds": round(time.monotonic() - _started, 1),
        "outcomes": _outcomes,
        "durations": {k: round(v, 2) for k, v in _durations.items()},
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
