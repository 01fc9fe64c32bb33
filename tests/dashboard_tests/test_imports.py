"""The dashboard runs without torch: importing it loads no torch, Lightning or worker code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dashboard_imports_no_training_stack():
    code = (
        "import sys\n"
        "import morsearch.dashboard.app, morsearch.dashboard.report, morsearch.dashboard.export\n"
        "import morsearch.dashboard.figures, morsearch.dashboard.info, morsearch.search.results\n"
        "heavy = ('torch', 'lightning', 'pytorch_lightning', 'morsearch.search.objective',\n"
        "         'morsearch.search.worker', 'morsearch.train', 'morsearch.measure', 'morsearch.model')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == ""
