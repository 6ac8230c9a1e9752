"""A real HA stack on this machine: etcd, and Patroni managing two PostgreSQL 15 nodes in
synchronous mode, every port on loopback; and the faults production databases have.

Each node runs as an operating-system user of its own and has three ports of its own:
PostgreSQL, Patroni's REST API, and its way to etcd (etcd listens on one client port per node, and
each node's Patroni uses only its own, `use_proxies`). So "the node's network goes silent" is
iptables rules that DROP every packet to those ports and every packet the node's processes send
(by owner): no reset, no answer, as a powered-off host or a partition looks to the others.

Needs Debian's `patroni`, `etcd-server`, `postgresql-15` and `iptables`, and root (the node users
are created here; the rules are the machine's, marked and removed by their comment). `.ci/run`
installs the packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RULE_COMMENT = "tillit-hatest"
SCOPE = "tillit"
# Patroni's timing: the leader key lives TTL seconds; every member runs its loop each LOOP_WAIT.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 10, 1, 3


def missing_tools() -> list[str]:
    """What this machine lacks for the HA stack (empty: all there)."""
    tools = {
        "patroni": "patroni",
        "etcd": "etcd-server",
        "iptables": "iptables",
        str(PG_BIN / "postgres"): "postgresql-15",
    }
    return [package for tool, package in tools.items() if not shutil.which(tool)]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _get(url: str, timeout: float = 1.0) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  # loopback
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body) if body.startswith(b"{") else {}
    except (OSError, ValueError):
        return 0, {}


@dataclass
class Node:
    name: str
    user: str  # the operating-system user its Patroni and PostgreSQL run as
    pg_port: int
    api_port: int
    etcd_port: int
    home: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    silent: bool = False

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def role(self) -> str:
        """`primary`, `replica`, or '' when the node does not answer."""
        if self.silent:
            return ""
        status, body = _get(f"{self.api}/patroni")
        return str(body.get("role", "")) if status else ""

    def is_sync_standby(self) -> bool:
        return not self.silent and _get(f"{self.api}/sync")[0] == 200

    def is_leader(self) -> bool:
        return not self.silent and _get(f"{self.api}/primary")[0] == 200

    def has_no_sync_standby(self) -> bool:
        """Asked of the leader: no member is a synchronous standby any more (the HA manager gave
        up on the one it had, so commits no longer wait for it)."""
        status, body = _get(f"{self.api}/cluster")
        members = body.get("members", []) if status == 200 else None
        return isinstance(members, list) and not any(
            isinstance(m, dict) and m.get("role") == "sync_standby" for m in members
        )

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None


@dataclass
class Cluster:
    root: Path
    nodes: list[Node] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None
    etcd_peer: int = 0

    @classmethod
    def create(cls, root: Path) -> Cluster:
        root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(7)
        cluster = cls(root, etcd_peer=ports[6])
        for index in range(2):
            home = root / f"node{index}"
            cluster.nodes.append(
                Node(
                    name=f"node{index}",
                    user=f"tillit-ha{index}",
                    pg_port=ports[index],
                    api_port=ports[2 + index],
                    etcd_port=ports[4 + index],
                    home=home,
                    log=root / f"node{index}.log",
                )
            )
        return cluster

    # -- start and stop ---------------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        clients = ",".join(f"http://127.0.0.1:{n.etcd_port}" for n in self.nodes)
        with (self.root / "etcd.log").open("ab") as etcd_log:  # the child keeps its own copy
            self.etcd = self._etcd(clients, etcd_log)
        _until(lambda: _get(f"http://127.0.0.1:{self.nodes[0].etcd_port}/health")[0] == 200, 20)
        for node in self.nodes:
            _ensure_user(node.user)
            node.home.mkdir(parents=True, exist_ok=True)
            account = pwd.getpwnam(node.user)
            os.chown(node.home, account.pw_uid, account.pw_gid)
        self.start_node(self.nodes[0])
        _until(self.nodes[0].is_leader, timeout, "the first node did not become the leader")
        self.start_node(self.nodes[1])
        _until(self.synchronous, timeout, "the second node did not become a synchronous standby")

    def _etcd(self, clients: str, log: BinaryIO) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                "etcd",
                "--name=ha",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={clients}",
                f"--advertise-client-urls={clients}",
                f"--listen-peer-urls=http://127.0.0.1:{self.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.etcd_peer}",
                f"--initial-cluster=ha=http://127.0.0.1:{self.etcd_peer}",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    def start_node(self, node: Node) -> None:
        config = node.home / "patroni.yml"
        config.write_text(json.dumps(self._config(node), indent=2))
        account = pwd.getpwnam(node.user)
        os.chown(config, account.pw_uid, account.pw_gid)
        with node.log.open("ab") as out:  # the child keeps its own copy
            node.process = subprocess.Popen(
                ["patroni", str(config)],
                stdout=out,
                stderr=out,
                user=node.user,
                group=node.user,
                cwd=node.home,
                start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(node.home)},
            )

    def _config(self, node: Node) -> dict[str, object]:
        """Patroni's configuration (YAML is a superset of JSON)."""
        return {
            "scope": SCOPE,
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{node.etcd_port}"], "use_proxies": True},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 1048576,
                    # A commit returns once the synchronous standby has it; when the standby is
                    # lost, Patroni drops it from synchronous_standby_names (not strict mode).
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "max_connections": 200,
                            "wal_log_hints": "on",
                            "synchronous_commit": "on",
                            "wal_keep_size": "256MB",
                            # How soon the primary gives up on a standby that went silent, after
                            # which Patroni takes it out of synchronous_standby_names (default
                            # 60 s: every write waits that long).
                            "wal_sender_timeout": "10s",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 trust",
                    "host all all 127.0.0.1/32 trust",
                ],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(node.home / "pgpass"),
                "authentication": {
                    "replication": {"username": "replicator", "password": "replicator"},
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "rewind": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(node.home)},
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    def stop(self) -> None:
        self.restore_network()
        for node in self.nodes:
            self.kill(node)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.kill()
            self.etcd.wait()

    # -- state ------------------------------------------------------------------------------

    def leader(self) -> Node | None:
        for node in self.nodes:
            if node.is_leader():
                return node
        return None

    def synchronous(self) -> bool:
        """A leader, and a synchronous standby that has caught up."""
        return self.leader() is not None and any(n.is_sync_standby() for n in self.nodes)

    def url(self, user: str = "postgres", database: str = "postgres") -> str:
        """The libpq multi-host URL of the cluster: whichever node accepts writes."""
        hosts = ",".join(f"127.0.0.1:{n.pg_port}" for n in self.nodes)
        return f"postgresql://{user}@{hosts}/{database}?target_session_attrs=read-write"

    # -- faults -----------------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """kill -9 of the node's Patroni, its postmaster and every backend: the host dies."""
        pid = node.postmaster_pid()
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()
        if pid is not None:
            subprocess.run(["pkill", "-9", "-P", str(pid)], check=False)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.process = None

    def silence(self, node: Node) -> None:
        """Every packet to the node's ports, and every packet its processes send (its
        replication connection to the leader among them), is dropped: no reset, no answer."""
        ports = f"{node.pg_port},{node.api_port},{node.etcd_port}"
        _iptables("-I", "OUTPUT", "-p", "tcp", "-m", "multiport", "--dports", ports)
        _iptables("-I", "OUTPUT", "-m", "owner", "--uid-owner", node.user)
        node.silent = True

    def restore_network(self) -> None:
        """Remove every rule this harness added (found by its comment)."""
        listed = subprocess.run(
            ["iptables", "-S", "OUTPUT"], capture_output=True, text=True, check=False
        ).stdout
        for line in listed.splitlines():
            if RULE_COMMENT in line and line.startswith("-A "):
                rule = line.split()[2:]
                subprocess.run(["iptables", "-D", "OUTPUT", *rule], check=False)
        for node in self.nodes:
            node.silent = False


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
        )


def _iptables(*rule: str) -> None:
    subprocess.run(
        ["iptables", *rule, "-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"],
        check=True,
    )


def _until(condition: object, timeout: float, message: str = "timed out") -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise TimeoutError(message)
