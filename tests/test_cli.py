"""The ekoclient command line, run as a user would, against the reference server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def cli(server: Any, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, EKODB_URL=server.url, EKODB_CA_BUNDLE=server.ca_bundle,
               EKODB_API_KEY=key or server.admin_key)
    return subprocess.run([sys.executable, "-m", "ekoclient._cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_create_rotate_and_delete_a_key(ekodb_server: Any) -> None:
    made = cli(ekodb_server, "keys", "create", "cli-key", "--read-only",
               "--permissions", '{"orders": ["read"]}')
    assert made.returncode == 0, made.stderr
    new = json.loads(made.stdout)
    assert new["api_key"].startswith("eko_") and new["label"] == "cli-key"
    whoami = json.loads(cli(ekodb_server, "whoami", key=new["api_key"]).stdout)
    assert whoami["read_only"] is True and whoami["key_id"] == new["key_id"]
    listed = cli(ekodb_server, "keys", "list").stdout
    assert new["key_id"] in listed and new["api_key"] not in listed
    rotated = json.loads(cli(ekodb_server, "keys", "rotate", new["key_id"]).stdout)
    assert rotated["api_key"] != new["api_key"]
    assert cli(ekodb_server, "keys", "delete", new["key_id"]).returncode == 0
    refused = cli(ekodb_server, "whoami", key=rotated["api_key"])
    assert refused.returncode == 1
    assert "was refused" in refused.stderr and rotated["api_key"] not in refused.stderr


def test_a_scoped_key_gets_a_clear_refusal(ekodb_server: Any, scoped_key: str) -> None:
    out = cli(ekodb_server, "keys", "list", key=scoped_key)
    assert out.returncode == 1
    assert "HTTP 403" in out.stderr and scoped_key not in out.stderr


def _info(admin: Any, key_id: str) -> Any:
    (info,) = [k for k in admin.admin.list_keys() if k.key_id == key_id]
    return info


def test_read_only_on_means_on_and_off_means_off(ekodb_server: Any, admin: Any) -> None:
    made = json.loads(cli(ekodb_server, "keys", "create", "ro-cli", "--read-only", "on",
                          "--rate-limit", "600").stdout)
    info = _info(admin, made["key_id"])
    assert info.read_only is True and info.rate_limit == 600
    changed = cli(ekodb_server, "keys", "update", made["key_id"], "--read-only", "off",
                  "--rate-limit", "tier")
    assert changed.returncode == 0, changed.stderr
    info = _info(admin, made["key_id"])
    assert info.read_only is False and info.rate_limit is None
    admin.admin.delete_key(made["key_id"])


def test_a_switch_that_is_neither_on_nor_off_is_a_usage_error(ekodb_server: Any,
                                                              admin: Any) -> None:
    out = cli(ekodb_server, "keys", "create", "maybe-ro", "--read-only", "maybe")
    assert out.returncode == 2 and "expected on or off" in out.stderr
    assert "maybe-ro" not in {k.label for k in admin.admin.list_keys()}  # nothing created


def test_help_names_the_environment_and_shows_examples(ekodb_server: Any) -> None:
    out = cli(ekodb_server, "keys", "--help")
    assert out.returncode == 0
    for needed in ("EKODB_URL", "EKODB_API_KEY", "EKODB_CA_BUNDLE", "--read-only on",
                   "--rate-limit", "rotate", "printed only"):
        assert needed in out.stdout, needed
