"""The command line: one clear line and a non-zero exit for a user's mistake, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_BRIDGE_")}
    return subprocess.run([sys.executable, "-m", "forge_bridge", *args], cwd=cwd, capture_output=True, text=True,
                          env={**environ, **(env or {})}, timeout=60)


@pytest.mark.parametrize("role", ["web", "worker", "poll"])
def test_single_roles_need_redis_url_and_point_at_serve(role, tmp_path):
    (tmp_path / "forge-bridge.toml").write_text("")
    done = run_cli(role, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "redis_url" in done.stderr and "serve" in done.stderr


def test_missing_configuration_file_is_one_line(tmp_path):
    done = run_cli("serve", cwd=tmp_path)
    assert done.returncode == 2 and "configuration file not found" in done.stderr and "Traceback" not in done.stderr


def test_serve_refuses_to_start_without_a_webhook_secret(tmp_path):
    (tmp_path / "forge-bridge.toml").write_text(
        f'data_dir = "{tmp_path}/data"\n[[forges]]\nname = "g"\nkind = "github"\nurl = "https://github.com"\n'
        'webhook_secret_env = "NOT_SET_ANYWHERE"\n')
    done = run_cli("serve", cwd=tmp_path)
    assert done.returncode == 2 and "NOT_SET_ANYWHERE" in done.stderr and "insecure_no_signature" in done.stderr
    assert not (tmp_path / "data" / "valkey").exists()  # refused before starting anything


def test_unknown_key_is_named(tmp_path):
    (tmp_path / "forge-bridge.toml").write_text("colour = 'blue'\n")
    done = run_cli("serve", cwd=tmp_path)
    assert done.returncode == 2 and "forge-bridge.toml: unknown key 'colour'" in done.stderr


def test_installed_wheel_ships_the_templates(tmp_path):
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True, timeout=300)
    import zipfile

    [wheel] = tmp_path.glob("forge_bridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "forge_bridge/templates/status_comment.md.j2" in names and "jobs/tasks.py" in names
