"""The live app's reads: a study's trials in a few column-selective queries, refreshed incrementally.

``StudyView.trials()`` reads through Optuna's ORM (``study.get_trials``) and the store's
(``store.read_trials``): about 130,000 mapped objects for 5,000 trials, 5-10 s on a
2-core machine, all of it before the dashboard can draw anything. ``LiveStudyView``
returns the same ``TrialRecord`` objects from SQLAlchemy Core queries over the same
tables (one per table, only the columns a record needs, no identity map), in a few
hundred milliseconds:

    trials            trial_id, number, state, datetimes     (every refresh: 5,000 small rows)
    trial_values      objective values                       \
    trial_params      value + distribution JSON               |  only for trials that are new
    trial_*attributes user and system attributes (JSON)       |  or changed since the last read
    ms_trials         morsearch's record, curve, measurement /

The rows become an Optuna ``FrozenTrial`` and a ``store.TrialRecord`` and are joined by
``search.results.join_trial_record``, the function ``StudyView`` uses, so both views give equal
records (a test compares them). Finished trials never change in Optuna, so a refresh
re-reads only new and unfinished trials, plus finished ones whose ms_ record had not
arrived yet (it is written after ``tell``).

The tables come from Optuna's own models (``optuna.storages._rdb.models``) and the
store's schema, so column names and types follow the installed versions; the store is
opened read-only by ``search.results``, as for ``StudyView``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from morsearch import store
from morsearch.search.results import StudyView, TrialRecord, finished_recently, join_trial_record, open_study
from morsearch.store.schema import CurvePointRow, MeasurementRow, TrialRow

__all__ = ["LiveStudyView", "open_live_study", "study_names"]

IN_LIST_MAX = 500
"""Above this many changed trials, child rows are read for the whole study and filtered here."""

_STORE_FIELDS = tuple(f.name for f in dataclasses.fields(store.TrialRecord) if f.name not in ("curve", "measurement"))


def _models() -> Any:
    from optuna.storages._rdb import models

    return models


@lru_cache(maxsize=256)
def _distribution(text: str) -> Any:
    # a study has a handful of distinct distributions shared by thousands of params
    from optuna.distributions import json_to_distribution

    return json_to_distribution(text)


def _local(value: dt.datetime | None) -> dt.datetime | None:
    """Optuna stores naive UTC and shows naive local time (as ``TrialModel.datetime_start`` does)."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)


def study_names(engine: sa.engine.Engine) -> list[str]:
    """The names of the studies in a store, sorted (one query on an open engine)."""
    studies = _models().StudyModel.__table__
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(studies.c.study_name)).scalars())


def open_live_study(storage_url: str, study_name: str | None = None) -> LiveStudyView:
    """``open_study`` for the live app: the same checks and messages, the fast reads.

    Raises:
        StorageError: the store cannot be read, or the study is not in it.
    """
    base = open_study(storage_url, study_name)
    return LiveStudyView(base._study, base.storage_url, base._engine)


class LiveStudyView(StudyView):
    """A ``StudyView`` whose ``trials()`` reads with Core queries; same records, same refresh rules."""

    def __init__(self, study: Any, storage_url: str, engine: sa.engine.Engine) -> None:
        super().__init__(study, storage_url, engine)
        models = _models()
        self._t_trials = models.TrialModel.__table__
        self._t_values = models.TrialValueModel.__table__
        self._t_params = models.TrialParamModel.__table__
        self._t_user = models.TrialUserAttributeModel.__table__
        self._t_system = models.TrialSystemAttributeModel.__table__
        self._value_of = models.TrialValueModel.stored_repr_to_value
        studies = models.StudyModel.__table__
        with engine.connect() as connection:
            self._study_id = connection.execute(
                sa.select(studies.c.study_id).where(studies.c.study_name == self.name)
            ).scalar_one()
        self._live: dict[int, TrialRecord] = {}  # trial_id -> record
        self._order: list[int] = []  # trial ids in order
        # What a refresh asks for, as Optuna's cached storage does: trials after the last finished
        # one, unfinished ones, and finished ones whose ms_ record had not arrived yet.
        self._last_finished = -1
        self._unfinished: set[int] = set()
        self._awaiting_ids: set[int] = set()

    def trials(self) -> list[TrialRecord]:
        """Every trial, in trial order, re-reading only what changed since the last call."""
        t = self._t_trials
        with self._lock, self._engine.connect() as connection:
            recheck = self._unfinished | self._awaiting_ids
            query = sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
            query = query.where(t.c.study_id == self._study_id).order_by(t.c.trial_id)
            if len(recheck) <= IN_LIST_MAX:  # else read every head and pick here
                query = query.where((t.c.trial_id > self._last_finished) | t.c.trial_id.in_(recheck))
            # the heads first: every row read after them (values, params, ...) is at least as new
            heads = connection.execute(query).all()
            changed = [h for h in heads if h.trial_id > self._last_finished or h.trial_id in recheck]
            if changed:
                self._read(connection, changed, whole_study=not self._live)
            return [self._live[i] for i in self._order]

    # --- reading ------------------------------------------------------------------------

    def _children(
        self, connection: sa.Connection, query: sa.Select, column: sa.ColumnElement, ids: Sequence[int], whole: bool
    ) -> Iterable[tuple[Any, ...]]:
        """Rows of a child table for the trials ``ids`` (the whole study's when most changed)."""
        if whole or len(ids) > IN_LIST_MAX:
            of_study = sa.select(self._t_trials.c.trial_id).where(self._t_trials.c.study_id == self._study_id)
            wanted = set(ids)  # every query here selects the trial_id first
            return (r for r in connection.execute(query.where(column.in_(of_study))) if r[0] in wanted)
        return connection.execute(query.where(column.in_(ids)))

    def _read(self, connection: sa.Connection, changed: Sequence[sa.Row], *, whole_study: bool) -> None:
        ids = [h.trial_id for h in changed]
        values: dict[int, dict[int, float]] = {i: {} for i in ids}
        params: dict[int, dict[str, Any]] = {i: {} for i in ids}
        dists: dict[int, dict[str, Any]] = {i: {} for i in ids}
        user: dict[int, dict[str, Any]] = {i: {} for i in ids}
        system: dict[int, dict[str, Any]] = {i: {} for i in ids}
        v, p, u, s = self._t_values, self._t_params, self._t_user, self._t_system
        query = sa.select(v.c.trial_id, v.c.objective, v.c.value, v.c.value_type)
        for trial_id, objective, value, kind in self._children(connection, query, v.c.trial_id, ids, whole_study):
            values[trial_id][objective] = self._value_of(value, kind)
        query = sa.select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json).order_by(p.c.param_id)
        for trial_id, name, value, text in self._children(connection, query, p.c.trial_id, ids, whole_study):
            distribution = _distribution(text)
            params[trial_id][name] = distribution.to_external_repr(value)
            dists[trial_id][name] = distribution
        for table, target in ((u, user), (s, system)):
            query = sa.select(table.c.trial_id, table.c.key, table.c.value_json).order_by(table.primary_key.columns)
            for trial_id, key, text in self._children(connection, query, table.c.trial_id, ids, whole_study):
                target[trial_id][key] = json.loads(text)
        finished = [h.number for h in changed if h.state.is_finished()]
        rich = self._read_store(connection, finished, whole=whole_study or len(finished) > IN_LIST_MAX)

        from optuna.trial import FrozenTrial

        for head in changed:
            by_objective = values[head.trial_id]
            frozen = FrozenTrial(
                number=head.number,
                state=head.state,
                value=None,
                values=[by_objective[k] for k in sorted(by_objective)] if by_objective else None,
                datetime_start=_local(head.datetime_start),
                datetime_complete=_local(head.datetime_complete),
                params=params[head.trial_id],
                distributions=dists[head.trial_id],
                user_attrs=user[head.trial_id],
                system_attrs=system[head.trial_id],
                intermediate_values={},  # not part of a TrialRecord
                trial_id=head.trial_id,
            )
            record = rich.get(head.number)
            if head.trial_id not in self._live:
                if self._order and head.trial_id < self._order[-1]:
                    self._order = sorted([*self._order, head.trial_id])
                else:
                    self._order.append(head.trial_id)
            self._live[head.trial_id] = join_trial_record(frozen, record)
            self._awaiting_ids.discard(head.trial_id)
            if head.state.is_finished():
                self._unfinished.discard(head.trial_id)
                if record is None and self._has_store and finished_recently(frozen):
                    self._awaiting_ids.add(head.trial_id)
            else:
                self._unfinished.add(head.trial_id)
        # only once every head of this read is handled (Optuna's rule for last_finished_trial_id)
        finished_ids = [h.trial_id for h in changed if h.state.is_finished()]
        self._last_finished = max([self._last_finished, *finished_ids])

    def _read_store(self, connection: sa.Connection, numbers: Sequence[int], *, whole: bool) -> dict[int, Any]:
        """morsearch's records of the trials ``numbers`` (curve and measurement included)."""
        if not numbers:
            return {}
        self._check_store()
        if not self._has_store:
            return {}
        trials, curve, measurement = TrialRow.__table__, CurvePointRow.__table__, MeasurementRow.__table__
        ours = trials.c.study_name == self.name
        if not whole:
            ours = ours & trials.c.trial_number.in_(numbers)
        try:
            columns = [trials.c.id, trials.c.trial_number, *(trials.c[name] for name in _STORE_FIELDS)]
            rows = connection.execute(sa.select(*columns).where(ours).order_by(trials.c.id)).all()
            of_rows = sa.select(trials.c.id).where(ours)
            points: dict[int, list[tuple[int, float]]] = {}
            query = (
                sa.select(curve.c.trial_id, curve.c.tokens_seen, curve.c.val_nll)
                .where(curve.c.trial_id.in_(of_rows))
                .order_by(curve.c.trial_id, curve.c.tokens_seen, curve.c.id)
            )
            for row_id, tokens_seen, val_nll in connection.execute(query):
                points.setdefault(row_id, []).append((tokens_seen, val_nll))
            query = sa.select(measurement.c.trial_id, measurement.c.raw).where(measurement.c.trial_id.in_(of_rows))
            raw = dict(connection.execute(query).all())
        except sa.exc.SQLAlchemyError:
            # a worker mid-migration or a locked file: show Optuna's facts now, join later (as StudyView)
            return {}
        wanted = set(numbers)
        found = {}
        for row_id, number, *fields in rows:  # ordered by id: a rewritten record (a new row) wins
            if number not in wanted:
                continue
            found[number] = store.TrialRecord(
                **dict(zip(_STORE_FIELDS, fields, strict=True)),
                curve=tuple(points.get(row_id, ())),
                measurement=dict(raw[row_id]) if row_id in raw else None,
            )
        return found

    def study_names(self) -> list[str]:
        """Every study in this view's store, sorted (one query on the open engine)."""
        return study_names(self._engine)
