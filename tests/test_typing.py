"""Type checkers see what users get: typed reads, typed views, typed options.

``tests/typing/`` holds small user programs with ``assert_type``/``reveal_type``; mypy
--strict must accept them as a user would run it (no project config, no pydantic plugin),
and every ``# type: ignore[...]`` in them must still be needed (a wrong call is refused).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ["tests/typing/user_sync.py", "tests/typing/user_async.py"]


def test_typed_user_programs_pass_mypy_strict(tmp_path: Path) -> None:
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\nwarn_unused_ignores = True\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config),
         "--cache-dir", str(tmp_path / "cache"), *PROGRAMS],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    revealed = dict(re.findall(r"(user_\w+)\.py:\d+: note: Revealed type is \"(.+)\"",
                               result.stdout))
    assert revealed == {"user_sync": "tests.typing.user_sync.User",
                        "user_async": "list[tests.typing.user_async.Order]"}


def test_pyright_verifytypes_scores_at_least_98_percent(tmp_path: Path) -> None:
    pyright = Path(sys.executable).with_name("pyright")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [str(pyright), "--pythonpath", sys.executable, "--verifytypes", "ekoclient",
         "--ignoreexternal"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    match = re.search(r"Type completeness score: ([\d.]+)%", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) >= 98.0, result.stdout
