"""The README's demo: start the reference server on loopback with TLS, run the multi-key example.

    python -m examples.demo

The server runs as a subprocess on a fresh data directory (its own CA, certificate and admin
key); the example then gets exactly the three variables a user would export.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mock_server.testing import ServerProcess


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ekodemo-") as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        try:
            print(f"reference server at {server.url} (TLS, CA {server.ca_bundle})\n")
            env = dict(os.environ, EKODB_URL=server.url, EKODB_API_KEY=server.admin_key or "",
                       EKODB_CA_BUNDLE=str(server.ca_bundle))
            return subprocess.call([sys.executable, "-m", "examples.multi_tenant"], env=env)
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
