"""Metaflow's own S3 test suite, run against s3fast: ``python -m tests.metaflow_suite``.

The suite is not part of this project; point the runner at a Metaflow checkout (or the copy
in ``../shared/metaflow-tests``). See runner.py for what is set up and plugin.py for how the
suite is pointed at s3fast.
"""
