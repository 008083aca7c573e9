"""A real local Redis Cluster for the test suite: start it, break it, reshard it.

`LocalCluster` starts ``masters * (1 + replicas_per_master)`` redis-server
processes (the one cronmon embeds, see `exporter.embedded.find_redis_server`)
on free loopback ports, each in its own work dir with its own log and
``nodes.conf``, joins them with ``redis-cli --cluster create`` and waits until
the cluster has settled: every node says ``cluster_state:ok``, every node
knows every other, all 16384 slots are assigned and served, every node agrees
on who masters each slot, and every replica is in sync with its master.

Tests then drive it with `kill` (SIGKILL a node; its replica is promoted
after ``node_timeout_ms`` plus an election), `reshard` / `reshard_async`
(``redis-cli --cluster reshard``, in the foreground or in the background so a
test can put load on the cluster while slots move) and `wait_ok` (until the
cluster has settled again). Topology questions (`masters`, `master_of_slot`,
`replicas_of`) are answered from a live node's ``CLUSTER NODES``.

Everything is synchronous (subprocess and the sync redis-py client), so it is
usable from sync and async tests alike; every wait is bounded and fails with
a RuntimeError naming what was not reached, with the tail of the node logs.
Only 127.0.0.1 is ever bound or connected to. Usage::

    with LocalCluster(tmp_path) as cluster:      # or start_cluster(tmp_path)
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.startup_ports()[0])
        ...
        cluster.kill(cluster.master_of_slot(0))
        cluster.wait_ok()
"""

from __future__ import annotations

import itertools
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from exporter.embedded import find_redis_server

from .conftest import free_port

HOST = "127.0.0.1"
SLOTS = 16384
# A cluster node also listens on its data port + this (the cluster bus).
BUS_OFFSET = 10000
# How long a node may take to answer PING after it was spawned.
NODE_START_TIMEOUT = 10.0
# Poll interval of every wait below.
POLL = 0.05


def _redis_binaries() -> tuple[str, str]:
    """(redis-server, redis-cli); AssertionError with a sentence if either is missing."""
    try:
        server = find_redis_server()
    except Exception as exc:  # noqa: BLE001 (any failure here means "no binary")
        raise AssertionError(f"no redis-server binary for the local Redis Cluster: {exc}") from None
    if not server or not Path(server).is_file():
        raise AssertionError(f"no redis-server binary for the local Redis Cluster (got {server!r})")
    cli = Path(server).with_name("redis-cli")
    if cli.is_file():
        return str(server), str(cli)
    found = shutil.which("redis-cli")
    if found is None:
        raise AssertionError(
            f"no redis-cli next to {server} and none on PATH; the local Redis Cluster needs it "
            "for --cluster create and --cluster reshard"
        )
    return str(server), found


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _cluster_port(taken: set[int]) -> int:
    """A free loopback port whose bus port (port + 10000) is free and valid too,
    and neither of which collides with `taken` (ports and bus ports already
    handed to other nodes of this cluster)."""
    for _ in range(200):
        port = free_port()
        bus = port + BUS_OFFSET
        if bus >= 65536 or {port, bus} & taken:
            continue
        if _port_is_free(bus):
            return port
    raise RuntimeError("found no free loopback port pair (port, port + 10000) for a cluster node in 200 tries")


@dataclass
class ClusterNode:
    """One redis-server process of the cluster."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def log_path(self) -> Path:
        return self.workdir / "log"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class NodeLine:
    """One line of ``CLUSTER NODES``, as far as this harness needs it."""

    node_id: str
    port: int  # 0 for a node with no known address (flag noaddr)
    flags: frozenset[str]
    master_id: str | None  # the master of a replica, else None
    slots: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges
    open_slots: list[str] = field(default_factory=list)  # "[slot->-id]" / "[slot-<-id]"

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags


def parse_cluster_nodes(text: str) -> list[NodeLine]:
    """Parse the text of ``CLUSTER NODES`` (6.2 and 7.x formats)."""
    lines = []
    for raw in text.splitlines():
        fields = raw.split()
        if len(fields) < 8:
            continue
        # ip:port@cport, or ip:port@cport,hostname (7.x); ":0@0" when noaddr.
        address = fields[1].split(",", 1)[0].split("@", 1)[0]
        port = int(address.rsplit(":", 1)[1] or 0)
        node = NodeLine(
            node_id=fields[0],
            port=port,
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3],
        )
        for item in fields[8:]:
            if item.startswith("["):
                node.open_slots.append(item)
            elif "-" in item:
                start, end = item.split("-", 1)
                node.slots.append((int(start), int(end)))
            else:
                node.slots.append((int(item), int(item)))
        lines.append(node)
    return lines


def _slot_owners(nodes: list[NodeLine]) -> dict[int, str]:
    """slot -> node id of its master, in one node's view."""
    owners: dict[int, str] = {}
    for node in nodes:
        for start, end in node.slots:
            for slot in range(start, end + 1):
                owners[slot] = node.node_id
    return owners


def _parse_info(text: str) -> dict[str, str]:
    """``CLUSTER INFO`` text -> {field: value} (raw strings)."""
    info = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


class LocalCluster:
    """`masters` masters (+ `replicas_per_master` replicas each) on loopback,
    ``cluster-node-timeout`` `node_timeout_ms`, all files under `tmp`.

    `start` returns only once the cluster has fully settled (see the module
    docstring); `stop` is idempotent and also ends a reshard still running.
    Usable as a context manager (``with LocalCluster(tmp) as cluster:``).
    """

    def __init__(self, tmp: Path, masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 1000):
        if masters < 3:
            # redis-cli --cluster create refuses fewer than 3 masters.
            raise ValueError(f"a Redis Cluster needs at least 3 masters, not {masters}")
        if replicas_per_master < 0:
            raise ValueError(f"replicas_per_master must be >= 0, not {replicas_per_master}")
        self.tmp = Path(tmp)
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.nodes: dict[int, ClusterNode] = {}  # by port, in start order
        self._server, self._cli = _redis_binaries()
        self._startup_masters: list[int] = []
        self._ids: dict[int, str] = {}  # port -> node id (never changes for a node)
        self._reshards: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}  # pid -> (process, log)
        self._reshard_counter = itertools.count(1)
        self.startup_seconds: float | None = None  # how long `start` took

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> LocalCluster:
        """Spawn the nodes, create the cluster and wait until it has settled
        (bounded; RuntimeError with the node logs' tails if it does not).
        On any failure every process started so far is stopped again."""
        if self.nodes:
            raise RuntimeError("this LocalCluster was already started")
        started = time.monotonic()
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            total = self.master_count * (1 + self.replicas_per_master)
            taken: set[int] = set()
            for _ in range(total):
                node = self._spawn(taken)
                taken |= {node.port, node.port + BUS_OFFSET}
            for port in self.nodes:
                self._ids[port] = self._ask(port, "CLUSTER", "MYID")
            self._create()
            # Generous: a fresh cluster settles in ~1-3 s on an idle machine.
            self._wait("the new cluster to settle", self._settled_problem, timeout=60)
            self._startup_masters = sorted(n.port for n in self._view() if n.is_master)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """SIGTERM every node (and any background reshard), wait, SIGKILL
        what is left after 5 s. Safe to call any number of times."""
        processes = [node.process for node in self.nodes.values()]
        processes += [process for process, _ in self._reshards.values()]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 5
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` and reap it (no shutdown, no goodbye to
        its peers: they find out after node_timeout_ms). The node stays in
        `nodes`, so `stop` is still safe; it is not restarted."""
        node = self._node(port)
        if node.alive:
            node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    # -- addresses and topology ---------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,...`` with the masters' ports at start."""
        return "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in self.startup_ports())

    def startup_ports(self) -> list[int]:
        """Ports of the masters right after start (sorted): the seed nodes
        of `url`. They stay the same whatever happens to the cluster later."""
        if not self._startup_masters:
            raise RuntimeError("the LocalCluster is not started")
        return list(self._startup_masters)

    def all_ports(self) -> list[int]:
        """Ports of every node started, masters and replicas, dead or alive."""
        return list(self.nodes)

    def live_ports(self) -> list[int]:
        """Ports of the nodes whose process is still running."""
        return [port for port, node in self.nodes.items() if node.alive]

    def node_id(self, port: int) -> str:
        """The cluster node id of the node on `port` (also of a killed one)."""
        self._node(port)
        return self._ids[port]

    def masters(self) -> list[int]:
        """Ports of the current masters (sorted) in a live node's view:
        nodes flagged master and not flagged fail. Right after a kill that
        view can still list the dead master; call `wait_ok` first for a
        settled answer."""
        return sorted(n.port for n in self._view() if n.is_master and not n.failed)

    def master_of_slot(self, slot: int) -> int:
        """Port of the master serving `slot` in a live node's view."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"no slot {slot} (0..{SLOTS - 1})")
        for node in self._view():
            if any(start <= slot <= end for start, end in node.slots):
                return node.port
        raise AssertionError(f"slot {slot} is served by no node")

    def replicas_of(self, master_port: int) -> list[int]:
        """Ports of the replicas of the master on `master_port` (sorted), in a
        live node's view, without those flagged fail."""
        master_id = self.node_id(master_port)
        return sorted(n.port for n in self._view() if n.master_id == master_id and not n.failed)

    def client(self, port: int) -> redis.Redis:
        """A sync client to the single node on `port` (not cluster aware:
        it gets MOVED for keys of other nodes). The caller closes it."""
        self._node(port)
        return redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)

    # -- waiting -----------------------------------------------------------

    def wait_ok(self, timeout: float = 30, *, allow_open_slots: bool = False) -> None:
        """Until every live node says cluster_state:ok and serves all 16384
        slots, all live nodes agree on who masters each slot, and each such
        master is a node still running (so right after `kill` of a master
        this waits for its failover rather than seeing the stale "ok").
        All live nodes must also agree on whom every live replica follows
        (so `replicas_of` is settled too; for the replicas' data being in
        sync, see `wait_replicas`). Unless `allow_open_slots`, also until no
        slot is half migrated. RuntimeError after `timeout` seconds."""
        self._wait("the cluster to be ok", lambda: self._ok_problem(allow_open_slots), timeout)

    def wait_replicas(self, timeout: float = 30) -> None:
        """Until every live replica has its master link up (its full sync is
        done) to a live master, the one the cluster says it follows."""
        self._wait("the replicas to be in sync", self._replicas_problem, timeout)

    # -- resharding --------------------------------------------------------

    def reshard(
        self, slots: int, source_port: int, target_port: int, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Move `slots` slots (the lowest of the source's) from the master on
        `source_port` to the one on `target_port` with ``redis-cli --cluster
        reshard``; returns once it exited 0, else RuntimeError with its output."""
        return self.finish_reshard(self.reshard_async(slots, source_port, target_port), timeout)

    def reshard_async(self, slots: int, source_port: int, target_port: int) -> subprocess.Popen[bytes]:
        """The same reshard, started in the background: returns the running
        redis-cli at once, its output going to a log file under `tmp`. Pass it
        to `finish_reshard` to wait for it and check its exit status (`stop`
        ends it if it is still running)."""
        seed = next((port for port in self.live_ports() if self._answers(port)), None)
        if seed is None:
            raise RuntimeError("no live node answers; cannot reshard")
        args = [
            self._cli, "--cluster", "reshard", f"{HOST}:{seed}",
            "--cluster-from", self.node_id(source_port),
            "--cluster-to", self.node_id(target_port),
            "--cluster-slots", str(slots),
            "--cluster-yes",
            # MIGRATE 10 keys per round trip instead of 1: several times faster.
            "--cluster-pipeline", "10",
        ]
        log_path = self.tmp / f"reshard-{next(self._reshard_counter)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._reshards[process.pid] = (process, log_path)
        return process

    def finish_reshard(
        self, process: subprocess.Popen[bytes], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Wait (at most `timeout` s, then kill it) for a `reshard_async`
        process; its CompletedProcess (stdout = its whole output) if it
        exited 0, else RuntimeError with the tail of that output."""
        _, log_path = self._reshards[process.pid]
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            output = log_path.read_text(errors="replace")
            raise RuntimeError(f"redis-cli --cluster reshard did not finish in {timeout}s:\n{_tail(output)}") from None
        output = log_path.read_text(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster reshard exited with {process.returncode}:\n{_tail(output)}"
            )
        return subprocess.CompletedProcess(process.args, process.returncode, _ANSI.sub("", output), "")

    # -- internals ---------------------------------------------------------

    def _node(self, port: int) -> ClusterNode:
        try:
            return self.nodes[port]
        except KeyError:
            raise ValueError(f"no node of this cluster on port {port} (nodes: {sorted(self.nodes)})") from None

    def _spawn(self, taken: set[int]) -> ClusterNode:
        """Start one node on a fresh port pair, register it in `nodes` (so
        `stop` ends it whatever happens next) and wait for its PING. The port
        was free when picked but may be taken before redis binds it (another
        test, another worker): then pick another, a few times."""
        for _ in range(5):
            port = _cluster_port(taken)
            workdir = self.tmp / f"redis-{port}"
            workdir.mkdir()
            args = [
                self._server,
                "--port", str(port),
                "--bind", HOST,
                "--dir", str(workdir),
                "--save", "", "--appendonly", "no",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # A replica may always stand for election, however long its
                # link was down: fast failover, never "no replica is eligible".
                "--cluster-replica-validity-factor", "0",
                # Replicas stay with the master they were created for (no
                # surprise moves between masters in the middle of a test).
                "--cluster-allow-replica-migration", "no",
                # Stated, though the defaults: a slot whose master is down
                # fails the whole cluster (CLUSTERDOWN), reads included, so a
                # test sees the outage and not stale reads.
                "--cluster-require-full-coverage", "yes",
                "--cluster-allow-reads-when-down", "no",
            ]
            with open(workdir / "log", "wb") as log:
                process = subprocess.Popen(
                    args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            node = self.nodes[port] = ClusterNode(port, process, workdir)
            deadline = time.monotonic() + NODE_START_TIMEOUT
            while time.monotonic() < deadline:
                if not node.alive:
                    break
                if self._answers(port):
                    return node
                time.sleep(POLL)
            else:
                process.kill()
                process.wait(5)
                raise RuntimeError(
                    f"cluster node on port {port} did not answer PING in {NODE_START_TIMEOUT}s; "
                    f"log tail:\n{node.log_tail()}"
                )
            process.wait(5)
            if "Address already in use" not in node.log_tail():
                raise RuntimeError(
                    f"cluster node on port {port} exited with {process.returncode}; log tail:\n{node.log_tail()}"
                )
            del self.nodes[port]  # it is dead; try another port
            taken |= {port, port + BUS_OFFSET}  # and do not pick this one again
        raise RuntimeError("5 cluster nodes in a row found their port taken; giving up")

    def _create(self) -> None:
        """``redis-cli --cluster create``: with a single IP it makes the first
        `masters` addresses the masters and assigns the rest as replicas."""
        args = [
            self._cli, "--cluster", "create",
            *(f"{HOST}:{port}" for port in self.nodes),
            "--cluster-replicas", str(self.replicas_per_master),
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(
                args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            raise RuntimeError(f"redis-cli --cluster create did not finish in 60s:\n{_tail(output)}") from None
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create exited with {done.returncode}:\n"
                f"{_tail(done.stdout + done.stderr)}\n{self._logs()}"
            )

    def _answers(self, port: int) -> bool:
        try:
            with _probe(port) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _ask(self, port: int, *command: str) -> str:
        """One command to one node, its reply as text (short timeouts)."""
        with _probe(port) as client:
            # "CLUSTER", "NODES" as two words bypasses redis-py's parsing of
            # "CLUSTER NODES" / "CLUSTER INFO": the raw text is wanted here.
            return str(client.execute_command(*command))

    def _nodes_of(self, port: int) -> list[NodeLine]:
        return parse_cluster_nodes(self._ask(port, "CLUSTER", "NODES"))

    def _view(self) -> list[NodeLine]:
        """CLUSTER NODES of the first live node that answers."""
        problems = []
        for port in self.live_ports():
            try:
                return self._nodes_of(port)
            except redis.RedisError as exc:
                problems.append(f"{port}: {exc}")
        raise RuntimeError(f"no live cluster node answers CLUSTER NODES ({'; '.join(problems) or 'none running'})")

    def _ok_problem(self, allow_open_slots: bool) -> str | None:
        """Why the cluster is not ok (see `wait_ok`), or None if it is."""
        live = self.live_ports()
        if not live:
            return "no node is running"
        live_ids = {self._ids[port] for port in live}
        maps: dict[int, dict[int, str]] = {}
        roles: dict[int, dict[str, str]] = {}
        for port in live:
            try:
                info = _parse_info(self._ask(port, "CLUSTER", "INFO"))
                nodes = self._nodes_of(port)
            except redis.RedisError as exc:
                return f"node {port} does not answer: {exc}"
            if info.get("cluster_state") != "ok":
                return f"node {port} says cluster_state:{info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != str(SLOTS):
                return f"node {port} says cluster_slots_ok:{info.get('cluster_slots_ok')}"
            owners = _slot_owners(nodes)
            if len(owners) != SLOTS:
                return f"node {port} sees {len(owners)} of {SLOTS} slots assigned"
            dead = sorted(self._port_of(owner) for owner in set(owners.values()) - live_ids)
            if dead:
                return f"node {port} still has slots mastered by killed node(s) {dead}"
            if not allow_open_slots:
                opened = [item for n in nodes if "myself" in n.flags for item in n.open_slots]
                if opened:
                    return f"node {port} has open slots {opened[:5]}"
            maps[port] = owners
            # Who each live node follows ("-" for a master): a replica of a
            # failed-over master re-attaches to the winner a gossip round
            # after the failover, and `replicas_of` must see that already.
            roles[port] = {n.node_id: n.master_id or "-" for n in nodes if n.node_id in live_ids}
        first, *others = live
        for port in others:
            if maps[port] != maps[first]:
                differ = sum(1 for slot in range(SLOTS) if maps[port][slot] != maps[first][slot])
                return f"nodes {first} and {port} disagree on the master of {differ} slots"
            if roles[port] != roles[first]:
                return f"nodes {first} and {port} disagree on which master each replica follows"
        return None

    def _replicas_problem(self) -> str | None:
        """Why some live replica is not in sync with a live master that the
        cluster agrees it follows, or None."""
        live = self.live_ports()
        followed = {n.port: self._port_of(n.master_id) for n in self._view() if n.master_id}
        for port in live:
            try:
                with _probe(port) as client:
                    info = client.info("replication")
            except redis.RedisError as exc:
                return f"node {port} does not answer: {exc}"
            if info.get("role") != "slave":
                continue
            if info.get("master_link_status") != "up":
                return f"replica {port} has master_link_status:{info.get('master_link_status')}"
            if info.get("master_port") not in live:
                return f"replica {port} follows {info.get('master_port')}, which is not running"
            if followed.get(port) != info.get("master_port"):
                return f"replica {port} follows {info.get('master_port')}, the cluster says {followed.get(port)}"
        return None

    def _settled_problem(self) -> str | None:
        """Why a new cluster has not settled (`wait_ok`, plus: every node
        knows and reaches every other, each master has its replicas, and
        those are in sync), or None."""
        problem = self._ok_problem(allow_open_slots=False)
        if problem:
            return problem
        total = len(self.nodes)
        for port in self.nodes:
            try:
                nodes = self._nodes_of(port)
            except redis.RedisError as exc:
                return f"node {port} does not answer: {exc}"
            if len(nodes) != total:
                return f"node {port} knows {len(nodes)} of {total} nodes"
            flagged = [n.port for n in nodes if {"fail", "fail?", "handshake", "noaddr"} & n.flags]
            if flagged:
                return f"node {port} flags nodes {flagged} as failing or not yet joined"
            masters = [n for n in nodes if n.is_master]
            if len(masters) != self.master_count:
                return f"node {port} sees {len(masters)} masters, not {self.master_count}"
            for master in masters:
                replicas = [n for n in nodes if n.master_id == master.node_id]
                if len(replicas) != self.replicas_per_master:
                    return f"node {port} sees {len(replicas)} replicas of master {master.port}"
        return self._replicas_problem()

    def _wait(self, what: str, problem: Callable[[], str | None], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                last = problem()
            except (redis.RedisError, RuntimeError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if last is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}: {last}\n{self._logs()}")
            time.sleep(POLL)

    def _port_of(self, node_id: str) -> int:
        return next((port for port, known in self._ids.items() if known == node_id), 0)

    def _logs(self, lines: int = 8) -> str:
        """The tail of every node's log, for failure messages."""
        parts = []
        for port, node in self.nodes.items():
            state = "running" if node.alive else f"exited {node.process.returncode}"
            parts.append(f"--- node {port} ({state}), {node.log_path}:\n{node.log_tail(lines)}")
        return "\n".join(parts)


def _probe(port: int) -> redis.Redis:
    """A client for one look at one node: short timeouts and no retries
    (redis-py retries 3 times by default, which would stretch every poll
    of a node that is down, or of a port someone else holds, to seconds)."""
    return redis.Redis(
        host=HOST, port=port, decode_responses=True, socket_timeout=1, socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _tail(text: str, lines: int = 30) -> str:
    """The last `lines` non-blank lines of redis-cli output, without its colours."""
    kept = [line for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def start_cluster(tmp: Path, **options: int) -> LocalCluster:
    """`LocalCluster(tmp, **options).start()`; the caller must `stop()` it."""
    return LocalCluster(tmp, **options).start()
