"""Issue 17 end to end: a VM as a Pacemaker resource on the three-node rig (cluster.py).

One cluster serves the module; a test that takes a node down boots it again before it ends. A
sampler watches every node's qemu processes for the VM from the test host (/proc), so that "never
on two nodes at once" and "the volume never open twice" are checked all the time, not at moments.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Self

import pytest
from cluster import FENCE_DEVICE, HOST_FILE, SHARED, boots, declare, three_nodes
from helpers import build_file, kernel_settings, wait_until, write_vm
from sshhosts import MIGRATING, ticks

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]

VM = "cvm"
RESOURCE = f"microvm-{VM}"


class Sampler:
    """Samples, as fast as it can, which nodes run a qemu of the VM and how many qemus hold its volume open."""

    def __init__(self, cluster, image: Path) -> None:
        self.cluster, self.image = cluster, image
        self.samples = 0
        self.twice: list[tuple[float, dict[str, list[int]], int]] = []  # (when, qemus by node, holders)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _qemus(self) -> dict[str, list[int]]:
        """The VM's qemu processes (named microvm@VM) by node, the node told by the container's cgroup."""
        found: dict[str, list[int]] = {}
        cgroups = {name: f"/{host.box.cgroup}/" for name, host in self.cluster.nodes.items()}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != f"microvm@{VM}":
                    continue
                cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue  # it exited meanwhile
            for name, group in cgroups.items():
                if group in cgroup:
                    found.setdefault(name, []).append(int(pid))
        return found

    def _holders(self, pids: list[int]) -> int:
        """How many of ``pids`` have the volume image open."""
        try:
            image = self.image.stat()
        except FileNotFoundError:
            return 0
        return sum(_holds(pid, (image.st_dev, image.st_ino)) for pid in pids)

    def _run(self) -> None:
        while not self._stop.is_set():
            qemus = self._qemus()
            holders = self._holders([pid for pids in qemus.values() for pid in pids])
            self.samples += 1
            if len(qemus) > 1 or sum(map(len, qemus.values())) > 1 or holders > 1:
                self.twice.append((time.monotonic(), qemus, holders))
            time.sleep(0.01)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _holds(pid: int, file: tuple[int, int]) -> bool:
    """Whether process ``pid`` has the file (st_dev, st_ino) open."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False  # it exited meanwhile
    for fd in fds:
        with contextlib.suppress(OSError):
            if (fd.stat().st_dev, fd.stat().st_ino) == file:
                return True
    return False


@pytest.fixture(scope="module")
def rig(tmp_path_factory, shared_store):
    """The cluster running the VM, through `host apply` on every node and `cluster apply` on n1."""
    if not Path("/sys/fs/cgroup").is_dir() or not shutil.which("systemd-nspawn"):
        pytest.skip("needs systemd-nspawn (the nodes are containers)")
    began = time.monotonic()
    tmp = tmp_path_factory.mktemp("cluster")
    kernel = kernel_settings(shared_store, tmp / "work")
    vm_text = MIGRATING.format(name=VM, image=f"{SHARED}/{VM}.img") + kernel
    build_file(shared_store, write_vm(tmp / "work", vm_text, f"{VM}.toml"))  # the nodes' builds: cache hits
    with three_nodes(tmp) as cluster:
        applied = declare(cluster, VM, vm_text)
        assert f"add resource {RESOURCE}" in applied, applied
        wait_until(f"{VM} to start", lambda: len(cluster.locate(RESOURCE)) == 1)
        wait_until(f"{VM} ticking", lambda: boots(cluster, VM) != {})
        print(f"\nthe cluster and {VM} were up in {time.monotonic() - began:.1f} s")
        yield cluster, tmp
    print(f"\nthe module took {time.monotonic() - began:.1f} s")


def _running_on(cluster) -> str:
    """The one node running the VM once the cluster has nothing left to do (a probe or a stop can be pending)."""
    cluster.settle(120)
    [node] = cluster.locate(RESOURCE)
    return node


def _current_boot(cluster, node: str) -> str:
    """The boot id of the guest ticking on ``node`` now: its console log grows (an old boot's does not)."""
    count = len(ticks(cluster.nodes[node], VM))
    wait_until(f"{VM} ticking on {node}", lambda: len(ticks(cluster.nodes[node], VM)) > count + 2, 120)
    return ticks(cluster.nodes[node], VM)[-1][1]


def _last_tick(cluster, node: str, boot: str) -> int:
    return max([n for n, b in ticks(cluster.nodes[node], VM) if b == boot], default=-1)


def test_the_vm_runs_on_exactly_one_node(rig) -> None:
    cluster, tmp = rig
    node = _running_on(cluster)
    with Sampler(cluster, tmp / "shared" / f"{VM}.img") as sampler:
        wait_until("a few samples", lambda: sampler.samples > 20, timeout=30)
    assert sampler.twice == []
    qemus = sampler._qemus()
    assert list(qemus) == [node] and sampler._holders(qemus[node]) == 1  # the sampler sees what it must
    for name, host in cluster.nodes.items():
        assert host.active(VM) == (name == node)
        [listed] = [vm for vm in json.loads(host.microvm("list", "--json").stdout) if vm["name"] == VM]
        assert listed["node"] == node, listed
        status = host.microvm("status", VM, check=False)
        assert f"node: {node}" in status.stdout.splitlines(), status.stdout + status.stderr


def test_node_loss_fences_the_node_and_boots_the_vm_elsewhere(rig) -> None:
    cluster, tmp = rig
    victim = _running_on(cluster)
    seen = set().union(*boots(cluster, VM).values())
    with Sampler(cluster, tmp / "shared" / f"{VM}.img") as sampler:
        crashed = time.monotonic()
        cluster.crash(victim)

        def booted_elsewhere() -> bool:
            return any(boots - seen for name, boots in boots(cluster, VM).items() if name != victim)

        wait_until(f"{VM} booted on another node", booted_elsewhere)
        marker = time.monotonic()
    fenced = [when for name, when in cluster.fenced if name == victim and when > crashed]
    assert fenced and fenced[0] < marker
    print(f"\nfail-over: crash -> fenced {fenced[0] - crashed:.1f} s, crash -> marker {marker - crashed:.1f} s")
    assert sampler.twice == []
    assert _running_on(cluster) != victim
    cluster.restart(victim)
    assert _running_on(cluster) != victim  # it stays where it runs


def test_drain_moves_the_vm_live(rig) -> None:
    cluster, _ = rig
    source = _running_on(cluster)
    boot = _current_boot(cluster, source)
    host = cluster.nodes[source]
    began = time.monotonic()
    host.box.run("crm_attribute", "--node", source, "--name", "standby", "--update", "on")
    try:
        wait_until(f"{VM} to move off {source}", lambda: len(set(cluster.locate(RESOURCE)) - {source}) == 1, 120)
        moved = time.monotonic()
        wait_until("the migration to end", lambda: len(cluster.locate(RESOURCE)) == 1, 60)
        target = _running_on(cluster)
        last_there = _last_tick(cluster, source, boot)
        wait_until(f"{VM} ticking on {target}", lambda: _last_tick(cluster, target, boot) > last_there + 5, 60)
    finally:
        host.box.run("crm_attribute", "--node", source, "--name", "standby", "--update", "off")
    print(f"\ndrain: standby -> running on {target} {moved - began:.1f} s")
    continued = [n for n, b in ticks(cluster.nodes[target], VM) if b == boot]
    assert continued[0] <= last_there + 10  # counting on where it was: the same boot, not a new one
    assert not host.active(VM)
    # and it stays so once the cluster is idle again (no restart after the migration, no move back)
    assert _running_on(cluster) == target and _current_boot(cluster, target) == boot


SPLIT_TRIALS = 10


def test_a_split_never_runs_the_vm_twice_nor_opens_its_volume_twice(rig) -> None:
    cluster, tmp = rig
    took = []
    with Sampler(cluster, tmp / "shared" / f"{VM}.img") as sampler:
        for _ in range(SPLIT_TRIALS):
            node = _running_on(cluster)
            cut = time.monotonic()
            cluster.cut(node)
            wait_until(f"{node} fenced", lambda n=node, c=cut: any(f == n and w > c for f, w in cluster.fenced), 60)
            wait_until(f"{VM} started off {node}", lambda n=node: cluster.locate(RESOURCE) not in ([], [n]), 120)
            took.append(time.monotonic() - cut)
            cluster.heal(node)
            cluster.restart(node)
    print(
        f"\nsplit: {SPLIT_TRIALS} trials, {sampler.samples} samples; cut -> started elsewhere: "
        + " ".join(f"{t:.1f}" for t in took)
        + " s"
    )
    assert sampler.samples > 100 * SPLIT_TRIALS
    assert sampler.twice == []


def test_qemu_refuses_the_volume_held_on_another_node(rig) -> None:
    cluster, _ = rig
    node = _running_on(cluster)
    boot = _current_boot(cluster, node)
    other = cluster.nodes[next(n for n in cluster.nodes if n != node)]
    refused = other.microvm("start", VM, check=False)  # microvm leaves a cluster VM to the cluster
    assert refused.returncode == 1 and f"VM {VM!r} is run by the cluster" in refused.stderr, refused.stderr
    other.systemctl("start", "--no-block", f"microvm@{VM}")  # by hand, behind the cluster's back
    wait_until(
        "the second start to fail", lambda: other.systemctl("is-failed", f"microvm@{VM}", check=False) == "failed", 60
    )
    journal = other.box.run("journalctl", "-u", f"microvm@{VM}", "--no-pager").stdout
    assert 'Failed to get "write" lock' in journal, journal[-3000:]
    other.systemctl("reset-failed", f"microvm@{VM}")
    count = _last_tick(cluster, node, boot)
    wait_until(f"{VM} still ticking on {node}", lambda: _last_tick(cluster, node, boot) > count + 5, 60)
    assert cluster.locate(RESOURCE) == [node]


def test_bad_input_through_the_cluster_is_refused_clearly(rig, shared_store) -> None:
    cluster, tmp = rig
    n1 = cluster.nodes["n1"]

    def validate(*options: str) -> tuple[int, str]:
        argv = ["crm_resource", "--validate", "--class", "ocf", "--provider", "microvm", "--agent", "vm"]
        result = n1.box.run(*argv, *(f"--option={o}" for o in options), check=False)
        return result.returncode, result.stdout + result.stderr

    code, said = validate("name=nosuch", f"shared_storage={SHARED}")
    assert code == 5 and "VM 'nosuch' is not installed on this node" in said, said  # OCF_ERR_INSTALLED

    # the VM with its volume in the state directory, which is each node's own
    local = MIGRATING.format(name=VM, image="local.img") + kernel_settings(shared_store, tmp / "work")
    runner = build_file(shared_store, write_vm(tmp / "work" / "local", local, f"{VM}.toml")).runner
    code, said = validate(f"name={VM}", f"build={runner}", f"shared_storage={SHARED}")
    assert code == 6 and "writes outside the shared storage" in said, said  # OCF_ERR_CONFIGURED
    assert f"microvm.volumes[0].image = /var/lib/microvms/{VM}/local.img" in said, said
    write_vm(n1.rootfs / "etc/microvm/local", local, f"{VM}.toml")
    write_vm(n1.rootfs / "etc/microvm/local", HOST_FILE.format(name=VM), "host.toml")
    refused = n1.microvm("cluster", "apply", "/etc/microvm/local/host.toml", check=False)
    assert refused.returncode == 1 and "is not under cluster.sharedStorage" in refused.stderr, refused.stderr
    assert "microvm.volumes[0].image" in refused.stderr, refused.stderr

    # the fence device removed
    device = f'<primitive id="{FENCE_DEVICE}"/>'
    fence = n1.box.run(
        "cibadmin", "--query", "--scope", "resources", "--xpath", f"//primitive[@id='{FENCE_DEVICE}']"
    ).stdout
    n1.box.run("cibadmin", "--delete", "--xml-text", device)
    try:
        refused = n1.microvm("cluster", "apply", check=False)
        assert refused.returncode == 1 and "no fence device" in refused.stderr, refused.stderr
        result = n1.box.run("crm_resource", "--validate", "-r", RESOURCE, check=False)
        assert result.returncode == 6 and "this cluster has no fence device" in result.stdout, result.stdout
    finally:
        n1.box.run("cibadmin", "--create", "-o", "resources", "--xml-text", fence)
    wait_until("the fence device back", lambda: bool(cluster.locate(FENCE_DEVICE)), 60)
