"""The live dashboard: a standard-library HTTP server, one page and a few JSON endpoints.

Why ``http.server``: the app is one page plus five small endpoints for one local user;
a framework would add a dependency (and its CDN-loving defaults) without adding
anything the user sees. ``ThreadingHTTPServer`` keeps a slow request from blocking
the refresh polls.

::

    GET  /                      the page (static HTML; all data arrive as JSON)
    GET  /static/plotly.js      plotly.js from the plotly package (no CDN)
    GET  /static/app.js         the page's script
    GET  /api/studies           {"studies": [...]}
    GET  /api/state?study=S     {"version", "counts", "failed": [the last 50 failed/pruned]} (polled)
    GET  /api/front?study=S&view=0-1|3d&bound.<objective>=lo,hi&choice.<param>=v&range.<param>=lo,hi
                                the Pareto figure of the filtered trials, filter options, counts
    GET  /api/trial?study=S&number=N   details of one trial with its curve/routing/phase figures
    POST /api/export            {"study", "number"} -> writes <export_dir>/<study>-trial<N>.yaml

Speed (5,000 trials, benchmarks/dashboard_scale.py): trials are read with a few Core queries
(``reader.LiveStudyView``); the answers for a store version are built once and cached, and
large ones (plotly.js, a front's figure) are gzipped once; ``serve`` listens as soon as the
store is checked and reads the trials in the background; the page draws its first front
before plotly.js has run (see ``page``).

Security: binds 127.0.0.1 unless told otherwise; the store is opened read-only; the
only file written is an export inside ``export_dir``; a strict Content-Security-Policy
forbids loading anything from another origin; requests whose Host or Origin is not
this server are refused (DNS rebinding, cross-site POSTs); data reach the page as
JSON and are inserted with ``textContent``, never as HTML.
"""

from __future__ import annotations

import gzip
import json
import shlex
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from morsearch.dashboard import figures, info
from morsearch.dashboard.export import export_to_folder
from morsearch.dashboard.page import PAGE_HTML, PAGE_JS
from morsearch.dashboard.reader import LiveStudyView, open_live_study
from morsearch.dashboard.report import plotly_js
from morsearch.errors import MorsearchError, StorageError
from morsearch.search.results import list_studies
from morsearch.store import redact

__all__ = ["DashboardApp", "make_server", "serve"]

MAX_BODY_BYTES = 4096
GZIP_MIN_BYTES = 16_384
"""Smaller answers go as they are; plotly.js (4.8 MB) and a front of 5,000 trials (2.7 MB) shrink 3-9x."""
CACHE_ENTRIES = 64
STUDY_LIST_TTL_S = 5.0

_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)  # 'unsafe-eval': plotly's WebGL traces compile their draw calls with new Function()


def _float_or_none(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise MorsearchError(f"filter bound {text!r} is not a number; type a number or leave it empty") from None


def parse_filter(query: dict[str, list[str]]) -> info.TrialFilter:
    """``bound.<objective>=lo,hi``, ``range.<param>=lo,hi`` and repeated ``choice.<param>=v``."""
    bounds, ranges, choices = {}, {}, {}
    for key, values in query.items():
        kind, _, name = key.partition(".")
        if not name:
            continue
        if kind in ("bound", "range"):
            low, _, high = values[-1].partition(",")
            target = bounds if kind == "bound" else ranges
            target[name] = (_float_or_none(low), _float_or_none(high))
        elif kind == "choice":
            choices[name] = list(values)
    return info.TrialFilter(bounds=bounds, choices=choices, ranges=ranges)


class DashboardApp:
    """The dashboard's logic, independent of HTTP: study views, cached answers, export."""

    def __init__(self, storage_url: str, export_dir: str | Path, study: str | None = None) -> None:
        self.storage_url = storage_url
        self.export_dir = Path(export_dir)
        self.only_study = study
        self._views: dict[str, LiveStudyView] = {}
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._building: dict[tuple[Any, ...], threading.Event] = {}
        self._study_list: tuple[float, list[str]] = (-1e9, [])
        self._version_cache: dict[str, tuple[str, dict[int, str], dict[str, Any]]] = {}
        # Fail now, with the store's message, rather than on the first page load.
        names = list_studies(storage_url)
        self._study_list = (time.monotonic(), names)
        if study is not None and study not in names:
            raise StorageError(
                f"no study '{study}' in {redact(storage_url)}; studies there: {', '.join(names) or 'none'}"
            )

    def studies(self) -> list[str]:
        """Study names, re-listed at most every few seconds (listing opens the store anew)."""
        if self.only_study is not None:
            return [self.only_study]
        with self._lock:
            stamp, names = self._study_list
        if time.monotonic() - stamp > STUDY_LIST_TTL_S:
            with self._lock:
                view = next(iter(self._views.values()), None)
            # an open view lists in one query; otherwise open (and check) the store anew
            names = view.study_names() if view is not None else list_studies(self.storage_url)
            with self._lock:
                self._study_list = (time.monotonic(), names)
        return names

    def view(self, name: str) -> LiveStudyView:
        with self._lock:
            if name not in self._views:
                if self.only_study is not None and name != self.only_study:
                    raise StorageError(f"this dashboard serves study '{self.only_study}' only")
                self._views[name] = open_live_study(self.storage_url, name)
            return self._views[name]

    def warm(self) -> int:
        """Read every study once and draw its default view, so the first page render is fast.

        Returns:
            The number of trials read.
        """
        _gzipped(_plotly_bytes())  # plotly.js: 0.15 s to compress, paid before the first visitor
        count = 0
        for name in self.studies():
            count += len(self.view(name).trials())
            _gzipped(self.front(name, "0-1", {}))  # also pays plotly's import before the first visitor
        return count

    def close(self) -> None:
        with self._lock:
            for view in self._views.values():
                view.close()
            self._views.clear()

    @staticmethod
    def _version(trials: list[Any]) -> str:
        finished = [t.datetime_complete for t in trials if t.datetime_complete is not None]
        return f"{len(trials)}-{len(finished)}-{max(finished).timestamp() if finished else 0}"

    def _cached(self, key: tuple[Any, ...], build: Callable[[], bytes]) -> bytes:
        """The cached answer for ``key``, built once even when several requests ask at the same time."""
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                building = self._building.get(key)
                if building is None:  # this thread builds it; the others wait for it
                    self._building[key] = threading.Event()
                    break
            building.wait()  # then look again (a failed build leaves no entry: the next one tries)
        try:
            body = build()
            with self._lock:
                self._cache[key] = body
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
            return body
        finally:
            with self._lock:
                self._building.pop(key).set()

    def state(self, study: str) -> dict[str, Any]:
        trials = self.view(study).trials()
        counts = Counter(t.state.lower() for t in trials)
        return {
            "study": study,
            "version": self._version(trials),
            "counts": dict(counts),
            "failed": [
                {"trial": t.number, "reason": t.failure_reason or ("pruned" if t.state == "PRUNED" else None)}
                for t in trials
                if t.state in ("FAIL", "PRUNED")
            ][-50:],
        }

    def front(self, study: str, view_name: str, query: dict[str, list[str]]) -> bytes:
        """The front figure for one view of the filtered trials, as JSON bytes (cached per version).

        An empty ``study`` means the first one, so the page can ask before it knows the list.
        """
        if not study:
            names = self.studies()
            if not names:
                raise StorageError(f"no study in {redact(self.storage_url)} yet; start `morsearch search`")
            study = names[0]
        view = self.view(study)
        trials = view.trials()
        version = self._version(trials)
        where = parse_filter(query)
        key = ("front", study, view_name, version, json.dumps(where.__dict__, sort_keys=True, default=list))
        return self._cached(key, lambda: self._front_body(view, trials, view_name, where, version))

    def _per_version(
        self, view: LiveStudyView, trials: list[Any], version: str
    ) -> tuple[dict[int, str], dict[str, Any]]:
        """Hover texts and filter options: they depend on the trials, not the filter, so once per version."""
        with self._lock:
            stamp, texts, options = self._version_cache.get(view.name, ("", {}, {}))
        if stamp != version:
            texts = figures.hover_texts(info.pareto_info(trials, view.objective_names, view.directions))
            options = info.filter_options(trials, view.objective_names)
            with self._lock:
                self._version_cache[view.name] = (version, texts, options)
        return texts, options

    def _front_body(
        self, view: LiveStudyView, trials: list[Any], view_name: str, where: info.TrialFilter, version: str
    ) -> bytes:
        pareto = info.pareto_info(trials, view.objective_names, view.directions, where)
        hover, options = self._per_version(view, trials, version)
        pairs = pareto.pairs
        if view_name == "3d" and len(view.objective_names) >= 3:
            fig = figures.pareto_3d_figure(pareto, hover)
        else:
            i, _, j = view_name.partition("-")
            pair = (int(i), int(j)) if i.isdigit() and j.isdigit() else pairs[0] if pairs else (0, 0)
            if pair not in pairs:
                pair = pairs[0] if pairs else (0, 0)
            fig = figures.pareto_pair_figure(pareto, *pair, hover=hover)
        fig.update_layout(uirevision=view_name, height=560)  # keep zoom/rotation across refreshes
        meta = {
            "study": view.name,
            "version": version,
            "objectives": [
                {"name": n, "direction": d, "unit": u}
                for n, d, u in zip(
                    view.objective_names, view.directions, info.objective_units(view.objective_names), strict=True
                )
            ],
            "views": [f"{i}-{j}" for i, j in pairs] + (["3d"] if len(view.objective_names) >= 3 else []),
            "shown": len(pareto.numbers),
            "total": pareto.num_total,
            "front": pareto.front_numbers,
            "options": options,
        }
        # fig.to_json() escapes '<'; splice it in rather than decode and re-encode 5,000 points
        meta_json = json.dumps(meta, allow_nan=False)
        return ('{"figure": ' + fig.to_json() + ', "meta": ' + meta_json + "}").encode()

    def trial(self, study: str, number: int) -> bytes:
        view = self.view(study)
        record = view.trial(number)
        details = info.trial_details(record, view.objective_names, view.directions, view.storage_url, view.name)
        one = info.front_details([record], [record.number])
        figs = {}
        if one.curves:
            figs["curve"] = figures.curves_figure(one).to_json()
        if one.routing:
            figs["routing"] = figures.routing_figure(one).to_json()
        if one.phases:
            figs["phases"] = figures.phases_figure(one).to_json()
        body = json.dumps(details, allow_nan=False)
        parts = ", ".join(f'"{name}": {text}' for name, text in figs.items())
        return ('{"details": ' + body + ', "figures": {' + parts + "}}").encode()

    def export(self, study: str, number: int) -> dict[str, Any]:
        path = export_to_folder(self.view(study), number, self.export_dir)
        return {
            "path": str(path),
            "train_command": f"morsearch train {shlex.quote(str(path))}",
            "content": path.read_text(),
        }


class _Handler(BaseHTTPRequestHandler):
    app: DashboardApp
    allowed_hosts: set[str]
    server_version = "morsearch-dashboard"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per poll would drown the terminal; errors are answered as JSON

    # --- plumbing -------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        compressible = len(body) >= GZIP_MIN_BYTES
        packed = compressible and "gzip" in (self.headers.get("Accept-Encoding") or "")
        if packed:
            body = _gzipped(body)
        self.send_response(status)
        if compressible:
            self.send_header("Vary", "Accept-Encoding")
        if packed:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload, allow_nan=False).encode(), "application/json; charset=utf-8")

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").lower()
        if host not in self.allowed_hosts and "*" not in self.allowed_hosts:
            return False
        origin = self.headers.get("Origin")
        return origin is None or urlsplit(origin).netloc.lower() == host

    def _guarded(self, work: Callable[[], None]) -> None:
        if not self._host_ok():
            self._json(HTTPStatus.FORBIDDEN, {"error": "request from another origin refused"})
            return
        try:
            work()
        except MorsearchError as exc:
            self._json(
                HTTPStatus.BAD_REQUEST if not isinstance(exc, StorageError) else HTTPStatus.CONFLICT,
                {"error": str(exc)},
            )
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # the page shows a message instead of hanging
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    # --- routes -----------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._guarded(self._post)

    def _get(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        study = (query.pop("study", [""]) or [""])[-1]
        if parts.path == "/":
            self._send(HTTPStatus.OK, PAGE_HTML.encode(), "text/html; charset=utf-8")
        elif parts.path == "/static/plotly.js":
            self._send(HTTPStatus.OK, _plotly_bytes(), "text/javascript; charset=utf-8", cache=True)
        elif parts.path == "/static/app.js":
            self._send(HTTPStatus.OK, PAGE_JS.encode(), "text/javascript; charset=utf-8")
        elif parts.path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", cache=True)
        elif parts.path == "/api/studies":
            self._json(HTTPStatus.OK, {"studies": self.app.studies(), "store": redact(self.app.storage_url)})
        elif parts.path == "/api/state":
            self._json(HTTPStatus.OK, self.app.state(study))
        elif parts.path == "/api/front":
            view_name = (query.pop("view", ["0-1"]) or ["0-1"])[-1]
            self._send(HTTPStatus.OK, self.app.front(study, view_name, query), "application/json; charset=utf-8")
        elif parts.path == "/api/trial":
            number = (query.get("number") or [""])[-1]
            if not number.isdigit():
                raise MorsearchError(f"trial number {number!r} is not a number")
            self._send(HTTPStatus.OK, self.app.trial(study, int(number)), "application/json; charset=utf-8")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page {parts.path}"})

    def _post(self) -> None:
        if urlsplit(self.path).path != "/api/export":
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
            return
        # JSON only: a cross-site form cannot send this content type without a preflight
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send JSON"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "request too large"})
            return
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
            study, number = str(payload["study"]), int(payload["number"])
        except (ValueError, KeyError, TypeError):
            raise MorsearchError('export needs {"study": name, "number": trial number}') from None
        self._json(HTTPStatus.OK, self.app.export(study, number))


@lru_cache(maxsize=16)
def _gzipped(body: bytes) -> bytes:
    """``body`` compressed once: cached answers are the same bytes object for every visitor, and
    a bytes object keeps its hash, so a hit costs no hashing of the body again."""
    return gzip.compress(body, compresslevel=6)


_PLOTLY: list[bytes] = []


def _plotly_bytes() -> bytes:
    if not _PLOTLY:
        _PLOTLY.append(plotly_js().encode())
    return _PLOTLY[0]


def make_server(
    storage_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8050,
    export_dir: str | Path = "exports",
    study: str | None = None,
    warm: bool = True,
) -> tuple[ThreadingHTTPServer, DashboardApp]:
    """Open the store read-only, read its studies once, and bind (not yet serve) the server.

    Args:
        storage_url: the study store.
        host: interface to bind; 127.0.0.1 (this machine only) unless you mean to share it.
        port: TCP port; 0 picks a free one (tests).
        export_dir: where "Export" writes config files; nothing else is written.
        study: serve only this study (default: every study in the store).
        warm: read every trial and draw the default view before returning; with False the
            caller runs ``app.warm()`` (``serve`` does, in the background, once listening).

    Raises:
        StorageError: the store is missing, unreadable or lacks ``study``.
        MorsearchError: the port is taken.
    """
    app = DashboardApp(storage_url, export_dir, study)
    if warm:
        app.warm()
    handler = type("Handler", (_Handler,), {"app": app})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        app.close()
        raise MorsearchError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    server.daemon_threads = True
    bound_port = server.server_address[1]
    names = {host, "127.0.0.1", "localhost", "[::1]"}
    handler.allowed_hosts = {"*"} if host in ("0.0.0.0", "::", "") else {f"{n}:{bound_port}" for n in names}
    return server, app


def serve(
    storage_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8050,
    export_dir: str | Path = "exports",
    study: str | None = None,
    on_ready: Callable[[str], None] | None = None,
    on_warm: Callable[[str], None] | None = None,
) -> None:
    """Run the dashboard until interrupted (Ctrl-C).

    The server listens as soon as the store is open and checked; the trials are read and
    the default view drawn in the background (a page asking meanwhile waits for them).
    ``on_ready`` receives the URL once the server listens (the CLI prints it), ``on_warm``
    a line once the trials are read.
    """
    started = time.perf_counter()
    server, app = make_server(storage_url, host=host, port=port, export_dir=export_dir, study=study, warm=False)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    def warm() -> None:
        try:
            count = app.warm()
        except Exception as exc:  # the page shows the same message when it asks; no traceback here
            message = f"could not read the store yet: {exc}"
        else:
            message = f"{count} trials read in {time.perf_counter() - started:.1f} s"
        if on_warm is not None:
            on_warm(message)

    threading.Thread(target=warm, name="dashboard-warm", daemon=True).start()
    if on_ready is not None:
        on_ready(
            f"http://{shown_host}:{server.server_address[1]}/  (listening after {time.perf_counter() - started:.1f} s)"
        )
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
