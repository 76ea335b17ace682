"""``runnode --server``: each supported ASGI server runs a real node through a chat round trip
and a SIGTERM drain; an unknown server is refused before anything starts."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys

import pytest

from chatsite.servers import SERVERS
from tests.support.client import ChatClient
from tests.support.nodes import ROOT, Cluster, Node, base_env
from tests.support.stalled_socket import StalledSocket

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("server", SERVERS)
async def test_round_trip_and_drain_under_each_server(cluster: Cluster, server: str) -> None:
    cluster.create_room("lobby")
    node = cluster.add("s1", RUNNODE_SERVER=server)
    status, _ = node.get("/readyz")
    assert status == 200
    alice = ChatClient(node.ws, "lobby", "alice")
    hello = await alice.connect()
    assert hello["type"] == "hello" and hello["node"] == "s1"
    client_id = await alice.send("hello over " + server)
    await alice.wait_for(lambda: client_id in alice.acks and len(alice.durable) == 1)
    ack, message = alice.acks[client_id], alice.durable[0]
    assert ack["seq"] == message["seq"] == 1
    assert message["body"] == "hello over " + server
    assert node.log_path is not None
    assert f"server {server}" in node.log_path.read_text(), "runnode ran another server"

    # A socket that never answers the close keeps the drain waiting (up to 3 s): meanwhile
    # the node still serves HTTP and says it is not ready.
    silent = StalledSocket(node.port, "/ws/rooms/lobby/?name=silent").connect()
    try:
        node.signal(signal.SIGTERM)
        await alice.wait_for(lambda: alice.close_code is not None, 10)
        assert alice.close_code == 1012, node.log()
        status, _ = await asyncio.to_thread(node.get, "/readyz")
        assert status == 503, node.log()
        assert node.process is not None
        code = await asyncio.to_thread(node.process.wait, 30)
        assert code == 0, node.log()
    finally:
        silent.close()


@pytest.mark.parametrize("flag", [["--server", "nginx"], ["--server", ""], ["--server"]])
def test_an_unknown_server_is_refused_before_anything_starts(tmp_path, flag: list[str]) -> None:
    env = base_env("redis://127.0.0.1:1/0", tmp_path)  # nothing listens there: never reached
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runnode", "--port", "1", *flag],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    if flag == ["--server"]:
        assert "expected one argument" in result.stderr
    else:
        assert f"unknown --server {flag[1]!r}" in result.stderr
        assert "daphne, uvicorn, uvicorn-wsproto" in result.stderr
        assert result.returncode == 1


def test_an_unknown_server_in_the_environment_is_refused(tmp_path) -> None:
    env = {**base_env("redis://127.0.0.1:1/0", tmp_path), "RUNNODE_SERVER": "twisted"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runnode", "--port", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "unknown --server 'twisted'" in result.stderr


@pytest.mark.parametrize("server", SERVERS)
def test_a_port_in_use_ends_the_node_with_exit_1(cluster: Cluster, server: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        node = Node("busy", {**cluster.env, "RUNNODE_SERVER": server}, port=taken.getsockname()[1])
        cluster.nodes.append(node)  # ended by the fixture whatever happens
        node.start(wait=False)
        assert node.process is not None
        assert node.process.wait(60) == 1, node.log()
