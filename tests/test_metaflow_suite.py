"""Metaflow's own S3 suite (``test/data/s3/test_s3.py``), run unchanged against s3fast on
SeaweedFS: s3fast passes every test that metaflow.S3 itself passes on the same server
(metaflow.S3's failures there are recorded in tests/metaflow_suite/metaflow_failures.txt).

One slow test (about 4 minutes on two cores). The suite is not part of this project: it is taken
from ``$S3FAST_METAFLOW_SUITE`` or ``../shared/metaflow-tests``, and the test is skipped
without it. ``make test-metaflow-suite`` runs the same with pytest's output in full.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.metaflow_suite.runner import (
    EXPECTED,
    compare,
    default_suite,
    find_suite,
    read_expected,
    run_suite,
)

SUITE_ARG = default_suite()  # read before the fixtures clear S3FAST_* variables
SUITE = find_suite(SUITE_ARG)


@pytest.mark.timeout(3600)
@pytest.mark.skipif(SUITE is None, reason=f"Metaflow's S3 test suite is not at {SUITE_ARG}")
def test_s3fast_passes_what_metaflow_passes() -> None:
    assert SUITE is not None
    result = run_suite(SUITE, "s3fast", "skip", ["-q", "--tb=short", "-rfE"])
    outcomes = result["outcomes"]
    # The suite really ran, against s3fast (not metaflow.S3: the names were swapped in time).
    assert result["returncode"] in (0, 1), f"pytest exited with {result['returncode']}"
    assert result["s3_class"] == "s3fast.sync.S3"
    assert outcomes and set(outcomes.values()) <= {"passed", "failed", "error", "skipped"}
    assert result["defaulted"] > 0  # the seeded objects got S3's default content type

    regressions, fixed = compare(outcomes, read_expected(EXPECTED))
    counts = Counter(outcomes.values())
    summary = f"{dict(counts)} in {result['wall_seconds']} s; fixed vs metaflow.S3: {fixed}"
    assert not regressions, f"fail under s3fast, pass under metaflow.S3: {regressions} ({summary})"
    assert counts["passed"] >= len(outcomes) - len(read_expected(EXPECTED))
