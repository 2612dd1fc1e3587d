"""The host with real systemd: `microvm host apply` in a systemd-nspawn container, then the VMs' lifecycle.

The container boots a Debian rootfs (built once with mmdebstrap, cached as
.tar.zst); it has no network, so the shared store (with the kernel), this
worktree (for the .venv) and the test's files are bound into it at the same paths.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    CACHE,
    REPO,
    STATE,
    Host,
    nspawn_kernel_settings,
    rootfs_tarball,
    unpacked_rootfs,
    wait_until,
    write_vm,
)
from nspawn import _children, container

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]


# alpha is VM 1 on the host's bridge: DHCP gives it 10.213.0.3 (n + 2), which it reports on its console
NET = """
[guest.network.base]
enable = true
n = 1
[guest.services.address]
type = "oneshot"
command = 'for i in $(seq 100); do ip -4 -o addr show | grep -q 10.213. && break; sleep 0.1; done; ip -4 -o addr show'
"""
# a secret only root can read on the host: systemd loads it for the unprivileged runner (LoadCredential=)
SECRET = "alpha-s3cret-under-systemd"
CREDENTIAL = """
[guest.services.secret]
type = "oneshot"
credentials = ["token"]
command = 'echo "secret: $(cat $CREDENTIALS_DIRECTORY/token)"'
[microvm.credentialFiles]
token = "/etc/microvm/token"
"""
VM = """
imports = ["{common}"]
[guest]
shell = {shell}
commands = ['echo "marker: {name} gen {gen} boot $(cat /proc/sys/kernel/random/boot_id)"']
[microvm]
mem = {mem}
"""


@pytest.fixture
def setup(shared_store, tmp_path: Path):
    """The rootfs, the VM files (using the kernel already in the shared store) and the host file."""
    kernel = nspawn_kernel_settings(shared_store, tmp_path)
    work = tmp_path / "work"
    write_vm(work, "[guest]\nshell = false\n" + kernel + "[microvm]\nvcpu = 1\n", "common.toml")
    alpha = VM.format(common="common.toml", name="alpha", gen=1, mem=256, shell="false")
    alpha += "readiness = true\nregisterWithMachined = true\n" + NET
    alpha += CREDENTIAL
    write_vm(work, alpha, "alpha.toml")
    write_vm(work / "src", VM.format(common="../common.toml", name="beta", gen=1, mem=256, shell="true"), "beta.toml")
    host_file = write_vm(
        work,
        f"""
        [microvm]
        stateDir = "{STATE}"
        [microvm.vms.alpha]
        config = "alpha.toml"
        unitOverrides.Service.TimeoutStartSec = "7min"
        [microvm.vms.beta]
        source = "{work / "src"}"
        [network.basic]
        enable = true
        [microvm.host]
        useNotifySockets = true  # alpha says when it has booted; beta is ready as its hypervisor starts
        startupTimeout = 200
        """,
        "host.toml",
    )
    rootfs, ro_binds = unpacked_rootfs(tmp_path)
    (rootfs / "etc/microvm").mkdir(mode=0o700)
    (rootfs / "etc/microvm/token").write_text(SECRET)
    (rootfs / "etc/microvm/token").chmod(0o600)
    return rootfs, work, host_file, [str(CACHE / "store"), str(work)], ro_binds, tmp_path


def test_host_apply_and_vm_lifecycle_under_systemd(setup) -> None:
    rootfs, work, host_file, binds, ro_binds, tmp_path = setup

    # first boot: apply installs units, user, state dir, both VMs, and starts them
    seen: set[str] = set()
    with container(rootfs, binds, ro_binds, tmp_path / "container1.log") as box:
        host = Host(box, rootfs, seen)
        host.box.wait_running()
        applied = host.microvm("host", "apply", str(host_file)).stdout
        assert "create system user microvm" in applied and "install VM alpha" in applied
        assert f"MICROVM_STATE_DIR={STATE}\n" in (rootfs / "etc/default/microvm").read_text()
        assert f"create VM beta from {work / 'src'}" in applied
        for name in ("alpha", "beta"):
            host.wait_booted(name, 1)
            assert host.active(name)
        assert host.microvm("host", "apply", str(host_file)).stdout.strip() == "nothing to change"
        # the host network: bridge, its dnsmasq unit, alpha's tap on the bridge and its fixed address
        assert "network: add bridge microvm" in applied
        assert host.systemctl("is-active", "microvm-dnsmasq-microvm.service") == "active"
        assert "master microvm" in host.box.run("ip", "-o", "link", "show", "vm1").stdout
        wait_until("alpha's DHCP address", lambda: "inet 10.213.0.3/24" in host.console("alpha"))
        assert "10.213.0.3" in host.microvm("list").stdout
        assert host.states() == {"alpha": "current", "beta": "current"}
        user = host.box.run("ps", "-o", "user=", "-p", str(host.main_pid("alpha")), check=False).stdout.strip()
        assert user in ("microvm", ""), user  # ps may be missing from minbase; then the unit says it
        assert host.systemctl("show", "-P", "User", "microvm@alpha.service") == "microvm"
        # credentialFiles: the root-only file reached the guest through LoadCredential= and the credentials disk
        wait_until("alpha's secret", lambda: f"secret: {SECRET}" in host.console("alpha"))
        disk = rootfs / STATE.relative_to("/") / "alpha" / "credentials.img"
        assert disk.stat().st_mode & 0o777 == 0o600 and disk.stat().st_uid == _passwd_uid(rootfs, "microvm")
        assert host.systemctl("show", "-P", "TimeoutStartUSec", "microvm@alpha.service") == "7min"  # unitOverrides
        # it reads its root image as a member of group microvm; other users cannot (issue 15: 2)
        image = host.box.run("readlink", "-f", f"{STATE}/alpha/current").stdout.strip()
        image = next(line for line in (Path(image) / ".references").read_text().splitlines() if "-rootimage-" in line)
        assert host.box.run("stat", "-c", "%a %U %G", image).stdout.split() == ["750", "root", "microvm"]
        # the hardened unit, as systemd rates it (0 safest .. 10): the VMs above booted with it
        exposure = {
            unit: host.box.run("systemd-analyze", "security", "--no-pager", unit).stdout
            for unit in ("microvm@alpha.service", "microvm-tap-interfaces@alpha.service")
        }
        figures = {u: float(re.search(rf"exposure level for {u}: ([0-9.]+)", t).group(1)) for u, t in exposure.items()}
        print(f"\nsystemd-analyze security: {figures}")
        assert figures["microvm@alpha.service"] <= 4.0, exposure["microvm@alpha.service"]
        assert (
            host.systemctl("show", "-P", "TimeoutStopUSec", "microvm@alpha.service") == "3min 20s"
        )  # startupTimeout (TimeoutSec=); the start timeout is the override above
        # registerWithMachined: machinectl sees alpha (a vm, its unit's main process), not beta
        machines = host.box.run("machinectl", "list", "--no-legend").stdout
        assert re.search(r"^alpha\s+vm\s+microvm", machines, re.MULTILINE) and "beta" not in machines, machines
        shown = host.box.run("machinectl", "show", "alpha", "-p", "Class", "-p", "Unit", "-p", "Leader").stdout
        assert {"Class=vm", "Unit=microvm@alpha.service", f"Leader={host.main_pid('alpha')}"} <= set(shown.split())
    # the container's shutdown stopped the VMs gracefully
    for name in ("alpha", "beta"):
        assert f"microvm: {name} stopped cleanly" in host.console(name)

    # second boot: microvms.target starts them without any command
    with container(rootfs, binds, ro_binds, tmp_path / "container2.log") as box:
        host = Host(box, rootfs, seen)
        host.box.wait_running()
        for name in ("alpha", "beta"):
            host.wait_booted(name, 1)
        wait_until("both VMs active", lambda: host.active("alpha") and host.active("beta"))

        # systemctl stop shuts the guest down gracefully and removes booted
        host.systemctl("stop", "microvm@alpha.service")
        log = host.console("alpha")
        assert "microvm: alpha is shutting down" in log and "microvm: alpha stopped cleanly" in log
        assert not (rootfs / STATE.relative_to("/") / "alpha/booted").is_symlink()
        assert host.states()["alpha"] == "not booted"
        assert host.box.run("machinectl", "status", "alpha", check=False).returncode != 0  # unregistered
        # Type=notify: start returns once alpha's guest said READY=1, after its oneshot services, so
        # its DHCP address is on this boot's console already
        assert host.systemctl("show", "-P", "Type", "microvm@alpha.service") == "notify"
        host.microvm("start", "alpha")
        assert "inet 10.213.0.3/24" in host.console("alpha")
        host.wait_booted("alpha", 1)
        # machinectl terminate stops the VM's unit (for good: a stop, not a crash Restart=always undoes)
        host.box.run("machinectl", "terminate", "alpha")
        wait_until("alpha to stop", lambda: not host.active("alpha"), timeout=120)
        host.microvm("start", "alpha")
        assert "alpha" in host.box.run("machinectl", "list", "--no-legend").stdout

        # the console of a VM systemd runs: type into its shell, read the answer, detach with Ctrl-]
        assert "console-42" in host.console_answer("beta", "echo console-$((6 * 7))", "console-42")
        assert "marker: beta gen 1" in host.microvm("logs", "beta").stdout
        assert "beta: running, current" in host.microvm("status", "beta").stdout

        # suspend to disk: the unit stops at once; start resumes the same boot (no new marker: the
        # console log goes on from before the suspend)
        boot = re.findall(r"marker: beta gen 1 boot (\S+)", host.console("beta"))[-1]
        assert "suspended to" in host.microvm("suspend", "beta").stdout
        assert not host.active("beta") and host.states()["beta"] == "suspended"
        host.microvm("start", "beta")
        assert host.active("beta") and host.states()["beta"] == "current"
        host.console_answer("beta", "echo resumed-$(cat /proc/sys/kernel/random/boot_id)", f"resumed-{boot}")
        assert host.console("beta").count("marker: beta") == 1

        # Restart=always: a killed hypervisor comes back
        before = host.main_pid("beta")
        host.systemctl("kill", "--signal=SIGKILL", "microvm@beta.service")
        wait_until("beta to be restarted", lambda: host.active("beta") and host.main_pid("beta") not in (0, before))
        host.wait_booted("beta", 1)

        # update: outdated -> (update) stale -> (update -R) current, running the new build
        write_vm(
            work / "src", VM.format(common="../common.toml", name="beta", gen=2, mem=300, shell="true"), "beta.toml"
        )
        assert host.states()["beta"] == "outdated"
        updated = host.microvm("update", "beta").stdout
        assert "microvm.mem: 256 -> 300" in updated
        assert host.states()["beta"] == "stale"
        assert "microvm.mem: 256 -> 300" in host.microvm("diff", "beta").stdout
        assert "beta: restarted" in host.microvm("-Ru", "beta").stdout
        host.wait_booted("beta", 2)
        assert host.states()["beta"] == "current"
        refused = host.microvm("update", "alpha", check=False)
        assert refused.returncode == 1 and "declared fully" in refused.stderr

        # a fully declared VM that changed is rebuilt and restarted by apply (restartIfChanged)
        write_vm(work, VM.format(common="common.toml", name="alpha", gen=2, mem=256, shell="false"), "alpha.toml")
        assert host.states()["alpha"] == "outdated"
        applied = host.microvm("host", "apply", str(host_file)).stdout
        assert "update VM alpha" in applied and "restart microvm@alpha.service (restartIfChanged)" in applied
        assert "beta" not in applied  # deployed from a source: updates are `microvm update`'s
        host.wait_booted("alpha", 2)
        assert host.states()["alpha"] == "current"

        # remove refuses while running, then cleans up
        refused = host.microvm("remove", "beta", check=False)
        assert refused.returncode == 1 and "is running" in refused.stderr
        host.microvm("stop", "beta")
        host.microvm("remove", "beta")
        assert not (rootfs / STATE.relative_to("/") / "beta").exists()
        assert set(host.states()) == {"alpha"}
        assert re.search(r"inactive|failed", host.systemctl("is-active", "microvm@beta.service", check=False))

        # a VM created by hand is started by systemd as well (its directory belongs to the microvm user)
        write_vm(
            work / "src", VM.format(common="../common.toml", name="gamma", gen=1, mem=256, shell="false"), "gamma.toml"
        )
        host.microvm("create", "gamma", "-f", str(work / "src"))
        host.microvm("start", "gamma")
        host.wait_booted("gamma", 1)
        assert host.states()["gamma"] == "current"

        # beta is still declared with a source: starting it installs it again first (create-once)
        host.systemctl("start", "microvm@beta.service")
        host.wait_booted("beta", 2)
        assert host.states()["beta"] == "current"
        assert (rootfs / STATE.relative_to("/") / "beta").stat().st_uid == (
            rootfs / STATE.relative_to("/")
        ).stat().st_uid


def test_host_network_up_and_down_under_systemd(tmp_path: Path) -> None:
    """`host network up` writes, enables and starts the network's units; again it has nothing to do; down undoes all."""
    if not Path("/sys/fs/cgroup").is_dir() or not shutil.which("systemd-nspawn"):
        pytest.skip("needs systemd-nspawn")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    subprocess.run(["tar", "-C", rootfs, "--zstd", "-xf", rootfs_tarball()], check=True)
    (rootfs / "etc/microvm").mkdir(mode=0o700)
    (rootfs / "etc/microvm/token").write_text(SECRET)
    (rootfs / "etc/microvm/token").chmod(0o600)
    host_file = write_vm(
        tmp_path / "work", "[network.basic]\nenable = true\n[network.nat]\nenable = true\n", "host.toml"
    )
    ro_binds = [str(REPO), str(host_file.parent)]
    if not sys.base_prefix.startswith("/usr"):
        ro_binds.append(sys.base_prefix)
    units = rootfs / "etc/systemd/system"
    names = ("microvm-network.service", "microvm-dnsmasq-microvm.service")
    with container(rootfs, [], ro_binds, tmp_path / "container.log") as box:
        host = Host(box, rootfs, set())
        box.wait_running()
        up = host.microvm("host", "network", "up", str(host_file)).stdout
        assert "add bridge microvm" in up and "systemctl start microvm-dnsmasq-microvm.service (host network)" in up
        for name in names:
            assert host.systemctl("is-active", name) == "active"
            assert (units / "multi-user.target.wants" / name).is_symlink()
        assert host.microvm("host", "network", "up", "--dry-run", str(host_file)).stdout == ""
        down = host.microvm("host", "network", "down", str(host_file)).stdout
        assert "systemctl disable --now microvm-dnsmasq-microvm.service" in down and "remove bridge microvm" in down
        for name in names:
            assert not (units / name).exists() and not (units / "multi-user.target.wants" / name).exists()
            assert host.systemctl("is-active", name, check=False) != "active"
        assert "microvm" not in box.run("ip", "-o", "link", "show").stdout
        assert not (rootfs / "var/lib/microvms/.network.json").exists()


def _passwd_uid(rootfs: Path, user: str) -> int | None:
    entries = [line.split(":") for line in (rootfs / "etc/passwd").read_text().splitlines()]
    return next((int(e[2]) for e in entries if e[0] == user), None)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_run_as_root_drops_the_hypervisor_to_the_microvm_user(setup) -> None:
    """`microvm run` as root, on a host without the microvm user: it is created, the hypervisor runs
    as it, the guest boots, and SIGTERM to `microvm run` shuts the guest down gracefully."""
    rootfs, work, _, binds, ro_binds, tmp_path = setup
    file = write_vm(
        work,
        'imports = ["common.toml"]\n[guest]\nhostName = "drop"\n[guest.services.ticker]\n'
        "command = 'echo ready: drop; ls /data; while :; do sleep 1; done'\n[microvm]\nmem = 256\n"
        # a virtiofs share: virtiofsd stays root, the unprivileged qemu uses its socket (group kvm)
        '[[microvm.shares]]\ntag = "data"\nsource = "data"\nmountPoint = "/data"\nproto = "virtiofs"\n',
        "drop.toml",
    )
    log = rootfs / "var/lib/microvms/drop/drop-console.log"
    (log.parent / "data").mkdir(parents=True)
    (log.parent / "data" / "from-the-host").write_text("")
    with container(rootfs, binds, ro_binds, tmp_path / "container-drop.log") as box:
        host = Host(box, rootfs, set())
        host.box.wait_running()
        assert _passwd_uid(rootfs, "microvm") is None
        run = host.box.popen("microvm", "run", str(file), env=host.env)
        try:
            wait_until("drop's guest", lambda: "ready: drop\nfrom-the-host" in _read(log).replace("\r", ""))
            uid = _passwd_uid(rootfs, "microvm")
            qemu = next(p for p in _children(run.pid) if Path(os.readlink(f"/proc/{p}/exe")).name.startswith("qemu"))
            status = Path(f"/proc/{qemu}/status").read_text()
            uids = [int(u) for u in re.search(r"^Uid:(.*)$", status, re.MULTILINE).group(1).split()]
            print(f"\nqemu started by `microvm run` as root runs with uids {uids} (user microvm: {uid})")
            assert uid is not None and uids == [uid] * 4
            assert log.parent.stat().st_uid == uid
            runner = Path(f"/proc/{qemu}/stat").read_text().rsplit(")", 1)[1].split()[1]  # its parent: microvm run
            os.kill(int(runner), signal.SIGTERM)
            _, stderr = run.communicate(timeout=120)
        finally:
            run.kill()
        assert run.returncode == 0, stderr
        assert "created system user microvm" in stderr
        assert "microvm: drop stopped cleanly" in _read(log)
