"""A benchmark result file is replaced whole: a write cut short leaves the earlier file as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.common import write_result


def test_a_write_cut_short_keeps_the_earlier_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "result.json"
    write_result("bench", {"runs": [1, 2]}, [], out=out)

    def torn_write(self: Path, text: str, *args: object, **kwargs: object) -> int:
        with open(self, "w") as handle:  # half the text, then the process "dies"
            handle.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", torn_write)
    with pytest.raises(KeyboardInterrupt):
        write_result("bench", {"runs": [1, 2, 3]}, [], out=out)
    monkeypatch.undo()
    assert json.loads(out.read_text())["raw"]["runs"] == [1, 2]
