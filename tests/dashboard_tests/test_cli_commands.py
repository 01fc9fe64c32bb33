"""``morsearch report`` and ``morsearch dashboard`` from the command line."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from morsearch.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_report_command_writes_default_path(study_store, tmp_path, monkeypatch, capsys):
    url, _ = study_store
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--storage", url])  # the only study is picked
    assert exit_info.value.code == 0
    assert (tmp_path / "dashboards" / "demo.html").is_file()
    assert "opens offline" in capsys.readouterr().out


def test_report_command_errors_are_messages(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no such store file" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["report"])
    assert "pass --storage" in capsys.readouterr().err


def test_dashboard_command_bad_store_is_a_message(study_store, tmp_path, capsys):
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database")
    empty = tmp_path / "empty.db"
    with sqlite3.connect(empty) as connection:
        connection.execute("CREATE TABLE other (x INTEGER)")
    url, _ = study_store
    cases = [
        (["--storage", f"sqlite:///{tmp_path / 'none.db'}"], "no such store file"),
        (["--storage", str(garbage)], "file is not a database"),
        (["--storage", f"sqlite:///{empty}"], "not a morsearch study store"),
        (["--storage", url, "--study", "nope"], "no study 'nope'"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["dashboard", *args, "--port", "0", "--export-dir", str(tmp_path / "exp")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "exp").exists()


def test_dashboard_command_serves_on_loopback(study_store):
    url, _ = study_store
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "morsearch", "dashboard", "--storage", url, "--port", "0", "--export-dir", "exp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        address = None
        deadline = time.time() + 60
        while address is None and time.time() < deadline:
            line = process.stdout.readline()
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            address = found.group(0) if found else None
        assert address, "the dashboard never printed its address"
        with urllib.request.urlopen(address + "api/studies", timeout=10) as response:
            assert json.load(response)["studies"] == ["demo"]
        # a request naming another host (DNS rebinding) is refused
        request = urllib.request.Request(address + "api/studies", headers={"Host": "evil.example:80"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    finally:
        process.terminate()
        process.wait(timeout=10)
