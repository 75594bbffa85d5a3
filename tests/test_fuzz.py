"""Coverage-guided fuzzing (atheris) of the parsers and the responder, with a time budget.

Each target runs in its own process, seeded from the corpus kept in ``tests/fuzz/corpus``;
new inputs go to a temporary directory, so a test run never rewrites the repository. A
violated invariant or an unexpected exception makes libFuzzer exit non-zero with the input.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

FUZZ = Path(__file__).parent / "fuzz"
SECONDS = int(os.environ.get("WGPY_FUZZ_SECONDS", "6"))
ROOT = FUZZ.parent.parent


@pytest.mark.parametrize("target", ["messages", "device", "uapi", "wgquick", "tunnels"])
def test_fuzz_target(target: str, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [
            sys.executable,
            str(FUZZ / "targets.py"),
            target,
            f"-max_total_time={SECONDS}",
            "-timeout=10",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
            str(work),
            str(FUZZ / "corpus" / target),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        env=env,
        check=False,
    )
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert "Done" in tail or "DONE" in tail, tail
    runs = [ln for ln in tail.splitlines() if "Done" in ln]
    print(target, runs[-1] if runs else tail[-200:])
