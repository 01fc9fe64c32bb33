"""Open a study's storage the way every morsearch process must: schema first, heartbeat on.

Optuna creates its tables when an ``RDBStorage`` is built, and concurrent first
creation races (optuna#1092), so storage construction runs under the store's
cross-process ``schema`` lock. Every storage morsearch opens has the heartbeat
enabled and retries a stale trial (a worker that died mid-trial) once more as a
WAITING copy with the same parameters, which the next ``ask()`` picks up.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import optuna

from morsearch import store
from morsearch.errors import StorageError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

# A worker writes a heartbeat every HEARTBEAT_S; after GRACE_S without one its trial is failed and retried.
HEARTBEAT_S = 10
GRACE_S = 60
MAX_RETRY = 3

optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_storage(
    url: str, *, heartbeat_interval: int = HEARTBEAT_S, grace_period: int = GRACE_S, max_retry: int = MAX_RETRY
) -> tuple[optuna.storages.RDBStorage, Engine]:
    """Optuna's storage of one database and the engine morsearch uses on it, both schemas ensured.

    morsearch's records and locks go through Optuna's own engine, so a worker holds
    one connection pool, not two (PostgreSQL allows ~100 connections in all).

    Args:
        url: A resolved SQLAlchemy URL (``morsearch.store.resolve_url``).
        heartbeat_interval: Seconds between a running trial's heartbeats.
        grace_period: Seconds without a heartbeat after which a trial is stale.
        max_retry: How often one trial is retried after its worker died.

    Raises:
        StorageError: The database cannot be reached or its schema is too new.
    """
    engine = store.get_engine(url)
    store.ensure_schema(engine)
    with warnings.catch_warnings():  # experimental since 2.8, stable in practice
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    try:
        with store.storage_lock(engine, "schema"), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=store.engine.engine_kwargs(url),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=retry,
            )
    except (RuntimeError, ValueError) as err:  # optuna's schema-version complaints
        raise StorageError(f"storage {store.redact(url)}: {err}") from None
    engine.dispose()  # only needed for the schema; its pooled connection would sit idle
    store.engine.configure_engine(storage.engine)
    return storage, storage.engine


def create_study(
    storage: optuna.storages.RDBStorage,
    engine: Engine,
    study_name: str,
    directions: Sequence[str],
    metric_names: Sequence[str],
    sampler: optuna.samplers.BaseSampler | None = None,
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it if it exists (any number of processes may race).

    Returns:
        The study and whether this call created it.

    Raises:
        StorageError: A study of that name exists with other objectives.
    """
    with store.storage_lock(engine, f"study:{study_name}"):
        try:
            study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
            created = False
        except KeyError:
            study = optuna.create_study(
                study_name=study_name, storage=storage, sampler=sampler, directions=list(directions)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(metric_names))
            created = True
    have = [d.name.lower() for d in study.directions]
    if have != [d.lower() for d in directions] or (
        study.metric_names and list(study.metric_names) != list(metric_names)
    ):
        raise StorageError(
            f"study {study_name!r} already exists with objectives {study.metric_names or have} "
            f"({', '.join(have)}), not {list(metric_names)}; choose another --study name or delete the study"
        )
    return study, created


def load_study(
    storage: optuna.storages.RDBStorage, study_name: str, sampler: optuna.samplers.BaseSampler | None = None
) -> optuna.Study:
    """Load an existing study.

    Raises:
        StorageError: No such study (the message lists those in the storage).
    """
    try:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        raise StorageError(
            f"no study {study_name!r} in {store.redact(storage.url)}; studies there: {', '.join(names) or 'none'}"
        ) from None
