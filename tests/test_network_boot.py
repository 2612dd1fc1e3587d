"""Two busybox guests under TCG on the host bridge, all inside namespaces the test creates.

A "host" namespace runs `microvm host network up` (bridge, DHCP + RA, NAT)
and both VMs; an "uplink" namespace sits behind a veth pair. Guest neta (n=1)
also has a qemu user-networking interface with a forwarded port; guest netb
(n=2) has two vCPUs, so its tap is multi-queue. Each guest checks its own
side and prints ``ok: ...``; the test checks the host's side. Teardown must
leave the host namespace as it was.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import addresses_on, build_file, microvm_in, snapshot, wait_for_text, write_vm

from microvm.config import load_host, vm_config

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]

HOST = """
[network.basic]
enable = true
[network.nat]
enable = true
uplink = "up0"
"""

# retry until the peer is up (it boots at the same time), then report once
CHECK = """
check() { what=$1; shift; i=0; until "$@" >/dev/null 2>&1; do i=$((i + 1)); [ $i -ge 150 ] && break; sleep 1; done
  if "$@" >/dev/null 2>&1; then echo "ok: $what"; else echo "FAIL: $what"; fi; }
"""

GUEST = """
[guest]
hostName = "{name}"
shell = false
commands = [
  '''{check}
{checks}
ip addr
echo "queues: $(ls /sys/class/net/eth0/queues | tr '\\n' ' ')"
echo "checks done"''',
]
{extra}
[guest.network.base]
enable = true
n = {n}
[microvm]
mem = 256
vcpu = {vcpu}
"""

NETA_EXTRA = """
[guest.services.www]
type = "oneshot"
command = "mkdir -p /srv/www && echo hello-from-neta > /srv/www/index.html"
[guest.services.httpd]
command = "httpd -f -p 80 -h /srv/www"
after = ["www"]
restart = true
[guest.network.interfaces.usr]
dhcp = false
acceptRA = false
addresses = ["10.0.2.15/24"]
[[microvm.interfaces]]
type = "user"
id = "usr"
mac = "02:00:00:00:10:01"
[[microvm.forwardPorts]]
host = { address = "127.0.0.1", port = 18080 }
guest = { port = 80 }
"""

UPLINK_SERVER = """
import http.server, sys
class Peer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"peer={self.client_address[0].removeprefix('::ffff:')}".encode()
        print(body.decode(), flush=True)
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
class Server(http.server.HTTPServer):
    address_family = __import__("socket").AF_INET6
    def server_bind(self):
        self.socket.setsockopt(__import__("socket").IPPROTO_IPV6, __import__("socket").IPV6_V6ONLY, 0)
        super().server_bind()
Server(("::", 8080), Peer).serve_forever()
"""


def fetch(ns, url: str) -> str:
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=20).read().decode())"
    return ns.run(sys.executable, "-c", code, timeout=60).stdout.strip()


@pytest.fixture
def uplink():
    from netns import netns

    with netns("mvu") as namespace:
        yield namespace


def test_two_guests_on_the_bridge_with_nat_dhcp_and_forwarded_port(shared_store, ns, uplink, tmp_path: Path) -> None:
    # the uplink: a veth pair, the far end in its own namespace with a server that reports who called
    ns.run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", uplink.name)
    ns.run("ip", "address", "add", "10.99.0.1/24", "dev", "up0")
    ns.run("ip", "address", "add", "fd99::1/64", "dev", "up0", "nodad")
    ns.run("ip", "link", "set", "up0", "up")
    uplink.run("ip", "address", "add", "10.99.0.2/24", "dev", "up1")
    uplink.run("ip", "address", "add", "fd99::2/64", "dev", "up1", "nodad")
    uplink.run("ip", "link", "set", "up1", "up")
    server = uplink.popen([sys.executable, "-c", UPLINK_SERVER], stdout=subprocess.PIPE, text=True)
    before = snapshot(ns)

    host_file = write_vm(tmp_path, HOST, "host.toml")
    host = load_host(host_file).config
    microvm_in(ns, "host", "network", "up", str(host_file))

    addresses = {
        name: addresses_on(
            vm_config({"guest": {"hostName": name, "network": {"base": {"enable": True, "n": n}}}}), host
        )
        for name, n in (("neta", 1), ("netb", 2))
    }
    # the documented scheme: VM n gets the n+1-th address after the bridge's, and the EUI-64 of 02:00:00:01:00:0n
    assert addresses == {
        "neta": ["10.213.0.3", "fd12:3456:789a::ff:fe01:1"],
        "netb": ["10.213.0.4", "fd12:3456:789a::ff:fe01:2"],
    }
    a4, a6 = addresses["neta"]
    b4, b6 = addresses["netb"]
    guest_checks = {}
    guest_checks["neta"] = [
        f"check ping4-peer ping -c1 -W1 {b4}",
        f"check ping6-peer ping -c1 -W1 {b6}",
        "check ping4-host ping -c1 -W1 10.213.0.1",
        "check ping6-host ping -c1 -W1 fd12:3456:789a::1",
        'echo "nat4: $(wget -q -O - http://10.99.0.2:8080/)"',
        'echo "nat6: $(wget -q -O - http://[fd99::2]:8080/)"',
    ]
    guest_checks["netb"] = [
        f"check ping4-peer ping -c1 -W1 {a4}",
        f"check ping6-peer ping -c1 -W1 {a6}",
        "check ping4-host ping -c1 -W1 10.213.0.1",
        "check ping6-host ping -c1 -W1 fd12:3456:789a::1",
    ]
    vms: dict[str, subprocess.Popen] = {}
    runners = {}
    try:
        for name, n, vcpu in (("neta", 1, 1), ("netb", 2, 2)):
            file = write_vm(
                tmp_path / name,
                GUEST.format(
                    name=name,
                    n=n,
                    vcpu=vcpu,
                    check=CHECK.strip(),
                    checks="\n".join(guest_checks[name]),
                    extra=NETA_EXTRA if name == "neta" else "",
                ),
            )
            built = build_file(shared_store, file)
            runners[name] = built.runner
            state = tmp_path / "state" / name
            state.mkdir(parents=True, exist_ok=True)
            ns.run(str(built.runner / "bin/tap-up"), cwd=state)
            vms[name] = ns.popen([built.run], cwd=state, stdin=subprocess.DEVNULL)

        consoles = {}
        for name, vm in vms.items():
            consoles[name] = wait_for_text(tmp_path / "state" / name / f"{name}-console.log", "checks done", vm)
        for name, console in consoles.items():
            for line in guest_checks[name]:
                if line.startswith("check "):
                    assert f"ok: {line.split()[1]}" in console, console
            for address in addresses[name]:
                assert f"{address}/" in console, console  # its own fixed (DHCP) and SLAAC address
        # NAT: the uplink sees the host's uplink address, for v4 and v6
        assert "nat4: peer=10.99.0.1" in consoles["neta"]
        assert "nat6: peer=fd99::1" in consoles["neta"]
        # multi-queue tap for two vCPUs: qemu accepted it and the guest sees two queue pairs
        assert "multi_queue" in ns.run("ip", "-d", "link", "show", "vm2").stdout
        assert "rx-0 rx-1" in consoles["netb"] and "rx-1" not in consoles["neta"].split("queues:")[1].split("\n")[0]
        # a TCP port served in the guest, from the host namespace: over the bridge and through qemu's forward
        assert fetch(ns, f"http://{a4}/") == "hello-from-neta"
        assert fetch(ns, "http://127.0.0.1:18080/") == "hello-from-neta"
        leases = (tmp_path / "state" / ".network" / "microvm.leases").read_text()
        assert f"02:00:00:01:00:01 {a4} neta" in leases and f"02:00:00:01:00:02 {b4} netb" in leases
    finally:
        for name, vm in vms.items():
            state = tmp_path / "state" / name
            subprocess.run([runners[name] / "bin/microvm-shutdown"], cwd=state, timeout=120, check=False)
            try:
                vm.wait(timeout=30)
            except subprocess.TimeoutExpired:
                vm.kill()
                vm.wait()
            ns.run(str(runners[name] / "bin/tap-down"), cwd=state)
        server.terminate()
    microvm_in(ns, "host", "network", "down", str(host_file))
    deadline = time.monotonic() + 10
    while snapshot(ns) != before and time.monotonic() < deadline:
        time.sleep(0.2)  # the daemon's exit is seen a little late here
    assert snapshot(ns) == before


ROUTED_GUEST = """
[guest]
hostName = "netr"
shell = false
commands = [
  '''{check}
check ping4-host ping -c1 -W1 10.214.0.1
check ping6-host ping -c1 -W1 fd12:3456:789b::1
check ping4-uplink ping -c1 -W1 10.99.0.2
echo "checks done"''',
]
[guest.services.httpd]
command = "mkdir -p /srv && echo hello-from-netr > /srv/index.html && exec httpd -f -p 80 -h /srv"
[guest.network.base]
enable = true
n = 3
routed.enable = true
[microvm]
mem = 256
"""


def test_routed_guest_reaches_host_and_uplink(shared_store, ns, uplink, tmp_path: Path) -> None:
    """The routed layout: no bridge, static /32 and /128 addresses, everything through the host."""
    ns.run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", uplink.name)
    ns.run("ip", "address", "add", "10.99.0.1/24", "dev", "up0")
    ns.run("ip", "link", "set", "up0", "up")
    uplink.run("ip", "address", "add", "10.99.0.2/24", "dev", "up1")
    uplink.run("ip", "link", "set", "up1", "up")
    before = snapshot(ns)
    host_file = write_vm(
        tmp_path, '[network.routed]\nenable = true\n[network.nat]\nenable = true\nuplink = "up0"\n', "host.toml"
    )
    microvm_in(ns, "host", "network", "up", str(host_file))
    built = build_file(shared_store, write_vm(tmp_path / "netr", ROUTED_GUEST.format(check=CHECK.strip())))
    state = tmp_path / "state" / "netr"
    state.mkdir(parents=True)
    ns.run(str(built.runner / "bin/tap-up"), cwd=state)
    vm = ns.popen([built.run], cwd=state, stdin=subprocess.DEVNULL)
    try:
        console = wait_for_text(state / "netr-console.log", "checks done", vm)
        for what in ("ping4-host", "ping6-host", "ping4-uplink"):
            assert f"ok: {what}" in console, console
        # the host reaches the VM by its routes: the n+1-th addresses after the host's
        assert fetch(ns, "http://10.214.0.5/") == "hello-from-netr"
        assert fetch(ns, "http://[fd12:3456:789b::5]/") == "hello-from-netr"
    finally:
        vm.kill()
        vm.wait()
        ns.run(str(built.runner / "bin/tap-down"), cwd=state)
    microvm_in(ns, "host", "network", "down", str(host_file))
    assert snapshot(ns) == before


def vlans_work() -> bool:
    """Whether this kernel creates VLAN interfaces (the development machines' has no 8021q)."""
    from netns import netns

    with netns("mvv") as probe:
        probe.run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        return (
            probe.run(
                "ip", "link", "add", "link", "v0", "name", "v0.7", "type", "vlan", "id", "7", check=False
            ).returncode
            == 0
        )


TRUNK_HOST = """
{vlan}
[network.bridges.br-dmz]         # unaddressed: layer 2 onto the trunk (or its VLAN)
ports = ["{port}"]
[network.bridges.br-lan]         # addressed, no port
addresses = ["10.60.0.1/24"]
"""
VLAN = """
[network.vlans."trunk0.100"]     # VLAN 100 of the trunk port
link = "trunk0"
id = 100
"""

TRUNK_GUEST = """
[guest]
hostName = "nettrunk"
shell = false
commands = [
  '''{check}
check ping-dmz-peer ping -c1 -W1 10.50.0.2
check ping-lan-bridge ping -c1 -W1 10.60.0.1
echo "checks done"''',
]
[[microvm.interfaces]]
type = "tap"
id = "vmdmz"
mac = "02:00:00:00:20:01"
bridge = "br-dmz"
[[microvm.interfaces]]
type = "tap"
id = "vmlan"
mac = "02:00:00:00:20:02"
bridge = "br-lan"
[guest.network.interfaces.vmdmz]
dhcp = false
acceptRA = false
addresses = ["10.50.0.5/24"]
[guest.network.interfaces.vmlan]
dhcp = false
acceptRA = false
addresses = ["10.60.0.5/24"]
[microvm]
mem = 256
"""


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged-port", "vlan-of-a-trunk"])
def test_two_bridges_each_interface_on_its_own(shared_store, ns, uplink, tmp_path: Path, tagged: bool) -> None:
    """A port to a switch (the uplink namespace; with VLANs it speaks VLAN 100 only tagged): the guest reaches
    the far end through the unaddressed bridge on that port, and the host through the addressed bridge."""
    if tagged and not vlans_work():
        pytest.skip("this kernel cannot create VLAN interfaces (no 802.1Q support): the VLAN path cannot run here")
    ns.run("ip", "link", "add", "trunk0", "type", "veth", "peer", "name", "far0", "netns", uplink.name)
    uplink.run("ip", "link", "set", "far0", "up")
    far = "far0"
    if tagged:
        far = "far0.100"
        uplink.run("ip", "link", "add", "link", "far0", "name", far, "type", "vlan", "id", "100")
    uplink.run("ip", "address", "add", "10.50.0.2/24", "dev", far)
    uplink.run("ip", "link", "set", far, "up")
    port = "trunk0.100" if tagged else "trunk0"
    before = snapshot(ns)
    host_file = write_vm(tmp_path, TRUNK_HOST.format(vlan=VLAN if tagged else "", port=port), "host.toml")
    planned = microvm_in(ns, "host", "network", "up", "--dry-run", str(host_file)).stdout
    assert f"add {port} on bridge br-dmz" in planned and "add bridge br-lan" in planned
    microvm_in(ns, "host", "network", "up", str(host_file))
    if tagged:
        assert "vlan protocol 802.1Q id 100" in ns.run("ip", "-d", "link", "show", port).stdout
    assert "master br-dmz" in ns.run("ip", "link", "show", port).stdout
    assert (
        "scope global" not in ns.run("ip", "-o", "address", "show", "dev", "br-dmz").stdout
    )  # the kernel's fe80:: only
    assert "10.60.0.1/24" in ns.run("ip", "-o", "address", "show", "dev", "br-lan").stdout
    assert microvm_in(ns, "host", "network", "up", "--dry-run", str(host_file)).stdout == ""  # nothing left to do

    file = write_vm(tmp_path / "vm", TRUNK_GUEST.format(check=CHECK.strip()))
    built = build_file(shared_store, file)
    state = tmp_path / "state" / "nettrunk"
    state.mkdir(parents=True)
    ns.run(str(built.runner / "bin/tap-up"), cwd=state)
    try:
        assert "master br-dmz" in ns.run("ip", "link", "show", "vmdmz").stdout
        assert "master br-lan" in ns.run("ip", "link", "show", "vmlan").stdout
        vm = ns.popen([built.run], cwd=state, stdin=subprocess.DEVNULL)
        console = wait_for_text(state / "nettrunk-console.log", "checks done", vm)
        assert "ok: ping-dmz-peer" in console and "ok: ping-lan-bridge" in console, console
        subprocess.run([built.runner / "bin/microvm-shutdown"], cwd=state, timeout=120, check=False)
        vm.wait(timeout=30)
    finally:
        ns.run(str(built.runner / "bin/tap-down"), cwd=state)
    microvm_in(ns, "host", "network", "down", str(host_file))
    assert snapshot(ns) == before


def test_a_kernel_without_vlans_is_a_clear_error(ns, tmp_path: Path) -> None:
    if vlans_work():
        pytest.skip("this kernel creates VLAN interfaces (the VLAN boot test covers them)")
    ns.run("ip", "link", "add", "trunk0", "type", "veth", "peer", "name", "far0")
    host_file = write_vm(tmp_path, TRUNK_HOST.format(vlan=VLAN, port="trunk0.100"), "host.toml")
    failed = microvm_in(ns, "host", "network", "up", str(host_file), check=False)
    assert failed.returncode != 0
    assert "network.vlans.trunk0.100: the kernel refused VLAN 100 on trunk0" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr
