"""Several hosts: copy, deploy over real SSH between systemd-nspawn containers.

Each "host" is a container booted from the cached test rootfs (with sshd), in
its own network namespace, wired to a bridge in a namespace of the test. The
test generates the host and client keys. h1 has the shared test store (the
builds); h2 has an empty store at the same path and no build inputs.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE, REPO, build_file, write_vm
from netns import netns
from nspawn import container
from test_host_systemd import Host, rootfs_tarball, wait_for

from microvm.store import content_hash

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]

HOSTS = ("h1", "h2")
STORE = CACHE / "store"
# The shared storage, at one path on every host: inside the state directory of the VM that migrates, as
# its unit may write only there (ProtectSystem=strict; a host mounts its NFS/Ceph volume there too).
SHARED = Path("/var/lib/microvms/mig/shared")
WRAPPER = f"""#!/bin/sh
export MICROVM_STORE={STORE} MICROVM_ACCEL=tcg
exec {REPO}/.venv/bin/microvm "$@"
"""


def _keys(directory: Path, name: str) -> tuple[str, str]:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key], check=True)
    return key.read_text(), (directory / f"{name}.pub").read_text()


def _prepare(rootfs: Path, index: int, client: tuple[str, str], host_key: tuple[str, str], known: str) -> None:
    """sshd's host key, root's client key, authorized_keys, known_hosts and ssh config for the names h1, h2."""
    ssh = rootfs / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "id_ed25519").write_text(client[0])
    (ssh / "id_ed25519").chmod(0o600)
    (ssh / "authorized_keys").write_text(client[1])
    (ssh / "known_hosts").write_text(known)
    (ssh / "config").write_text(
        "".join(f"Host {h}\n  HostName 10.77.0.{i}\n" for i, h in enumerate(HOSTS, 1)) + "StrictHostKeyChecking yes\n"
    )
    for old in (rootfs / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    (rootfs / "etc/ssh/ssh_host_ed25519_key").write_text(host_key[0])
    (rootfs / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
    (rootfs / "etc/ssh/ssh_host_ed25519_key.pub").write_text(host_key[1])
    (rootfs / "etc/hostname").write_text(f"{HOSTS[index - 1]}\n")
    wrapper = rootfs / "usr/local/bin/microvm"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    (rootfs / STORE.relative_to("/")).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """h1 and h2, booted, sshd running, each able to ssh to the other (and itself) by name."""
    if not Path("/sys/fs/cgroup").is_dir() or not shutil.which("systemd-nspawn"):
        pytest.skip("needs systemd-nspawn")
    tmp = tmp_path_factory.mktemp("hosts")
    keys = tmp / "keys"
    keys.mkdir()
    client = _keys(keys, "client")
    host_keys = [_keys(keys, h) for h in HOSTS]
    known = "".join(f"10.77.0.{i} {key[1]}" for i, key in enumerate(host_keys, 1))
    shared = tmp / "shared"  # stands in for NFS/Ceph: the same directory at the same path on every host
    shared.mkdir()
    shared.chmod(0o777)  # the hypervisors run as user microvm
    ro_binds = [str(REPO)] + ([sys.base_prefix] if not sys.base_prefix.startswith("/usr") else [])
    with contextlib.ExitStack() as stack:
        bridge = stack.enter_context(netns("mvh"))
        bridge.run("ip", "link", "add", "br0", "type", "bridge")
        bridge.run("ip", "link", "set", "br0", "up")
        booted = []
        for i, name in enumerate(HOSTS, 1):
            ns = stack.enter_context(netns("mvh"))
            bridge.run("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
            bridge.run("ip", "link", "set", name, "master", "br0", "up")
            ns.run("ip", "addr", "add", f"10.77.0.{i}/24", "dev", "eth0")
            ns.run("ip", "link", "set", "eth0", "up")
            rootfs = tmp / name / "rootfs"
            rootfs.mkdir(parents=True)
            subprocess.run(["tar", "-C", rootfs, "--zstd", "-xf", rootfs_tarball()], check=True)
            _prepare(rootfs, i, client, host_keys[i - 1], known)
            binds = [f"{shared}:{SHARED}"] + ([str(STORE), str(tmp / "work")] if name == "h1" else [])
            (tmp / "work").mkdir(exist_ok=True)
            box = stack.enter_context(container(rootfs, binds, ro_binds, tmp / f"{name}.log", netns=ns.name))
            booted.append(Host(box, rootfs, set()))
        for host in booted:
            host.box.wait_running()
            host.env["PATH"] = "/usr/local/bin:" + host.env["PATH"]
            host.systemctl("start", "ssh.service")
            host.microvm("host", "apply", str(_host_file(host.rootfs)))
        for host in booted:
            wait_for("ssh between the hosts", lambda h=host: _ssh_ok(h), timeout=60)
        yield booted, tmp


def _host_file(rootfs: Path) -> Path:
    """An empty host file: apply installs the units, the microvm user and the state directory."""
    write_vm(rootfs / "etc/microvm", "[microvm]\n", "host.toml")
    return Path("/etc/microvm/host.toml")


def _ssh_ok(host: Host) -> bool:
    return all(host.box.run("ssh", h, "true", check=False).returncode == 0 for h in HOSTS)


def _kernel(shared_store, work: Path) -> str:
    """guest.kernel settings for the kernel already in the shared store (the hosts cannot download)."""
    kernel = build_file(shared_store, write_vm(work / "probe", "[guest]\nhostName = 'probe'\n")).kernel
    return f'[guest.kernel]\nimage = "{kernel.boot_image}"\nmodulesDir = "{kernel.modules_dir}"\n'


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
        + _kernel(shared_store, work),
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


def _console(host: Host, name: str) -> str:
    log = host.rootfs / "var/lib/microvms" / name / f"{name}-console.log"
    return log.read_text(errors="replace") if log.exists() else ""


def _boots(host: Host, name: str) -> list[tuple[str, str]]:
    """(MemTotal, boot id) of every boot of ``name`` on its console log."""
    return re.findall(rf"marker: {name} mem MemTotal:\s+(\d+) kB boot (\S+)", _console(host, name))


def test_deploy_creates_then_updates_with_the_diff_then_restarts(hosts, shared_store) -> None:
    (h1, h2), tmp = hosts
    file = _vm(shared_store, tmp / "work", "dpl")
    first = h1.microvm("deploy", "h2", str(file)).stdout
    assert "dpl: created" in first, first
    assert h2.states() == {"dpl": "not booted"}
    h2.microvm("start", "dpl")
    wait_for("dpl to boot on h2", lambda: len(_boots(h2, "dpl")) == 1)
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
    wait_for("dpl to boot again on h2", lambda: _boots(h2, "dpl")[-1:] not in ([], [(mem1, boot1)]))
    mem2, _ = _boots(h2, "dpl")[-1]
    assert int(mem2) > int(mem1)
    assert h2.states()["dpl"] == "current" and h2.active("dpl")
    assert "dpl" not in h1.microvm("list", check=False).stdout  # built on h1, installed only on h2
    h2.microvm("stop", "dpl")


MIGRATING = """
[guest]
hostName = "{name}"
shell = false
[guest.services.ticker]
command = 'echo kept-{name} > /data/proof && sync; i=0; while :; do echo "tick $i $(cat /proc/sys/kernel/random/boot_id)"; i=$((i+1)); sleep 0.1; done'
[microvm]
mem = 256
migratable = true
[[microvm.volumes]]
image = "{image}"
mountPoint = "/data"
size = 16
"""


def _ticks(host: Host, name: str) -> list[tuple[int, str]]:
    return [(int(n), boot) for n, boot in re.findall(r"tick (\d+) (\S+)", _console(host, name))]


def _qemu_of(host: Host, name: str) -> bool:
    # [x]: the pattern does not match grep's own command line
    pattern = f"microvm@[{name[0]}]{name[1:]}"
    found = host.box.run("sh", "-c", f"grep -l '{pattern}' /proc/[0-9]*/cmdline", check=False).stdout
    return bool(found.strip())


def test_migrate_moves_a_running_vm_live_and_refuses_clearly(hosts, shared_store) -> None:
    (h1, h2), tmp = hosts
    source = tmp / "work" / "src"
    kernel = _kernel(shared_store, tmp / "work")
    write_vm(source, MIGRATING.format(name="mig", image=f"{SHARED.name}/mig.img") + kernel, "mig.toml")
    write_vm(source, MIGRATING.format(name="loc", image="loc.img") + kernel, "loc.toml")  # in h1's state directory
    for name in ("mig", "loc"):
        h1.microvm("create", name, "-f", str(source))
        h1.microvm("start", name)
    wait_for("both VMs ticking on h1", lambda: len(_ticks(h1, "mig")) > 5 and len(_ticks(h1, "loc")) > 5)
    boot = _ticks(h1, "mig")[0][1]

    refusals = [
        (("migrate", "mig", "ssh://10.77.0.99"), "cannot reach 10.77.0.99"),
        (("migrate", "--no-copy", "mig", "h2"), "h2 lacks the build of mig"),
        (("migrate", "loc", "h2"), "volume loc.img is not on storage this host shares with the source"),
    ]
    for args, error in refusals:
        refused = h1.microvm(*args, check=False)
        assert refused.returncode == 1 and error in refused.stderr, refused.stderr
        name = args[-2]
        ticks = len(_ticks(h1, name))
        wait_for(f"{name} still ticking on h1", lambda n=name, t=ticks: len(_ticks(h1, n)) > t + 3, timeout=60)
        assert h1.active(name)
    assert not h2.active("mig") and not h2.active("loc")
    assert not list(Path(tmp / "shared").glob(".microvm-migrate-*"))  # the shared-storage markers are gone

    assert _qemu_of(h1, "mig")
    moved = h1.microvm("migrate", "mig", "h2").stdout
    print(f"\n{moved}")
    assert re.search(r"mig: migrated to h2 in \d+ ms \(downtime \d+ ms", moved), moved
    last_here = _ticks(h1, "mig")[-1][0]
    wait_for("mig ticking on h2", lambda: any(n > last_here + 5 for n, _ in _ticks(h2, "mig")), timeout=60)
    there = _ticks(h2, "mig")
    assert {b for _, b in there} == {boot}  # the same boot: no reset
    assert there[0][0] <= last_here + 10  # it went on counting where it was (no restart from 0)
    assert "Linux version" not in _console(h2, "mig")  # no kernel booted there
    assert h2.active("mig") and not h1.active("mig") and not _qemu_of(h1, "mig")
    assert h1.states()["mig"] == "not booted" and h2.states()["mig"] == "current"
    proof = subprocess.run(
        ["debugfs", "-R", "cat /proof", tmp / "shared" / "mig.img"], capture_output=True, text=True, check=True
    )
    assert proof.stdout.strip() == "kept-mig"
    for host, name in ((h2, "mig"), (h1, "loc")):
        host.microvm("stop", name)
