"""The SQL store: morsearch's ``ms_`` tables beside Optuna's, engines and sessions. No torch."""

from morsearch.store.engine import (
    default_storage_url,
    dispose_engines,
    get_engine,
    is_sqlite,
    redact,
    resolve_url,
    session_scope,
    storage_lock,
)
from morsearch.store.records import (
    StudyRecord,
    TrialRecord,
    config_hash,
    find_completed,
    read_exports,
    read_study,
    read_trial,
    read_trials,
    set_n_trials,
    write_export,
    write_study,
    write_trial,
)
from morsearch.store.schema import SCHEMA_VERSION, ensure_schema, schema_version

__all__ = [
    "SCHEMA_VERSION",
    "StudyRecord",
    "TrialRecord",
    "config_hash",
    "default_storage_url",
    "dispose_engines",
    "ensure_schema",
    "find_completed",
    "get_engine",
    "is_sqlite",
    "read_exports",
    "read_study",
    "read_trial",
    "read_trials",
    "redact",
    "resolve_url",
    "schema_version",
    "session_scope",
    "set_n_trials",
    "storage_lock",
    "write_export",
    "write_study",
    "write_trial",
]
