"""The cluster rig itself (cluster.py): it forms, fences through the test agent, and fails over."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from cluster import FENCE_DEVICE, NODES, three_nodes
from helpers import wait_until

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]

DUMMY = """<primitive id="dummy" class="ocf" provider="pacemaker" type="Dummy">
  <operations><op id="dummy-monitor" name="monitor" interval="2s"/></operations>
</primitive>"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not Path("/sys/fs/cgroup").is_dir() or not shutil.which("systemd-nspawn"):
        pytest.skip("needs systemd-nspawn (the nodes are containers)")
    started = time.monotonic()
    with three_nodes(tmp_path_factory.mktemp("cluster")) as cluster:
        print(f"\nthe cluster formed in {time.monotonic() - started:.1f} s")
        yield cluster


def _fenced_since(cluster, node: str, since: float) -> bool:
    return any(name == node and when > since for name, when in cluster.fenced)


def test_forms_quorate_with_three_nodes_online_and_the_fence_device(cluster) -> None:
    assert cluster.online() == set(NODES)
    for name in NODES:
        quorum = cluster.nodes[name].box.run("corosync-quorumtool", "-s").stdout
        assert "Quorate:          Yes" in quorum and "Total votes:      3" in quorum, quorum
    assert len(cluster.locate(FENCE_DEVICE)) == 1


def test_stonith_admin_powers_a_node_off_through_the_agent_and_restart_brings_it_back(cluster) -> None:
    n3 = cluster.nodes["n3"]
    process = n3.box.process
    before = time.monotonic()
    fenced = cluster.nodes["n1"].box.run("stonith_admin", "--fence", "n3", "--timeout", "60", check=False)
    assert fenced.returncode == 0, fenced.stdout + fenced.stderr
    assert _fenced_since(cluster, "n3", before)
    assert process.poll() is not None and not cluster.running("n3")
    wait_until("n3 offline", lambda: cluster.online() == {"n1", "n2"}, timeout=60)
    cluster.restart("n3")
    assert cluster.online() == set(NODES)


def test_a_crashed_node_is_fenced_and_its_resource_started_elsewhere(cluster) -> None:
    cluster.nodes["n1"].box.run("cibadmin", "--create", "-o", "resources", "--xml-text", DUMMY)
    wait_until("dummy to start", lambda: len(cluster.locate("dummy")) == 1, timeout=60)
    [victim] = cluster.locate("dummy")
    crashed = time.monotonic()
    cluster.crash(victim)
    wait_until(f"{victim} fenced", lambda: _fenced_since(cluster, victim, crashed), timeout=60)
    wait_until("dummy elsewhere", lambda: cluster.locate("dummy") not in ([], [victim]), timeout=60)
    print(f"\ndummy started again {time.monotonic() - crashed:.1f} s after the crash of {victim}")
    cluster.restart(victim)
    cluster.nodes["n1"].box.run("cibadmin", "--delete", "-o", "resources", "--xml-text", '<primitive id="dummy"/>')


def test_a_node_cut_off_is_fenced_by_the_majority(cluster) -> None:
    cut = time.monotonic()
    cluster.cut("n2")
    wait_until("n2 fenced", lambda: _fenced_since(cluster, "n2", cut), timeout=60)
    assert not cluster.running("n2")
    assert cluster.online() == {"n1", "n3"}
    cluster.heal("n2")
    cluster.restart("n2")
    assert cluster.online() == set(NODES)
