"""A real three-node Pacemaker/Corosync cluster of systemd-nspawn containers, for tests and benchmarks.

The nodes n1-n3 are the containers of sshhosts.py (sshd, root's keys, each in its own network
namespace on a bridge in a namespace of its own) booted from a rootfs that adds Pacemaker and
Corosync. Each node boots an unpacked copy of its own (unpacking takes ~1.5 s, less than the
plumbing a read-only rootfs with --volatile=overlay would need for the per-node keys), so a node
keeps its disk across a restart as a real machine does. The nodes share the test store (every build
is on every node), SHARED (standing in for NFS/Ceph) and FENCE.

Fencing is real: Pacemaker runs the fence agent AGENT in a node, which writes a request into FENCE;
a thread of the test process carries it out (cgroup.kill of the node's container, a power loss) and
answers, and the agent returns once the node is dead.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from helpers import HOST_PACKAGES, ROOTFS_HOOK, Host, rootfs_tarball, unpacked_rootfs, wait_until, write_vm
from netns import NetNS
from nspawn import container
from sshhosts import STORE, Keys, bridge, ssh_ok, sshd_up, ticks, wire

NODES = ("n1", "n2", "n3")
ADDRESSES = {name: f"10.78.0.{i}" for i, name in enumerate(NODES, 1)}
SHARED = Path("/srv/microvm-shared")
FENCE = Path("/srv/microvm-test-fence")  # the fence agent's requests to the test process, and the answers
AGENT = Path("/usr/sbin/fence_microvm_test")
PACKAGES = [*HOST_PACKAGES, "pacemaker", "pacemaker-cli-utils", "corosync"]
HOOK = f'{ROOTFS_HOOK} && rm -f "$1/etc/hostname"'  # mmdebstrap copies this machine's
FENCE_DEVICE = "fence-test"
FORMED_TIMEOUT = 120

COROSYNC = """totem {{
    version: 2
    cluster_name: microvm-test
    transport: knet
    token: 1000
    crypto_cipher: aes256
    crypto_hash: sha256
}}

nodelist {{
{nodes}}}

quorum {{
    provider: corosync_votequorum
}}

logging {{
    to_syslog: yes
}}
"""
# corosync refuses `node { name: ...` on one line ("Extra characters after opening bracket")
COROSYNC_NODE = """    node {{
        name: {name}
        nodeid: {id}
        ring0_addr: {address}
    }}
"""

# dc-deadtime 2s: quorate in ~5 s instead of ~25 s. startup-fencing off: the nodes boot at once on a
# loaded machine, and one a little late must not be fenced before it joins. Resources stick where they
# run (as usual for VMs): a node coming back does not pull them over.
CIB = f"""<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="opt-stonith-enabled" name="stonith-enabled" value="true"/>
        <nvpair id="opt-stonith-action" name="stonith-action" value="off"/>
        <nvpair id="opt-no-quorum-policy" name="no-quorum-policy" value="stop"/>
        <nvpair id="opt-startup-fencing" name="startup-fencing" value="false"/>
      </cluster_property_set>
    </crm_config>
    <rsc_defaults>
      <meta_attributes id="rsc-options">
        <nvpair id="rsc-options-resource-stickiness" name="resource-stickiness" value="100"/>
      </meta_attributes>
    </rsc_defaults>
    <nodes/>
    <resources>
      <primitive id="{FENCE_DEVICE}" class="stonith" type="{AGENT.name}">
        <instance_attributes id="{FENCE_DEVICE}-attributes">
          <nvpair id="{FENCE_DEVICE}-hosts" name="pcmk_host_list" value="{" ".join(NODES)}"/>
        </instance_attributes>
        <operations>
          <op id="{FENCE_DEVICE}-monitor" name="monitor" interval="60s"/>
        </operations>
      </primitive>
    </resources>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""

# The fence-agents protocol: options as name=value lines on stdin (or -o ACTION -n NODE), exit 0 for
# success; status exits 0 for on, 2 for off.
FENCE_AGENT = f'''#!/usr/bin/python3
"""Fences a test node: asks the test process, through files in {FENCE}, to power its container off."""
import os, sys, time, uuid

METADATA = """<?xml version="1.0" ?>
<resource-agent name="{AGENT.name}" shortdesc="Powers a test node's container off">
<longdesc>The test process kills the node's container (cgroup.kill) and answers once it is dead.</longdesc>
<parameters>
<parameter name="action" unique="0" required="1"><getopt mixed="-o, --action=[action]"/>
<content type="string" default="reboot"/><shortdesc lang="en">Fencing action</shortdesc></parameter>
<parameter name="port" unique="0" required="0"><getopt mixed="-n, --plug=[node]"/>
<content type="string"/><shortdesc lang="en">The node to fence</shortdesc></parameter>
</parameters>
<actions>
<action name="on" automatic="0"/><action name="off"/><action name="reboot"/><action name="status"/>
<action name="list"/><action name="monitor"/><action name="metadata"/><action name="validate-all"/>
</actions>
</resource-agent>"""


def options():
    if sys.argv[1:]:
        args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
        return {{"action": args.get("-o"), "port": args.get("-n")}}
    return dict(line.strip().split("=", 1) for line in sys.stdin if "=" in line)


def ask(action, node):
    """Hand the request to the test process; its answer is the exit code."""
    name = uuid.uuid4().hex
    with open(f"{FENCE}/tmp/{{name}}", "w") as request:
        request.write(f"{{action}} {{node}}\\n")
    os.rename(f"{FENCE}/tmp/{{name}}", f"{FENCE}/requests/{{name}}")
    answer = f"{FENCE}/answers/{{name}}"
    deadline = time.monotonic() + 50
    while not os.path.exists(answer):
        if time.monotonic() > deadline:
            sys.exit("the test process did not answer")
        time.sleep(0.05)
    with open(answer) as f:
        return int(f.read())


opts = options()
action = opts.get("action") or "reboot"
node = opts.get("port") or opts.get("plug") or opts.get("nodename")
if action == "metadata":
    print(METADATA)
elif action in ("list", "list-status"):
    print("\\n".join({list(NODES)!r}))
elif action in ("monitor", "validate-all"):
    sys.exit(0 if os.path.isdir("{FENCE}/requests") else 1)
elif action in ("off", "on", "reboot", "status") and node:
    sys.exit(ask(action, node))
else:
    sys.exit(f"{AGENT.name}: cannot {{action}} {{node or 'without a node'}}")
'''


# a host file declaring one cluster VM, the same on every node
HOST_FILE = f"""
[cluster]
enable = true
sharedStorage = "{SHARED}"
[microvm.vms.{{name}}]
config = "{{name}}.toml"
cluster = true
"""


def _ids(rootfs: Path, database: str, name: str) -> int:
    """The numeric id of ``name`` in the rootfs's /etc/passwd or /etc/group."""
    return next(int(f[2]) for f in (line.split(":") for line in (rootfs / "etc" / database).open()) if f[0] == name)


def _configure(rootfs: Path, authkey: bytes) -> None:
    """Corosync's configuration and key, the seeded CIB, the fence agent."""
    nodes = "".join(COROSYNC_NODE.format(name=n, id=i, address=ADDRESSES[n]) for i, n in enumerate(NODES, 1))
    (rootfs / "etc/corosync/corosync.conf").write_text(COROSYNC.format(nodes=nodes))
    key = rootfs / "etc/corosync/authkey"
    key.write_bytes(authkey)
    key.chmod(0o400)
    cib = rootfs / "var/lib/pacemaker/cib/cib.xml"
    cib.write_text(CIB)
    cib.chmod(0o600)
    os.chown(cib, _ids(rootfs, "passwd", "hacluster"), _ids(rootfs, "group", "haclient"))
    agent = rootfs / AGENT.relative_to("/")
    agent.write_text(FENCE_AGENT)
    agent.chmod(0o755)


class Cluster:
    """The running nodes, what the fence agent carried out, and power and network of each node."""

    def __init__(self, tmp: Path, br: NetNS, fence: Path) -> None:
        self.tmp, self.bridge, self.fence = tmp, br, fence
        self.nodes: dict[str, Host] = {}
        self.fenced: list[tuple[str, float]] = []  # (node, time.monotonic() when it was dead)
        self.cut_off: set[str] = set()
        self._setup: dict[str, tuple[Path, NetNS, list[str], list[str]]] = {}
        self._running: dict[str, contextlib.ExitStack] = {}
        self._boots = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._fencer = threading.Thread(target=self._serve_fencing, name="fence", daemon=True)
        self._fencer.start()

    # --- power and network ---

    def add(self, name: str, rootfs: Path, ns: NetNS, binds: list[str], ro_binds: list[str]) -> None:
        """Boot a new node from ``rootfs`` in ``ns``."""
        self._setup[name] = (rootfs, ns, binds, ro_binds)
        self._boot(name)

    def _boot(self, name: str) -> None:
        rootfs, ns, binds, ro_binds = self._setup[name]
        self._boots += 1
        stack = contextlib.ExitStack()
        log = self.tmp / f"{name}-{self._boots}.log"
        box = stack.enter_context(container(rootfs, binds, ro_binds, log, netns=ns.name))
        self._running[name] = stack
        if name in self.nodes:
            self.nodes[name].box = box
        else:
            self.nodes[name] = Host(box, rootfs, set())

    def _power_off(self, name: str) -> bool:
        """Kill the node's container; whether it was running."""
        with self._lock:
            stack = self._running.pop(name, None)
            if stack is None:
                return False
            try:
                self.nodes[name].box.power_off()
            finally:
                stack.close()  # the container's process and cgroup go even when powering off failed
            return True

    def running(self, name: str) -> bool:
        return name in self._running

    def crash(self, name: str) -> None:
        """Power loss: every process of the node dies at once."""
        assert self._power_off(name), f"{name} is not running"

    def restart(self, name: str, timeout: float = FORMED_TIMEOUT) -> None:
        """Boot the node again (powering it off first if it runs) and wait until it is online in the cluster."""
        self._power_off(name)
        # the cluster must have seen it go and fenced it: a fence still coming would kill the new boot
        wait_until(f"{name} fenced and offline", lambda: self._down_clean(name), timeout)
        self.settle(timeout)
        with self._lock:
            self._boot(name)
        sshd_up(self.nodes[name])
        wait_until(f"{name} back in the cluster", lambda: self.online() >= {name}, timeout)

    def cut(self, name: str) -> None:
        """Take the node's link off the bridge: it still runs, but reaches no other node."""
        self.bridge.run("ip", "link", "set", name, "nomaster")
        self.cut_off.add(name)

    def heal(self, name: str) -> None:
        self.bridge.run("ip", "link", "set", name, "master", "br0")
        self.cut_off.discard(name)

    def close(self) -> None:
        """Stop the fence thread and power off every node, also when one fails (the failures are raised after)."""
        self._stop.set()
        self._fencer.join()
        errors = []
        for name in list(self._running):
            try:
                self._power_off(name)
            except Exception as exc:  # noqa: BLE001 - the next node's container must go all the same
                errors.append(exc)
        if errors:
            raise ExceptionGroup("powering the nodes off", errors)

    # --- the cluster's view ---

    def crm_mon(self, name: str) -> ET.Element | None:
        """crm_mon's XML status as node ``name`` sees it; None where Pacemaker does not answer."""
        result = self.nodes[name].box.run("crm_mon", "-1", "--output-as=xml", check=False)
        return ET.fromstring(result.stdout) if result.returncode == 0 else None

    def view(self) -> ET.Element | None:
        """The status as a quorate node that is not cut off sees it."""
        for name in NODES:
            if self.running(name) and name not in self.cut_off:
                status = self.crm_mon(name)
                dc = status.find("summary/current_dc") if status is not None else None
                if dc is not None and dc.get("with_quorum") == "true":
                    return status
        return None

    def online(self) -> set[str]:
        """The nodes that are full members (online, their controller joined)."""
        status = self.view()
        if status is None:
            return set()
        return {
            n.get("name")
            for n in status.iterfind("nodes/node")
            if (n.get("online"), n.get("pending")) == ("true", "false")
        }

    def _down_clean(self, name: str) -> bool:
        status = self.view()
        node = status.find(f"nodes/node[@name='{name}']") if status is not None else None
        return node is not None and node.get("online") == "false" and node.get("unclean") == "false"

    def settle(self, timeout: float = FORMED_TIMEOUT) -> None:
        """Wait until the cluster has no action left to do (fencing, starts, stops)."""
        observer = next(n for n in NODES if self.running(n) and n not in self.cut_off)
        self.nodes[observer].box.run("crm_resource", "--wait", f"--timeout={int(timeout)}s", timeout=timeout + 30)

    def locate(self, resource: str) -> list[str]:
        """The nodes the cluster runs ``resource`` on."""
        status = self.view()
        found = status.find(f".//resource[@id='{resource}']") if status is not None else None
        if found is None or found.get("active") != "true":
            return []
        return [n.get("name") for n in found.iterfind("node")]

    # --- the fence agent's requests ---

    def _serve_fencing(self) -> None:
        requests = self.fence / "requests"
        while not self._stop.wait(0.05):
            for request in sorted(requests.iterdir()):
                action, node = request.read_text().split()
                answer = self.fence / "tmp" / f"answer-{request.name}"
                try:
                    code = self._carry_out(action, node)
                except Exception:  # noqa: BLE001 - the agent fails; we go on (a dead thread: later fences time out)
                    traceback.print_exc()
                    code = 1
                answer.write_text(str(code))
                answer.rename(self.fence / "answers" / request.name)
                request.unlink()

    def _carry_out(self, action: str, node: str) -> int:
        """Exit code of the fence agent for ``action`` on ``node``: 0 done (status: on), 2 off, 1 failed."""
        if node not in NODES:
            return 1
        if action == "status":
            return 0 if self.running(node) else 2
        with self._lock:
            if action in ("off", "reboot"):
                self._power_off(node)
                self.fenced.append((node, time.monotonic()))
            if action in ("on", "reboot") and not self.running(node):
                self._boot(node)
        return 0


@contextlib.contextmanager
def three_nodes(tmp: Path, packages: list[str] = PACKAGES) -> Iterator[Cluster]:
    """n1, n2 and n3 booted from a rootfs with ``packages``, sshd running, a quorate cluster with all three online
    and the fence device started."""
    keys = Keys(tmp / "keys", ADDRESSES)
    shared = tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the hypervisors run as user microvm
    fence = tmp / "fence"
    for sub in ("requests", "answers", "tmp"):
        (fence / sub).mkdir(parents=True)
    authkey = os.urandom(256)
    tarball = rootfs_tarball(packages, HOOK)
    with contextlib.ExitStack() as stack:
        br = bridge(stack, "mvc")
        namespaces = {name: wire(stack, br, "mvc", name, address) for name, address in ADDRESSES.items()}
        cluster = Cluster(tmp, br, fence)  # its fence thread runs from here: closed whatever fails next
        stack.callback(cluster.close)  # before the namespaces go, which would kill the containers' processes
        for name in NODES:
            rootfs, ro_binds = unpacked_rootfs(tmp / name, tarball)
            keys.install(rootfs, name)
            _configure(rootfs, authkey)
            binds = [f"{shared}:{SHARED}", str(STORE), f"{fence}:{FENCE}"]
            cluster.add(name, rootfs, namespaces[name], binds, ro_binds)
        for host in cluster.nodes.values():
            sshd_up(host)
        wait_until("the cluster to form", lambda: cluster.online() == set(NODES), FORMED_TIMEOUT)
        wait_until("the fence device to start", lambda: bool(cluster.locate(FENCE_DEVICE)), FORMED_TIMEOUT)
        for host in cluster.nodes.values():
            wait_until("ssh between the nodes", lambda h=host: ssh_ok(h, NODES), timeout=60)
        yield cluster


def declare(cluster: Cluster, name: str, vm_text: str) -> str:
    """The VM ``name`` (its file ``vm_text``) as a cluster VM: the host file on every node, `microvm host apply`
    on each, `microvm cluster apply` on n1; what cluster apply printed."""
    for host in cluster.nodes.values():
        write_vm(host.rootfs / "etc/microvm", vm_text, f"{name}.toml")
        write_vm(host.rootfs / "etc/microvm", HOST_FILE.format(name=name), "host.toml")
        host.microvm("host", "apply", "/etc/microvm/host.toml")
    return cluster.nodes[NODES[0]].microvm("cluster", "apply").stdout


def boots(cluster: Cluster, name: str) -> dict[str, set[str]]:
    """The boot ids of the guest of ``name`` (sshhosts.MIGRATING's ticker) on each node's console log."""
    found = {node: {boot for _, boot in ticks(host, name)} for node, host in cluster.nodes.items()}
    return {node: ids for node, ids in found.items() if ids}
