"""Start a two-node chat on this machine: embedded Redis, SQLite, a demo room, two nodes.

Prints the URLs; Ctrl-C (or SIGTERM) drains both nodes and stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatsite.redact import redact_url  # noqa: E402
from cluster.embedded import EmbeddedRedis  # noqa: E402


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a node exited early (code {process.returncode}); see its log above")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not become ready in {timeout}s")


DEV_ADMIN = "dev-admin"
# Run by ``manage.py shell``: the password comes through the environment, never argv (a
# command line is readable by every user of the machine).
_DEV_ADMIN_CODE = """
import os
from django.contrib.auth.models import User
user, _ = User.objects.get_or_create(username=os.environ["CHAT_DEV_ADMIN_USER"])
user.is_staff = user.is_superuser = user.is_active = True
user.set_password(os.environ["CHAT_DEV_ADMIN_PASSWORD"])
user.save()
"""


def dev_admin(manage: list[str], env: dict[str, str]) -> str:
    """A development superuser with a new random password, returned to be printed once.

    Random and renewed on every run rather than a fixed, documented one: a fixed password is
    known to everyone who read the README, and a dev server started with ``--host 0.0.0.0``
    (or a copied data directory) would carry it. Only the ``dev-admin`` account is touched."""
    password = secrets.token_urlsafe(12)
    admin_env = {**env, "CHAT_DEV_ADMIN_USER": DEV_ADMIN, "CHAT_DEV_ADMIN_PASSWORD": password}
    subprocess.run([*manage, "shell", "-v0", "-c", _DEV_ADMIN_CODE], env=admin_env, check=True)
    return password


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ports", default="8000,8001", help="comma-separated node ports")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data-dir", default=str(ROOT / "var"))
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = [int(p) for p in args.ports.split(",")]

    redis = EmbeddedRedis.start(data_dir / "redis")
    env = {
        **os.environ,
        # Development: production settings refuse the dev key, SQLite and http (see SECURITY.md).
        "DJANGO_DEBUG": os.environ.get("DJANGO_DEBUG") or "1",
        "REDIS_URL": os.environ.get("REDIS_URL") or redis.url,
        "CHAT_DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True)
    subprocess.run([*manage, "createroom", "lobby", "--name", "Lobby"], env=env, check=True)
    admin_password = dev_admin(manage, env)
    nodes: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for i, port in enumerate(ports):
            name = f"node-{i + 1}"
            cmd = [
                *manage,
                "runnode",
                "--host",
                args.host,
                "--port",
                str(port),
                "--node-name",
                name,
            ]
            nodes.append(subprocess.Popen(cmd, env=env))
        for port, process in zip(ports, nodes, strict=True):
            wait_ready(f"http://{args.host}:{port}", process)
        print("\nThe chat is running (Ctrl-C stops it):", flush=True)
        for i, port in enumerate(ports):
            print(f"  node-{i + 1}: http://{args.host}:{port}/   (admin: /admin/)", flush=True)
        print(f"  redis:  {redact_url(env['REDIS_URL'])}", flush=True)
        print(
            f"  admin:  http://{args.host}:{ports[0]}/admin/  user {DEV_ADMIN!r}, password "
            f"{admin_password!r} (new each run; this development script only)\n",
            flush=True,
        )
        while not stopping and all(p.poll() is None for p in nodes):
            time.sleep(0.2)
    finally:
        for process in nodes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in nodes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
