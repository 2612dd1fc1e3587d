"""Debian guests: the package tree, the declared system, and real boots under TCG.

The package tree (mmdebstrap) is a store entry in the shared test store, so
only the first run pays for it. Boots happen inside a private network
namespace; the guest is reached through qemu user networking's hostfwd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    BOOT_TIMEOUT,
    CLOSED_PORT,
    DEBIAN_PACKAGES,
    DEBIAN_SECRET,
    SSH_PORT,
    WEB_PORT,
    build_file,
    exposure,
    microvm,
    write_debian_vm,
    write_vm,
)
from notify import FakeSystemd

from microvm.config import load_vm
from microvm.errors import ConfigErrors, MicrovmError
from microvm.guest.debian import Accounts, Layer, _service_units
from microvm.model.options import VMConfig
from microvm.runner.build import build_vm
from microvm.store import Store

pytestmark = pytest.mark.xdist_group("boot")  # one worker: the package tree is built once, boots do not compete


def _store_contents(store: Store, host: str) -> set[str]:
    """Entries (complete or being built) that a build of VM ``host`` could add: its own and package trees.

    Other entries are left out: the shared store may gain them from other tests meanwhile.
    """
    return {
        p.name
        for p in store.root.iterdir()
        if p.name.removeprefix(".tmp-").split("-", 1)[-1].startswith("debian-") or f"-{host}" in p.name
    }


# --- config and bad input (no boot) ------------------------------------------------


def test_mounts_and_store_shorthands_expand_visibly(tmp_path: Path) -> None:
    file = write_vm(
        tmp_path,
        """
        [guest]
        hostName = "mnt"
        [guest.mounts.cni]
        volume.sizeGB = 1
        [guest.mounts.persist]
        mountpoint = "/persist"
        share.enable = true
        share.proto = "9p"
        [guest.store.readwrite]
        enable = true
        """,
    )
    result = microvm("eval", str(file))
    assert result.returncode == 0, result.stderr
    config = load_vm(file).config.microvm
    volumes = {v.image: v for v in config.volumes}
    assert volumes["cni.img"].mountPoint == "/var/lib/cni" and volumes["cni.img"].size == 1024
    assert volumes["cni.img"].label == "cni"
    assert volumes["store-rw.img"].size == 5000
    assert config.writableStoreOverlay == volumes["store-rw.img"].mountPoint
    (share,) = config.shares
    assert (share.tag, share.source, share.mountPoint, share.proto) == ("persist", "persist", "/persist", "9p")
    assert "cni.img" in result.stdout and "persist" in result.stdout


@pytest.mark.parametrize(
    "body, named",
    [
        ("[guest.users.alice]\nuid = 1000\n", ["guest.users", 'base = "debian"']),
        ('base = "debian"\n[guest.files."/etc/../../escape"]\ntext = "x"\n', ["guest.files", "'..'"]),
        ("[guest.mounts.x]\nvolume.enable = true\nshare.enable = true\n", ["mounts.x", "not both"]),
    ],
    ids=["debian-only-on-busybox", "path-outside-the-tree", "volume-and-share"],
)
def test_check_rejects(tmp_path: Path, body: str, named: list[str]) -> None:
    file = write_vm(tmp_path, f'[guest]\nhostName = "bad"\n{body}')
    result = microvm("check", str(file))
    assert result.returncode != 0
    for text in named:
        assert text in result.stderr


@pytest.mark.parametrize(
    "body, error, named",
    [
        (
            '[guest.files."/etc/motd"]\nsource = "missing/motd.txt"\n',
            ConfigErrors,
            ["missing/motd.txt", 'guest.files."/etc/motd".source'],
        ),
        ('packages = ["busybox", "no-such-package-microvm"]\n', MicrovmError, ["no-such-package-microvm"]),
    ],
    ids=["missing-file-source", "unknown-package"],
)
def test_bad_input_is_named_and_nothing_is_written(
    tmp_path: Path, shared_store: Store, body: str, error: type[Exception], named: list[str]
) -> None:
    file = write_vm(tmp_path, f'[guest]\nhostName = "bad"\nbase = "debian"\n{body}')
    before = _store_contents(shared_store, "bad")
    with pytest.raises(error) as info:
        build_file(shared_store, file)
    for text in named:
        assert text in str(info.value)
    if error is ConfigErrors:
        assert str(file) in str(info.value)  # the file that names the source
    assert "busybox" not in str(info.value)  # only what is wrong is named
    assert _store_contents(shared_store, "bad") == before  # no entry, no temporary directory


def test_a_multi_line_command_stays_one_exec_start_line() -> None:
    """Each line of the script is part of one quoted ExecStart= word: none becomes a directive of its own."""
    command = 'echo "a\\b" 50%\nExecStartPre=/bin/evil $HOME\r\nreboot'
    vm = VMConfig.model_validate(
        {"guest": {"hostName": "g", "base": "debian", "services": {"a": {"command": command}}}}
    )
    layer = Layer()
    _service_units(vm, layer)
    content, *_ = layer.files["etc/systemd/system/a.service"]
    unit = content.decode().splitlines()
    assert [line for line in unit if line.startswith("Exec")] == [
        'ExecStart=/bin/sh -c "echo \\"a\\\\b\\" 50%%\\nExecStartPre=/bin/evil $$HOME\\r\\nreboot"'
    ]


def test_declared_groups_are_created_after_the_users_and_must_agree_with_the_guest(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nusers:x:100:\n")
    (tmp_path / "etc/shadow").write_text("root:*:1::::::\n")

    def guest(groups: dict) -> VMConfig:
        users = {"bob": {"groups": ["media", "users"]}}
        return VMConfig.model_validate({"guest": {"hostName": "g", "base": "debian", "users": users, "groups": groups}})

    accounts = Accounts(tmp_path)
    assert accounts.add(guest({"media": {}, "users": {}}))["bob"][0] == 1000  # the user's id comes first
    assert (accounts.gid("media"), accounts.gid("users")) == (1001, 100)
    assert ["media", "x", "1001", "bob"] in accounts.group and ["users", "x", "100", "bob"] in accounts.group
    with pytest.raises(MicrovmError, match=r"guest.groups.users.gid: the guest already has group users with gid 100"):
        Accounts(tmp_path).add(guest({"media": {}, "users": {"gid": 500}}))
    with pytest.raises(MicrovmError, match=r"guest.users.bob.groups: the guest has no group 'media'"):
        Accounts(tmp_path).add(guest({}))


# --- builds ------------------------------------------------------------------------


def test_rebuild_is_a_cache_hit_and_a_new_package_a_new_entry(
    tmp_path: Path, shared_store: Store, ssh_key: Path
) -> None:
    first = build_file(shared_store, write_debian_vm(tmp_path / "a", ssh_key))
    complete = lambda: {name for name in _store_contents(shared_store, "deb-test") if not name.startswith(".")}
    before = complete()  # (a temporary may be another worker's build in progress, or finish meanwhile)
    again = build_file(shared_store, write_debian_vm(tmp_path / "a", ssh_key))
    assert again.runner == first.runner and again.system == first.system
    assert complete() == before

    more = build_file(shared_store, write_debian_vm(tmp_path / "b", ssh_key, packages=[*DEBIAN_PACKAGES, "less"]))
    assert more.system != first.system
    old = json.loads((first.runner / "share/microvm/packages.json").read_text())
    new = json.loads((more.runner / "share/microvm/packages.json").read_text())
    assert "openssh-server" in old and "systemd" in old
    assert set(new) - set(old) == {"less"}
    assert {name: version for name, version in new.items() if name != "less"} == old


def test_lock_pins_versions_and_reports_drift(tmp_path: Path, shared_store: Store, ssh_key: Path) -> None:
    built = build_file(shared_store, write_debian_vm(tmp_path / "a", ssh_key))
    versions = json.loads((built.runner / "share/microvm/packages.json").read_text())
    lock = tmp_path / "lock" / "packages.json"
    lock.parent.mkdir()
    lock.write_text(json.dumps(versions))
    file = write_debian_vm(tmp_path / "lock", ssh_key, name="deb-lock")
    file.write_text(file.read_text().replace('base = "debian"', 'base = "debian"\ndebian.lock = "packages.json"'))
    locked = build_file(shared_store, file)
    assert json.loads((locked.runner / "share/microvm/packages.json").read_text()) == versions

    lock.write_text(json.dumps({**versions, "busybox": "1:0.0-microvm"}))
    before = _store_contents(shared_store, "deb-lock")
    with pytest.raises(MicrovmError) as info:
        build_file(shared_store, file)
    assert "busybox=1:0.0-microvm" in str(info.value)
    assert _store_contents(shared_store, "deb-lock") == before


def test_units_and_accounts_in_the_system_tree(tmp_path: Path, shared_store: Store, ssh_key: Path) -> None:
    built = build_file(shared_store, write_debian_vm(tmp_path, ssh_key))
    root = built.system
    assert os.readlink(root / "sbin/init").endswith("systemd")
    assert (root / "etc/systemd/system/timers.target.wants/tick.timer").is_symlink()
    assert not (root / "etc/systemd/system/multi-user.target.wants/tick.service").exists()
    assert "OnCalendar=minutely" in (root / "etc/systemd/system/tick.timer").read_text()
    web = (root / "etc/systemd/system/web.service").read_text()
    assert "User=www-data" in web and "After=prepare.service" in web
    prepare = (root / "etc/systemd/system/prepare.service").read_text()
    assert "After=getty@tty1.service" in prepare and "RemainAfterExit=yes" in prepare
    # a multi-line command is one ExecStart= line; a timer's oneshot goes inactive after each run
    assert '-c "mkdir -p /srv/www\\necho' in prepare
    assert "RemainAfterExit" not in (root / "etc/systemd/system/tick.service").read_text()
    assert "MACAddress=02:00:00:00:00:42" in (root / "etc/systemd/network/10-eth0.network").read_text()
    assert "tcp dport { 22, 8000 } accept" in (root / "etc/nftables.conf").read_text()
    # the store keeps every file root's; the image gives the guest's owners back
    assert (root / "etc/microvm-test").stat().st_uid == 0
    assert built.root_image is not None
    assert "Uid: 1234   Gid: 2345  Access: 0640" in _image_inode(built.root_image, "/etc/microvm-test")
    assert "media:x:2345:alice\n" in (root / "etc/group").read_text()
    assert "alice:x:1234:1234::/home/alice:/bin/bash" in (root / "etc/passwd").read_text()
    assert "Uid: 1234   Gid: 1234" in _image_inode(built.root_image, "/home/alice/.ssh/authorized_keys")
    assert not list((root / "etc/ssh").glob("ssh_host_*"))  # never shared between VMs through the store
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", "web.service", "tick.timer", "prepare.service"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and not verify.stderr, verify.stderr


def _image_inode(image: Path, path: str) -> str:
    """dump.erofs's account of ``path`` in the image: owner, group, mode."""
    return subprocess.run(["dump.erofs", f"--path={path}", image], check=True, capture_output=True, text=True).stdout


# --- boots -------------------------------------------------------------------------


class Guest:
    """A `microvm run` of a Debian VM in a namespace, driven over SSH."""

    def __init__(self, ns, file: Path, state: Path, key: Path, notify: Path | None = None) -> None:
        self.ns, self.key, self.name = ns, key.with_suffix(""), "deb-test"
        self.workdir = state / self.name
        (self.workdir / f"{self.name}-console.log").unlink(missing_ok=True)  # not the last boot's prompt
        self.log = open(state.parent / f"run-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "MICROVM_STATE_DIR": str(state)}
        if notify is not None:
            env["NOTIFY_SOCKET"] = str(notify)  # as systemd runs a Type=notify service
        self.started = time.monotonic()
        self.process = ns.popen(
            [sys.executable, "-m", "microvm", "run", str(file)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    @property
    def console(self) -> str:
        log = self.workdir / f"{self.name}-console.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def wait_for_login(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while "login:" not in self.console:
            assert self.process.poll() is None, f"the VM exited:\n{self.console}"
            assert time.monotonic() < deadline, f"no login prompt:\n{self.console}"
            time.sleep(0.5)
        print(f"{self.name}: login prompt {time.monotonic() - self.started:.1f} s after `microvm run`")

    def ssh(self, user: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [
            "ssh", "-i", str(self.key), "-p", str(SSH_PORT), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            f"{user}@127.0.0.1", command,
        ]  # fmt: skip
        deadline = time.monotonic() + 90  # sshd may come up a little after the login prompt
        while True:
            result = self.ns.run(*argv, check=False, timeout=60)
            if result.returncode != 255 or time.monotonic() > deadline:
                break
            time.sleep(1)
        if check:
            assert result.returncode == 0, f"{command}: {result.stderr}\n{self.console[-3000:]}"
        return result

    def poweroff(self) -> None:
        self.ssh("root", "systemctl poweroff --no-block")
        try:
            assert self.process.wait(timeout=BOOT_TIMEOUT) == 0, self.console
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


@pytest.mark.boot
def test_debian_guest_serves_web_and_ssh_and_keeps_state(
    tmp_path: Path, ns, ssh_key: Path, shared_store: Store
) -> None:
    directory, state = tmp_path / "vm", tmp_path / "state"
    file = write_debian_vm(directory, ssh_key)
    shared = state / "deb-test" / "shared"
    shared.mkdir(parents=True)
    (shared / "from-host").write_text("written by the host\n")

    systemd = FakeSystemd(tmp_path / "notify")
    guest = Guest(ns, file, state, ssh_key, notify=systemd.path)
    guest.wait_for_login()
    assert "root (automatic login)" in guest.console
    # microvm.readiness: the guest's unit after multi-user.target said so, through the runner
    assert systemd.wait_for("READY=1", BOOT_TIMEOUT), systemd.messages
    assert guest.ssh("root", "systemctl show -p Result --value microvm-ready").stdout == "success\n"
    assert guest.ssh("alice", "id -un; id -u; id -Gn").stdout.split() == ["alice", "1234", "alice", "users", "media"]
    assert guest.ssh("alice", "cat /etc/microvm-test").stdout == "declared file, round 1\n"
    # microvm.credentialFiles: LoadCredential= and EnvironmentFile= from the credentials disk, not the store
    assert guest.ssh("alice", "cat seen").stdout == f"{DEBIAN_SECRET}-env {DEBIAN_SECRET}\n"
    assert guest.ssh("root", "stat -c %a /run/microvm/credentials").stdout == "700\n"
    assert guest.ssh("root", "ls /sys/class/net; ip -6 addr show dev uplink0").stdout == "lo\nuplink0\n"
    built = build_file(shared_store, file)  # what `microvm run` built: a cache hit
    store_grep = subprocess.run(
        ["grep", "-rlF", DEBIAN_SECRET, built.runner, built.system], capture_output=True, check=False
    )
    assert store_grep.returncode == 1, store_grep.stdout
    web = ns.run(
        "curl", "-sf", "--retry", "30", "--retry-all-errors", "--retry-delay", "1", f"http://127.0.0.1:{WEB_PORT}/"
    )
    assert web.stdout == "served-by-deb-test\n"
    out = guest.ssh("root", "systemctl is-active nftables web; cat /var/lib/shared/from-host; cat /etc/timezone").stdout
    assert out.split("\n")[:4] == ["active", "active", "written by the host", "Europe/Berlin"]
    # a port the firewall does not allow is dropped even though something listens there
    guest.ssh("root", "systemd-run --unit probe busybox httpd -f -p 9000 -h /srv/www")
    assert guest.ssh("root", "busybox wget -q -O - http://127.0.0.1:9000/").stdout == "served-by-deb-test\n"
    blocked = ns.run("curl", "-s", "-m", "5", f"http://127.0.0.1:{CLOSED_PORT}/", check=False)
    assert blocked.returncode != 0 and "served" not in blocked.stdout
    guest.ssh(
        "root",
        "echo kept > /var/lib/data/volume-file; echo from-guest > /var/lib/shared/from-guest;"
        " mkdir -p /opt/installed && echo overlay > /opt/installed/file; sync",
    )
    assert (shared / "from-guest").read_text() == "from-guest\n"
    guest.poweroff()
    machine_id = load_vm(file).config.guest.machineId
    journal = subprocess.run(
        ["journalctl", "-D", str(state / "deb-test/journal" / machine_id), "-u", "web.service", "-o", "cat"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "a small web server" in journal.stdout  # systemd's "Started web.service - a small web server."

    # rebuild with a changed declaration and the system shared from the host store instead of an image,
    # then boot again: the volume and the writable overlay keep their data
    (directory / "files/marker.txt").write_text("declared file, round 2\n")
    file = write_debian_vm(directory, ssh_key, shared_store=True)
    built = build_file(shared_store, file)
    assert built.root_image is None
    source = built.runner / "share/microvm/virtiofs/ro-store/source"
    assert source.read_text().strip() == str(built.system)
    guest = Guest(ns, file, state, ssh_key)
    guest.wait_for_login()
    out = guest.ssh("root", "cat /etc/microvm-test /var/lib/data/volume-file /opt/installed/file").stdout
    assert out == "declared file, round 2\nkept\noverlay\n"
    # the shared system is read-only even for the guest's root
    assert (
        "Read-only file system"
        in guest.ssh("root", "mount -t virtiofs ro-store /mnt && touch /mnt/x", check=False).stderr
    )
    # no clean shutdown needed: the namespace's processes are killed when the test ends


SECRET_HASH = "$6$microvm-test$PlantedHashThatNoOtherUserMaySee0123456789"
SECRET_TEXT = "planted-private-file-text-4711"
SECRET_VM = f"""
[guest]
hostName = "deb-secret"
base = "debian"
packages = ["openssh-server", "busybox", "nftables"]  # the package tree of the other tests
[guest.users.root]
hashedPassword = "{SECRET_HASH}"
[guest.files."/etc/microvm-private"]
text = "{SECRET_TEXT}"
mode = "0600"
[microvm]
storeDiskErofsFlags = []  # uncompressed: a secret in the image would be found by the search below
"""


def test_secrets_reach_the_guest_and_no_other_user(tmp_path: Path) -> None:
    """A password hash and a private file are in the guest's image, and no other user of the host can
    read them or change what the VM uses: not in the store, not in the state directory (issue 15: 2, 3)."""
    write_vm(tmp_path / "src" / "deb-secret", SECRET_VM)
    debug = {**os.environ, "MICROVM_DEBUG": "1"}  # logs every command it runs
    created = microvm("create", "deb-secret", "--source", str(tmp_path / "src"), timeout=1800, env=debug)
    assert created.returncode == 0, created.stderr
    assert "run: " in created.stderr
    assert SECRET_HASH not in created.stdout + created.stderr and SECRET_TEXT not in created.stdout + created.stderr
    runner = (tmp_path / "state" / "deb-secret" / "current").resolve()
    vm_json = (runner / "share/microvm/vm.json").read_text()
    assert SECRET_HASH not in vm_json and SECRET_TEXT not in vm_json
    store = Store(Path(os.environ["MICROVM_STORE"]))
    closure = store.closure([runner])
    system = next(p for p in closure if p.name.endswith("-system-deb-secret"))
    image = next(p for p in closure if p.name.endswith("-rootimage-deb-secret")) / "root.erofs"
    assert SECRET_HASH in (system / "etc/shadow").read_text()
    assert (system / "etc/microvm-private").read_text() == SECRET_TEXT
    assert "Gid: 42  Access: 0640" in _image_inode(
        image, "/etc/shadow"
    )  # the guest's own shadow group and mode, given back in the image
    for secret in (SECRET_HASH, SECRET_TEXT):
        writable, readable = exposure([*closure, tmp_path / "state"], secret.encode())
        print(
            f"{len(closure)} store entries: {len(writable)} world-writable, {len(readable)} hold {secret!r} readable by all"
        )
        assert (writable, readable) == ([], [])


def test_a_declared_file_is_never_written_through_a_symlink_out_of_the_tree(tmp_path: Path) -> None:
    """/var/run is a symlink to /run in Debian: writing there at build time would write the host's /run (15: 3)."""
    host_file = Path("/run/microvm-test-escape")
    escape = SECRET_VM.replace('"/etc/microvm-private"', f'"/var{host_file}"').replace("deb-secret", "deb-escape")
    file = write_vm(tmp_path, escape)
    try:
        with pytest.raises(MicrovmError, match="/var/run is a symlink"):
            build_vm(Store(Path(os.environ["MICROVM_STORE"])), load_vm(file).config)
        assert not host_file.exists()
    finally:
        host_file.unlink(missing_ok=True)
