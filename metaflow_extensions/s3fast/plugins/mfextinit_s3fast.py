"""Registers s3fast's S3 datastore and IncludeFile client under Metaflow's own name, ``s3``,
so they take the place of core's, only when ``METAFLOW_S3FAST_ENABLED`` is on. Off, this
module declares nothing and imports nothing beyond Metaflow's config."""

from metaflow.metaflow_config import S3FAST_ENABLED as _ENABLED  # type: ignore[attr-defined]

if _ENABLED:
    DATASTORES_DESC = [("s3", ".s3fast_storage.S3FastStorage")]
    DATACLIENTS_DESC = [("s3", ".s3fast_storage.S3FastDataClient")]

del _ENABLED
