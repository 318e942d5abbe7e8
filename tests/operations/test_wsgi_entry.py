"""The WSGI entry point gunicorn loads (``gunicorn wsgi:app``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_what_the_app_loaded_is_kept_out_of_the_garbage_collector(tmp_path: Path) -> None:
    # a full collection walking the loaded definitions paused requests for 120-150 ms
    script = "import gc, wsgi; assert wsgi.app is not None; print(gc.get_freeze_count())"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "WHATMATTERS_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert int(done.stdout.strip().splitlines()[-1]) > 100_000
