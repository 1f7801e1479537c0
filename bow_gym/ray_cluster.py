"""A Ray cluster on this machine, on the loopback address only: for the tests, the benchmarks and
for trying ``--ray-address`` before a real cluster.

:class:`LoopbackCluster` starts a head node and more nodes as separate ``ray start --block``
processes, every one with ``--node-ip-address=127.0.0.1``, kills a node's raylet on demand (fault
injection) and stops exactly the processes it started, by their ids.

Why a launcher
--------------
Ray 2.60's ``ray start`` and ``ray.init`` replace a loopback address (``127.0.0.1``,
``localhost``) by the address this machine routes to the outside
(``ray._private.services.resolve_ip_for_localhost``): a cluster started with
``--node-ip-address=127.0.0.1`` would still advertise, and listen on, the machine's external
interface. :func:`keep_loopback` keeps ``127.0.0.1`` as given; ``python -m bow_gym.ray_cluster
start ...`` is ``ray start ...`` with it applied, and :func:`bow_gym.sweep.run_sweep` applies it
when its ``ray_address`` is on ``127.0.0.1``. With it, every server of the cluster listens on
``127.0.0.1`` only and every node and driver is reached there. Real clusters, whose nodes have
real addresses, do not need it.

Authentication
--------------
The loopback cluster runs with ``RAY_AUTH_MODE=disabled``: its ports are reachable from this
machine only, and Ray's token would otherwise have to be handed to every node. A real cluster
keeps Ray's token authentication on (Ray's default since 2.5x): create the token once with
``ray get-auth-token --generate`` and give it to every node and driver (``RAY_AUTH_TOKEN`` or the
token file); see ``docs/scaling.md``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: The only address the loopback cluster uses.
LOOPBACK = "127.0.0.1"
#: What ``ray start --block`` prints once its node has joined.
_STARTED = "Ray runtime started"


@contextlib.contextmanager
def keep_loopback() -> Iterator[None]:
    """Within the block, Ray keeps ``127.0.0.1`` as given instead of resolving it to the
    machine's external address (see the module docstring). Does nothing where Ray has no such
    resolution step."""
    try:
        import ray._private.services as services
    except ImportError:  # pragma: no cover - depends on Ray's internals
        yield
        return
    original = getattr(services, "resolve_ip_for_localhost", None)
    if original is None:  # pragma: no cover - a Ray that no longer resolves
        yield
        return

    def resolve(host: str) -> str:
        return host if host == LOOPBACK else original(host)

    services.resolve_ip_for_localhost = resolve
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


def is_loopback(address: str | None) -> bool:
    """Whether a Ray address (``host:port``) is on ``127.0.0.1``."""
    return bool(address) and address.rsplit(":", 1)[0] == LOOPBACK


def free_port() -> int:
    """A TCP port free on ``127.0.0.1`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One ``ray start --block`` process of a :class:`LoopbackCluster` and its log file."""

    name: str
    process: subprocess.Popen
    log: Path
    #: Its descendants seen so far, by process id (psutil.Process objects: signalling one whose
    #: id was reused by another program fails instead of hitting that program).
    procs: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None


class LoopbackCluster:
    """A head node and further nodes of Ray on ``127.0.0.1``, each a separate process.

    Every node is ``python -m bow_gym.ray_cluster start --block --node-ip-address=127.0.0.1
    ...`` (``ray start`` keeping the loopback address), with its own free ports, in a temporary
    folder of its own (``--temp-dir``), and ``RAY_AUTH_MODE=disabled``. :meth:`stop` ends every
    process the nodes started (the ``ray start`` processes first, which stop their children;
    then any left, by id); use the cluster as a context manager so that it always runs.

    Example:
        >>> with LoopbackCluster(head_cpus=1) as cluster:  # doctest: +SKIP
        ...     worker = cluster.add_node(num_cpus=1)
        ...     run_sweep(units, out, SweepOptions(backend="ray", ray_address=cluster.address))
    """

    def __init__(self, head_cpus: int = 1, *, start_timeout: float = 120.0,
                 env: dict[str, str] | None = None) -> None:
        """Starts the head node (``head_cpus`` CPUs for tasks; ``0``: it only schedules).

        Raises:
            RuntimeError: The head did not start within ``start_timeout`` seconds (its log is
                quoted).
        """
        self.start_timeout = float(start_timeout)
        # A short folder: Ray's socket paths must stay under the 107 characters of AF_UNIX.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="bowray"))
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    **(env or {})}
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.nodes: list[Node] = []
        try:
            self.head = self._start("head", ["--head", f"--port={self.port}",
                                             f"--num-cpus={head_cpus}",
                                             "--include-dashboard=false",
                                             f"--dashboard-port={free_port()}",
                                             f"--ray-client-server-port={free_port()}"])
        except BaseException:
            self.stop()
            raise

    def add_node(self, num_cpus: int = 1) -> Node:
        """Starts one more node that joins the head; returns once it has joined.

        Raises:
            RuntimeError: It did not join within the start timeout (its log is quoted).
        """
        return self._start(f"node{len(self.nodes)}",
                           [f"--address={self.address}", f"--num-cpus={num_cpus}"])

    def _start(self, name: str, args: list[str]) -> Node:
        log = self.temp_dir / f"{name}.log"
        cmd = [sys.executable, "-m", "bow_gym.ray_cluster", "start", "--block",
               f"--node-ip-address={LOOPBACK}", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}", *args]
        with open(log, "wb") as f:
            # A session of its own: the node's processes form one group, stopped by its id.
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        node = Node(name, proc, log)
        self.nodes.append(node)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if _STARTED in text:
                self._remember(node)
                return node
            if not node.alive():
                break
            time.sleep(0.25)
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"Ray {name} did not start within {self.start_timeout:.0f} s "
                           f"(exit code {node.process.poll()}); its log {log}:\n{tail}")

    def _remember(self, node: Node) -> None:
        """Adds the node's current descendants to the processes :meth:`stop` ends."""
        import psutil

        try:
            for p in psutil.Process(node.process.pid).children(recursive=True):
                node.procs.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def raylet_pid(self, node: Node) -> int:
        """The process id of ``node``'s raylet (the process that makes it a node).

        Raises:
            RuntimeError: The node has no raylet (it is not running).
        """
        import psutil

        self._remember(node)
        for pid, p in sorted(node.procs.items()):
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.name() == "raylet":
                    return pid
        raise RuntimeError(f"Ray {node.name} has no raylet process (exited: {not node.alive()})")

    def kill_node(self, node: Node, timeout: float = 60.0) -> None:
        """Kills ``node``'s raylet with SIGKILL, as a crashed or preempted machine would lose it;
        waits (at most ``timeout`` s) for the node's ``ray start`` to exit, then ends whatever
        of the node is left, by id."""
        pid = self.raylet_pid(node)
        node.procs[pid].send_signal(signal.SIGKILL)
        try:
            node.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self._end(node, grace=5.0)

    def stop(self, grace: float = 15.0) -> None:
        """Ends every process of every node: SIGTERM to each ``ray start`` (which stops its
        children), then SIGKILL to any process of theirs still there after ``grace`` s. Only
        processes this cluster started are signalled; its temporary folder is removed.
        Idempotent."""
        for node in self.nodes:
            self._remember(node)
            if node.alive():
                with contextlib.suppress(ProcessLookupError):
                    node.process.terminate()
        for node in reversed(self.nodes):
            self._end(node, grace)
        # Ray's session logs and sockets; a node that failed to start quoted its log already.
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _end(self, node: Node, grace: float) -> None:
        import psutil

        self._remember(node)
        procs = [p for p in node.procs.values() if p.is_running()]
        if node.alive():  # not yet reaped: its id is still its own
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(node.process.pid))
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=grace)

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m bow_gym.ray_cluster ARGS``: Ray's command line (``ray ARGS``) keeping
    ``127.0.0.1`` as given (:func:`keep_loopback`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    with keep_loopback():
        from ray.scripts.scripts import main as ray_main

        sys.argv = ["ray", *args]
        ray_main()


if __name__ == "__main__":
    main()
