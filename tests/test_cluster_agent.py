"""The resource agent ocf:microvm:vm on one real systemd (an nspawn container), run as ocf-tester runs it.

`microvm host apply` of a host file with a cluster VM installs the agent and the VM without starting it;
then each action runs with only ``OCF_RESKEY_*`` in its environment, as Pacemaker runs agents. The
three-node cluster tests (fail-over, drain, split) are in their own module.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from helpers import CACHE, STATE, Host, build_file, nspawn_kernel_settings, unpacked_rootfs, wait_until, write_vm
from nspawn import container

from microvm.cluster import agent

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]

AGENT = "/usr/lib/ocf/resource.d/microvm/vm"
SHARED = "/srv/shared"
VM = """
[guest]
hostName = "{name}"
shell = false
commands = ['{deaf}echo "marker: {name} gen 1 boot $(cat /proc/sys/kernel/random/boot_id)"']
{kernel}[microvm]
vcpu = 1
mem = 256
migratable = true
[[microvm.volumes]]
image = "{image}"
size = 16
"""


@pytest.fixture
def node(shared_store, tmp_path: Path):
    kernel = nspawn_kernel_settings(shared_store, tmp_path)
    work = tmp_path / "work"
    vm = {"name": "c1", "kernel": kernel, "image": f"{SHARED}/c1-var.img", "deaf": ""}
    write_vm(work, VM.format(**vm), "c1.toml")
    # the same VM writing its volume into its state directory: a build the cluster must refuse
    local = build_file(shared_store, write_vm(work, VM.format(**vm | {"image": "var.img"}), "local.toml"))
    # one whose guest ignores the power button: only a hard stop ends it
    deaf = build_file(shared_store, write_vm(work, VM.format(**vm | {"deaf": "kill $(pidof acpid); "}), "deaf.toml"))
    host_file = write_vm(
        work,
        f"""
        [microvm]
        stateDir = "{STATE}"
        [cluster]
        enable = true
        sharedStorage = "{SHARED}"
        requireFencing = false
        [microvm.vms.c1]
        config = "c1.toml"
        cluster = true
        """,
        "host.toml",
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the hypervisor's user creates the volume there
    rootfs, ro_binds = unpacked_rootfs(tmp_path)
    binds = [str(CACHE / "store"), str(work), f"{shared}:{SHARED}"]
    with container(rootfs, binds, ro_binds, tmp_path / "container.log") as box:
        host = Host(box, rootfs, set())
        box.wait_running()
        yield host, host_file, local.runner, deaf.runner


def ocf(host: Host, action: str, **params: str) -> tuple[int, str]:
    """The agent's exit code and stderr for ``action``, with the parameters as Pacemaker passes them."""
    env = {f"OCF_RESKEY_{k}": v for k, v in {"name": "c1", "shared_storage": SHARED, **params}.items()}
    result = host.box.run(AGENT, action, env={"OCF_RESKEY_require_fencing": "false", **env}, check=False)
    return result.returncode, result.stderr


def test_agent_actions_on_systemd(node) -> None:
    host, host_file, local_runner, deaf_runner = node
    applied = host.microvm("host", "apply", str(host_file)).stdout
    assert f"write {AGENT}" in applied and "install VM c1" in applied
    installed = host.rootfs / AGENT.lstrip("/")
    assert installed.stat().st_mode & 0o777 == 0o755 and installed.stat().st_uid == 0
    # installed, never started by the host: not in the autostart target, no install unit
    assert not host.active("c1") and "c1" not in host.systemctl("show", "-P", "Wants", "microvms.target")
    assert host.microvm("host", "apply", str(host_file)).stdout.strip() == "nothing to change"
    refused = host.microvm("start", "c1", check=False)
    assert refused.returncode != 0 and "VM 'c1' is run by the cluster" in refused.stderr
    assert "pcs resource enable microvm-c1" in refused.stderr and not host.active("c1")

    assert ocf(host, "meta-data")[0] == agent.SUCCESS
    assert ocf(host, "monitor")[0] == agent.NOT_RUNNING
    assert ocf(host, "validate-all") == (agent.SUCCESS, "")
    assert ocf(host, "reload")[0] == agent.ERR_UNIMPLEMENTED

    # bad input: each refused with its own code and a reason Pacemaker shows
    code, err = ocf(host, "validate-all", name="nosuch")
    assert code == agent.ERR_INSTALLED and "ocf-exit-reason:VM 'nosuch' is not installed on this node" in err
    code, err = ocf(host, "validate-all", build="/nonexistent/runner")
    assert code == agent.ERR_INSTALLED and "is not in this node's store" in err and "microvm cluster apply" in err
    code, err = ocf(host, "validate-all", build=str(local_runner))
    assert code == agent.ERR_CONFIGURED and f"microvm.volumes[0].image = {STATE}/c1/var.img" in err, err
    code, err = ocf(host, "validate-all", shared_storage="/srv")  # /srv is not a mount point in the node
    assert code == agent.ERR_INSTALLED and "/srv is not a mount point" in err and "hint: mount it" in err, err
    code, err = ocf(host, "validate-all", require_fencing="maybe")
    assert code == agent.ERR_CONFIGURED and "is not a boolean" in err
    assert ocf(host, "start", build="/nonexistent/runner")[0] == agent.ERR_INSTALLED
    assert not host.active("c1")

    # a start that cannot finish within Pacemaker's timeout (a unit slow to start) fails with its reason before it
    slow = "/run/systemd/system/microvm@c1.service.d/90-slow.conf"
    host.box.run(
        "sh",
        "-c",
        f"mkdir -p $(dirname {slow}) && printf '[Service]\\nExecStartPre=/bin/sleep 30\\n' > {slow} && systemctl daemon-reload",
    )
    began = time.monotonic()
    code, err = ocf(host, "start", CRM_meta_timeout="8000")
    assert code == agent.ERR_GENERIC and "VM 'c1' did not start within 3 s" in err, err
    assert time.monotonic() - began < 8
    assert ocf(host, "stop")[0] == agent.SUCCESS
    host.box.run("sh", "-c", f"rm {slow} && systemctl daemon-reload")

    # start -> monitor 0 (qemu says running) -> stop -> monitor 7
    code, err = ocf(host, "start")
    assert code == agent.SUCCESS, err + host.box.run("journalctl", "-u", "microvm@c1", "--no-pager", check=False).stdout
    assert ocf(host, "monitor")[0] == agent.SUCCESS
    assert host.systemctl("show", "-P", "Restart", "microvm@c1.service") == "no"  # Pacemaker restarts it
    assert ocf(host, "reload-agent", require_fencing="false")[0] == agent.SUCCESS  # no restart: it runs on
    assert ocf(host, "monitor")[0] == agent.SUCCESS
    # another client holding QMP (it serves one at a time) for longer than one query's 5 s: not a failure
    hold = "import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(4096); "
    holder = host.box.popen(
        sys.executable, "-c", hold + "print('held', flush=True); time.sleep(8)", f"{STATE}/c1/c1.sock"
    )
    assert holder.stdout.readline().strip() == "held"
    began = time.monotonic()
    code, err = ocf(host, "monitor", CRM_meta_timeout="30000")
    assert code == agent.SUCCESS and time.monotonic() - began > 4, err
    holder.wait()
    host.wait_booted("c1", 1)
    assert ocf(host, "start")[0] == agent.SUCCESS  # already running: start is idempotent
    assert ocf(host, "stop")[0] == agent.SUCCESS
    assert "microvm: c1 stopped cleanly" in host.console("c1")
    assert ocf(host, "monitor")[0] == agent.NOT_RUNNING
    assert ocf(host, "stop")[0] == agent.SUCCESS  # stopped already
    # a parameter stop does not use is no reason to fail it (a failed stop gets the node fenced)
    assert ocf(host, "stop", require_fencing="maybe", shared_storage="srv")[0] == agent.SUCCESS

    # the VM's hypervisor running outside its unit: monitor 1, start refuses a second copy, stop ends it
    host.box.run(
        "systemd-run",
        "--unit=stray",
        "--collect",
        f"--working-directory={STATE}/c1",
        "sh",
        "-c",
        'ln -sfn "$(readlink current)" booted && exec current/bin/microvm-run',  # booted: as `microvm run` marks it
    )
    wait_until("the stray hypervisor", lambda: ocf(host, "monitor")[0] == agent.ERR_GENERIC, timeout=30)
    code, err = ocf(host, "start")
    assert code == agent.ERR_GENERIC and "runs outside its unit microvm@c1.service" in err, err
    assert not host.active("c1")
    code, err = ocf(host, "stop")
    assert code == agent.SUCCESS and "runs outside its unit microvm@c1.service: stopping it hard" in err, err
    assert ocf(host, "monitor")[0] == agent.NOT_RUNNING

    # qemu killed -> monitor 1 (failed, not stopped); stop clears it -> 7
    assert ocf(host, "start")[0] == agent.SUCCESS
    host.box.run("kill", "-KILL", str(host.main_pid("c1")))
    wait_until("the unit to notice", lambda: not host.active("c1"), timeout=30)
    code, err = ocf(host, "monitor")
    assert code == agent.ERR_GENERIC and "failed" in err, err
    assert not host.active("c1")  # Restart=no: systemd left it to the cluster
    assert ocf(host, "stop")[0] == agent.SUCCESS
    assert ocf(host, "monitor")[0] == agent.NOT_RUNNING

    # a guest that ignores the power button: stop kills it once the timeout less the margin has passed
    # (start installs the build it is given)
    assert ocf(host, "start", build=str(deaf_runner))[0] == agent.SUCCESS
    assert host.box.run("readlink", f"{STATE}/c1/current").stdout.strip() == str(deaf_runner)
    host.wait_booted("c1", 1)
    began = time.monotonic()
    code, err = ocf(host, "stop", CRM_meta_timeout="12000")
    took = time.monotonic() - began
    assert code == agent.SUCCESS and "did not shut down within 7 s: killing it" in err, err
    assert 7 <= took < 12, took
    assert ocf(host, "monitor")[0] == agent.NOT_RUNNING
    assert "stopped cleanly" not in host.console("c1").split("marker: c1")[-1]
