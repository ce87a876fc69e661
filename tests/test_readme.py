"""The README's code runs as written, against a fresh reference server (issue 16 §15)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(section: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no python block under {section!r}"
    return match.group(1)


def test_the_quick_start_runs_as_written_on_a_fresh_server(ekodb_server_factory: Any,
                                                           tmp_path: Path) -> None:
    server = ekodb_server_factory()  # a fresh data dir: no "orders" collection yet
    env = {k: v for k, v in os.environ.items() if not k.startswith("EKODB_")}
    env.update(EKODB_URL=server.url, EKODB_API_KEY=server.admin_key,
               EKODB_CA_BUNDLE=server.ca_bundle)
    script = tmp_path / "quick_start.py"
    script.write_text(_block("Using the SDK"))
    ran = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["lamp", "2"]
