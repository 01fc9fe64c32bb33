"""The live app's HTTP surface without a browser: endpoints, filters, export, refusals."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from morsearch.dashboard.app import DashboardApp, make_server
from morsearch.dashboard.page import PAGE_HTML, PAGE_JS
from morsearch.errors import StorageError


@pytest.fixture
def served(study_store, tmp_path):
    url, _ = study_store
    server, app = make_server(url, port=0, export_dir=tmp_path / "exports")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", tmp_path / "exports"
    server.shutdown()
    server.server_close()
    app.close()


def _get(url, **headers):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def _post(url, body: bytes, content_type="application/json", **headers):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **headers})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_page_loads_nothing_from_elsewhere(served):
    base, _ = served
    status, headers, body = _get(base)
    assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
    for text in (PAGE_HTML, PAGE_JS):
        assert not re.search(r"https?://", text)
    assert "innerHTML" not in PAGE_JS  # data reach the page through textContent only
    status, headers, body = _get(base + "static/plotly.js")
    assert status == 200 and len(body) > 3_000_000


def test_front_filters_and_views(served):
    base, _ = served
    _, _, body = _get(base + "api/front?study=demo&view=0-2")
    payload = json.loads(body)
    meta = payload["meta"]
    assert meta["shown"] == meta["total"] == 26 and "3d" in meta["views"]
    assert payload["figure"]["layout"]["xaxis"]["title"]["text"].startswith("val_nll")
    assert meta["options"]["choices"]["router"] == ["expert_choice", "none", "token_choice"]
    _, _, body = _get(base + "api/front?study=demo&view=3d&bound.peak_memory_mb=,100&choice.router=expert_choice")
    narrowed = json.loads(body)["meta"]
    assert 0 < narrowed["shown"] < meta["shown"] and set(narrowed["front"]) <= set(range(40))
    with pytest.raises(urllib.error.HTTPError) as bad:
        _get(base + "api/front?study=demo&bound.val_nll=abc,")
    assert bad.value.code == 400 and "not a number" in json.loads(bad.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as missing:
        _get(base + "api/trial?study=demo&number=999")
    assert "has no trial 999" in json.loads(missing.value.read())["error"]


def test_export_endpoint_and_refusals(served):
    base, export_dir = served
    status, result = _post(base + "api/export", json.dumps({"study": "demo", "number": 3}).encode())
    assert status == 200 and result["path"].startswith(str(export_dir.resolve()))
    assert result["train_command"] == f"morsearch train {result['path']}"
    # a cross-site form post (no JSON content type) and another origin are refused
    with pytest.raises(urllib.error.HTTPError) as form:
        _post(base + "api/export", b"study=demo&number=3", content_type="application/x-www-form-urlencoded")
    assert form.value.code == 415
    with pytest.raises(urllib.error.HTTPError) as cross:
        _post(base + "api/export", b'{"study": "demo", "number": 3}', Origin="http://evil.example")
    assert cross.value.code == 403
    assert [p.name for p in export_dir.iterdir()] == ["demo-trial3.yaml"]


def test_unknown_study_is_refused_at_start(study_store, tmp_path):
    url, _ = study_store
    with pytest.raises(StorageError, match="no study 'nope'"):
        make_server(url, port=0, export_dir=tmp_path, study="nope")


def test_large_answers_are_gzipped(served):
    base, _ = served
    _, plain_headers, plain = _get(base + "static/plotly.js")
    status, headers, packed = _get(base + "static/plotly.js", **{"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in plain_headers
    assert status == 200 and headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed) == plain and len(packed) < len(plain) / 2
    _, headers, body = _get(base + "api/studies", **{"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in headers and json.loads(body)["studies"] == ["demo"]  # small: as it is


def test_a_server_not_yet_warm_answers_once_it_is(study_store, tmp_path):
    url, _ = study_store
    server, app = make_server(url, port=0, export_dir=tmp_path, warm=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Thread(target=app.warm, daemon=True).start()  # as `serve` does
    try:
        _, _, body = _get(f"http://127.0.0.1:{server.server_address[1]}/api/front?view=0-1")
        assert json.loads(body)["meta"]["total"] == 26
    finally:
        server.shutdown()
        server.server_close()
        app.close()


def test_concurrent_askers_share_one_build(study_store, tmp_path):
    app = DashboardApp(study_store[0], tmp_path)
    builds = []

    def build() -> bytes:
        builds.append(1)
        time.sleep(0.2)
        return b"body"

    answers = []
    askers = [threading.Thread(target=lambda: answers.append(app._cached(("k",), build))) for _ in range(4)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    assert answers == [b"body"] * 4 and len(builds) == 1
    app.close()
