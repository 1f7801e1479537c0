"""A real Ray cluster on 127.0.0.1: a head and a second node as separate ``ray start`` processes,
a sweep through the cluster's address, the second node killed mid-sweep; every unit exactly once.

The cluster runs with ``RAY_AUTH_MODE=disabled`` (loopback only; real clusters keep Ray's token
authentication on, see docs/scaling.md) and is stopped in the teardown, whatever happens: by the
ids of the processes it started (``ray stop --force`` would stop every Ray on the machine)."""

from __future__ import annotations

import psutil
import pytest

from benchmarks.sweep_scaling import NodeKiller, check_exactly_once, probe_units
from bow_gym.ray_cluster import LOOPBACK, LoopbackCluster
from bow_gym.sweep import SweepOptions, run_sweep


@pytest.fixture
def cluster():
    cluster = LoopbackCluster(head_cpus=1, start_timeout=120)
    try:
        yield cluster
    finally:
        cluster.stop()
        left = [p for node in cluster.nodes for p in node.procs.values()
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"processes of the cluster still running: {left}"


def _listening(cluster) -> set[str]:
    """Addresses the cluster's processes listen on."""
    pids = {pid for node in cluster.nodes for pid in node.procs}
    return {c.laddr.ip for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


@pytest.mark.slow
def test_a_sweep_through_the_cluster_survives_a_killed_node(cluster, tmp_path):
    node = cluster.add_node(num_cpus=1)
    assert len(cluster.nodes) == 2 and node.alive()
    assert _listening(cluster) <= {LOOPBACK, f"::ffff:{LOOPBACK}"}  # nothing beyond loopback
    ledger, out = tmp_path / "ledger", tmp_path / "sweep"
    units = probe_units(8, 2.0, ledger)
    killer = NodeKiller(cluster, ledger, kills=1, wait=90)
    nodes_seen: list = []

    def note_nodes(unit, result, reused) -> None:
        import ray

        killer.finished.add(unit.key)
        if not nodes_seen:
            nodes_seen.extend((n["NodeManagerAddress"], n["Alive"]) for n in ray.nodes())

    killer.start()
    try:
        results = run_sweep(units, out, SweepOptions(
            backend="ray", ray_address=cluster.address, retries=3, progress=False),
            on_result=note_nodes)
    finally:
        killer.stop(timeout=120)
    assert len(killer.kills) == 1, "the node was not killed mid-sweep"
    assert not node.alive()
    assert {addr for addr, _ in nodes_seen} == {LOOPBACK}
    report = check_exactly_once(units, results, out, ledger)
    assert report["lost"] == [] and report["duplicated"] == 0 and report["wrong_values"] == []
    assert report["result_files"] == report["results"] == len(units)
    assert report["attempts_total"] >= len(units)
    assert sorted(p.name for p in (out / "logs" / "probe").iterdir()) == [
        f"u{i:03d}.log" for i in range(8)]
