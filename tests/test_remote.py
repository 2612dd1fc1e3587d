"""Several hosts: copy, deploy and migrate over real SSH between systemd-nspawn containers (sshhosts.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import Host, build_file, kernel_settings, wait_until, write_vm
from sshhosts import MIGRATING, SHARED, STORE, console, ticks, two_hosts

from microvm.store import content_hash

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Two hosts for the module's tests (sshhosts.two_hosts)."""
    if not Path("/sys/fs/cgroup").is_dir() or not shutil.which("systemd-nspawn"):
        pytest.skip("needs systemd-nspawn")
    tmp = tmp_path_factory.mktemp("hosts")
    with two_hosts(tmp) as booted:
        yield booted, tmp


def _vm(shared_store, work: Path, name: str, mem: int = 256) -> Path:
    """A small busybox VM file that prints its memory and boot id."""
    return write_vm(
        work,
        f"""
        [guest]
        hostName = "{name}"
        shell = false
        commands = ['echo "marker: {name} mem $(grep MemTotal /proc/meminfo) boot $(cat /proc/sys/kernel/random/boot_id)"']
        [microvm]
        mem = {mem}
        """
        + kernel_settings(shared_store, work),
        f"{name}.toml",
    )


def _in_store(rootfs: Path) -> set[str]:
    store = rootfs / STORE.relative_to("/")
    return {p.name for p in store.iterdir()}


def test_copy_sends_only_what_is_missing_verified_and_all_or_nothing(hosts, shared_store) -> None:
    (h1, h2), tmp = hosts
    work = tmp / "work"
    runner = build_file(shared_store, _vm(shared_store, work, "cpa")).runner
    closure = [e.name for e in shared_store.in_dependency_order([runner])]
    first = h1.microvm("copy", "--to", "ssh://h2", str(runner)).stdout
    assert re.match(rf"copied {len(closure)} of {len(closure)} entries \(\d+\.\d MB\) to ssh://h2", first), first
    assert set(closure) <= _in_store(h2.rootfs)
    for name in closure:  # the same trees arrived
        assert content_hash(h2.rootfs / STORE.relative_to("/") / name) == content_hash(STORE / name)
    second = h1.microvm("copy", "--to", "ssh://root@h2:22", str(runner)).stdout
    assert second.startswith(f"copied 0 of {len(closure)} entries (0.0 MB)"), second

    # a second VM: its own entries are new on h2, the kernel is not
    other = build_file(shared_store, _vm(shared_store, work, "cpb")).runner
    new = [e.name for e in shared_store.in_dependency_order([other]) if e.name not in closure]
    assert new
    names = "\\n".join(new)
    before = _in_store(h2.rootfs)
    # a corrupted transfer (one bit flipped in the stream) and an interrupted one: refused, nothing left
    flip = "import sys; d = bytearray(sys.stdin.buffer.read()); d[len(d) // 2] ^= 1; sys.stdout.buffer.write(d)"
    for mangle, error in ((f"python3 -c '{flip}'", "arrived corrupted"), ("head -c 100000", "ended early")):
        pipeline = f"printf '{names}' | microvm store send | {mangle} | ssh h2 microvm store receive"
        result = h1.box.run("sh", "-c", pipeline, env=h1.env, check=False)
        assert result.returncode != 0 and error in result.stderr, result.stderr
        assert _in_store(h2.rootfs) == before  # no entry, no temporary directory
    # fetched from h2's side (--from): only the new entries travel
    fetched = h2.microvm("copy", "--from", "h1", str(other)).stdout
    assert fetched.startswith(
        f"copied {len(new)} of {len(new) + len(set(closure) & _closure_names(shared_store, other))}"
    )
    assert set(new) <= _in_store(h2.rootfs)


def _closure_names(store, runner: Path) -> set[str]:
    return {e.name for e in store.in_dependency_order([runner])}


def test_copy_refuses_bad_input_clearly(hosts) -> None:
    (h1, _), _ = hosts
    unreachable = h1.microvm("copy", "--to", "ssh://10.77.0.99:22", "/nonexistent", check=False)
    assert unreachable.returncode == 1 and "not in the store" in unreachable.stderr
    no_vm = h1.microvm("copy", "--to", "h2", "novm", check=False)
    assert no_vm.returncode == 1 and "neither a store path nor a VM installed" in no_vm.stderr
    both = h1.microvm("copy", "novm", check=False)
    assert both.returncode == 1 and "exactly one of --to HOST or --from HOST" in both.stderr


def _boots(host: Host, name: str) -> list[tuple[str, str]]:
    """(MemTotal, boot id) of every boot of ``name`` on its console log."""
    return re.findall(rf"marker: {name} mem MemTotal:\s+(\d+) kB boot (\S+)", console(host, name))


def test_deploy_creates_then_updates_with_the_diff_then_restarts(hosts, shared_store) -> None:
    (h1, h2), tmp = hosts
    file = _vm(shared_store, tmp / "work", "dpl")
    first = h1.microvm("deploy", "h2", str(file)).stdout
    assert "dpl: created" in first, first
    assert h2.states() == {"dpl": "not booted"}
    h2.microvm("start", "dpl")
    wait_until("dpl to boot on h2", lambda: len(_boots(h2, "dpl")) == 1)
    assert h2.active("dpl")
    [(mem1, boot1)] = _boots(h2, "dpl")

    _vm(shared_store, tmp / "work", "dpl", mem=300)
    second = h1.microvm("deploy", "ssh://h2", str(file)).stdout
    assert "dpl: updated" in second and "microvm.mem: 256 -> 300" in second, second
    assert "restart to boot it" in second
    assert h2.states()["dpl"] == "stale"
    assert _boots(h2, "dpl") == [(mem1, boot1)]  # not restarted without -R

    third = h1.microvm("deploy", "-R", "h2", str(file)).stdout
    assert "dpl: restarted" in third, third
    wait_until("dpl to boot again on h2", lambda: _boots(h2, "dpl")[-1:] not in ([], [(mem1, boot1)]))
    mem2, _ = _boots(h2, "dpl")[-1]
    assert int(mem2) > int(mem1)
    assert h2.states()["dpl"] == "current" and h2.active("dpl")
    assert "dpl" not in h1.microvm("list", check=False).stdout  # built on h1, installed only on h2
    h2.microvm("stop", "dpl")


def _qemu_of(host: Host, name: str) -> bool:
    # [x]: the pattern does not match grep's own command line
    pattern = f"microvm@[{name[0]}]{name[1:]}"
    found = host.box.run("sh", "-c", f"grep -l '{pattern}' /proc/[0-9]*/cmdline", check=False).stdout
    return bool(found.strip())


def test_migrate_moves_a_running_vm_live_and_refuses_clearly(hosts, shared_store) -> None:
    (h1, h2), tmp = hosts
    source = tmp / "work" / "src"
    kernel = kernel_settings(shared_store, tmp / "work")
    write_vm(source, MIGRATING.format(name="mig", image=f"{SHARED.name}/mig.img") + kernel, "mig.toml")
    write_vm(source, MIGRATING.format(name="loc", image="loc.img") + kernel, "loc.toml")  # in h1's state directory
    for name in ("mig", "loc"):
        h1.microvm("create", name, "-f", str(source))
        h1.microvm("start", name)
    wait_until("both VMs ticking on h1", lambda: len(ticks(h1, "mig")) > 5 and len(ticks(h1, "loc")) > 5)
    boot = ticks(h1, "mig")[0][1]

    refusals = [
        (("migrate", "mig", "ssh://10.77.0.99"), "cannot reach 10.77.0.99"),
        (("migrate", "--no-copy", "mig", "h2"), "h2 lacks the build of mig"),
        (("migrate", "loc", "h2"), "volume loc.img is not on storage this host shares with the source"),
    ]
    for args, error in refusals:
        refused = h1.microvm(*args, check=False)
        assert refused.returncode == 1 and error in refused.stderr, refused.stderr
        name = args[-2]
        count = len(ticks(h1, name))
        wait_until(f"{name} still ticking on h1", lambda n=name, c=count: len(ticks(h1, n)) > c + 3, timeout=60)
        assert h1.active(name)
    assert not h2.active("mig") and not h2.active("loc")
    assert not list(Path(tmp / "shared").glob(".microvm-migrate-*"))  # the shared-storage markers are gone

    assert _qemu_of(h1, "mig")
    moved = h1.microvm("migrate", "mig", "h2").stdout
    print(f"\n{moved}")
    assert re.search(r"mig: migrated to h2 in \d+ ms \(downtime \d+ ms", moved), moved
    last_here = ticks(h1, "mig")[-1][0]
    wait_until("mig ticking on h2", lambda: any(n > last_here + 5 for n, _ in ticks(h2, "mig")), timeout=60)
    there = ticks(h2, "mig")
    assert {b for _, b in there} == {boot}  # the same boot: no reset
    assert there[0][0] <= last_here + 10  # it went on counting where it was (no restart from 0)
    assert "Linux version" not in console(h2, "mig")  # no kernel booted there
    assert h2.active("mig") and not h1.active("mig") and not _qemu_of(h1, "mig")
    assert h1.states()["mig"] == "not booted" and h2.states()["mig"] == "current"
    proof = subprocess.run(
        ["debugfs", "-R", "cat /proof", tmp / "shared" / "mig.img"], capture_output=True, text=True, check=True
    )
    assert proof.stdout.strip() == "kept-mig"
    for host, name in ((h2, "mig"), (h1, "loc")):
        host.microvm("stop", name)
