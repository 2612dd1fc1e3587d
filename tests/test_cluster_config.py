"""The cluster's configuration side: the agent's meta-data, the host file's cluster options and their checks,
the resources a host file asks for, and `microvm cluster apply` writing them with Pacemaker's own cibadmin
into a CIB file (``CIB_file``: every Pacemaker tool works on it as on a live cluster) that crm_verify accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import kernel_settings, write_vm
from typer.testing import CliRunner

from microvm.cli import show
from microvm.cli.app import app
from microvm.cluster import agent, pacemaker, resources
from microvm.cluster import plan as cluster_plan
from microvm.config import load_host
from microvm.errors import ConfigErrors, MicrovmError
from microvm.host import apply as host_apply
from microvm.host import lifecycle, systemd, units
from microvm.host.plan import WriteFile
from microvm.model.options import HostConfig
from microvm.store import Store

pacemaker_tools = pytest.mark.skipif(not shutil.which("cibadmin"), reason="needs pacemaker-cli-utils")


# --- the agent's meta-data -------------------------------------------------------------


def test_meta_data_names_every_action_and_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.run("meta-data", {}) == agent.SUCCESS
    root = ET.fromstring(capsys.readouterr().out)
    assert root.tag == "resource-agent" and root.get("name") == "vm" and root.findtext("version") == "1.1"
    actions = {a.get("name"): a.attrib for a in root.iterfind("./actions/action")}
    assert set(actions) == {
        "start", "stop", "monitor", "migrate_to", "migrate_from", "meta-data", "validate-all", "reload-agent"
    }  # fmt: skip
    assert set(actions) - {"meta-data"} == set(agent.ACTIONS)  # every action it advertises, it carries out
    assert actions["monitor"]["interval"] == "10s" and all(a["timeout"].endswith("s") for a in actions.values())
    parameters = {p.get("name"): p for p in root.iterfind("./parameters/parameter")}
    assert set(parameters) == {"name", "build", "shared_storage", "require_fencing"}
    assert parameters["name"].get("required") == "1" and parameters["name"].get("unique-group") == "name"
    assert parameters["require_fencing"].find("content").attrib == {"type": "boolean", "default": "true"}
    # changing these reloads the agent instead of restarting the VM
    assert {name for name, p in parameters.items() if p.get("reloadable") == "1"} == {
        "shared_storage",
        "require_fencing",
    }
    for parameter in parameters.values():
        assert parameter.findtext("shortdesc") and parameter.findtext("longdesc")


def test_the_installed_agent_runs_with_an_empty_environment(tmp_path: Path) -> None:
    """The script `host apply` installs: Pacemaker runs it with almost no environment; it brings the host's."""
    script = tmp_path / "vm"
    script.write_text(units.ocf_agent(tmp_path / "state dir's", tmp_path / "store"))
    script.chmod(0o755)
    described = subprocess.run(["env", "-i", str(script), "meta-data"], capture_output=True, text=True, check=False)
    assert described.returncode == 0 and ET.fromstring(described.stdout).get("name") == "vm", described.stderr
    exported = subprocess.run(
        ["env", "-i", "sh", "-c", f'sed "s/^exec .*/env/" {script} | sh'], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    assert f"MICROVM_STATE_DIR={tmp_path}/state dir's" in exported and f"MICROVM_STORE={tmp_path}/store" in exported
    assert any(line.startswith("PATH=") and "/usr/bin" in line for line in exported)
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout


def test_unknown_action_and_missing_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.run("promote", {}) == agent.ERR_UNIMPLEMENTED
    assert agent.run("validate-all", {}) == agent.ERR_CONFIGURED
    assert "ocf-exit-reason:the parameter name (the VM's name) is not set" in capsys.readouterr().err
    bad = {"OCF_RESKEY_name": "c1", "OCF_RESKEY_shared_storage": "srv"}
    assert agent.run("validate-all", bad) == agent.ERR_CONFIGURED
    assert "shared_storage='srv' is not an absolute path" in capsys.readouterr().err
    assert agent.run("start", {"OCF_RESKEY_name": "c1", "OCF_RESKEY_require_fencing": "maybe"}) == agent.ERR_CONFIGURED
    assert "require_fencing='maybe' is not a boolean (Pacemaker's: true/false, yes/no" in capsys.readouterr().err
    assert agent.run("migrate_to", {"OCF_RESKEY_name": "c1"}) == agent.ERR_GENERIC
    assert "no migration target" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["", "we b", "../c1"])
def test_stop_and_monitor_of_a_name_no_vm_can_have(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing of that name can run: stopped (a failed stop would get the node fenced), with the reason shown."""
    env = {"OCF_RESKEY_name": name} if name else {}
    assert agent.run("stop", env) == agent.SUCCESS
    assert agent.run("monitor", env) == agent.NOT_RUNNING
    assert capsys.readouterr().err.count("ocf-exit-reason:") == 2


def test_stop_keeps_a_margin_for_the_hard_kill() -> None:
    def grace(ms: str) -> float:
        return agent.Params.of({"OCF_RESKEY_name": "c1", "OCF_RESKEY_CRM_meta_timeout": ms}).stop_grace()

    assert grace("12000") == 7 and grace("180000") == 162 and grace("6000") == 3
    assert agent.Params.of({"OCF_RESKEY_name": "c1"}).timeout == agent.DEFAULT_TIMEOUT


# --- fencing, nodes --------------------------------------------------------------------

CIB = """<cib><configuration><crm_config><cluster_property_set id="o">{props}</cluster_property_set></crm_config>
<nodes/><resources>{resources}</resources><constraints/></configuration><status/></cib>"""
STONITH = '<primitive id="fence" class="stonith" type="fence_microvm_test"/>'
DISABLED = STONITH.replace("/>", '><meta_attributes id="m"><nvpair id="r" name="target-role" value="Stopped"/>'
                           "</meta_attributes></primitive>")  # fmt: skip
WATCHDOG = '<nvpair id="w" name="stonith-watchdog-timeout" value="{}"/>'


@pytest.mark.parametrize(
    ("props", "found", "problem"),
    [
        ("", STONITH, None),
        ('<nvpair id="s" name="stonith-enabled" value="false"/>', STONITH, "fencing is disabled"),
        ('<nvpair id="s" name="stonith-enabled" value="off"/>', STONITH, "fencing is disabled"),
        ('<nvpair id="s" name="stonith-enabled" value="true"/>', "", "no fence device"),
        ("", f'<group id="g">{STONITH}</group>', None),
        # a disabled fence device fences nothing; diskless SBD fences without one
        ("", DISABLED, "every fence device of this cluster is disabled"),
        (WATCHDOG.format("10s"), "", None),
        (WATCHDOG.format("-1"), "", None),
        (WATCHDOG.format("0"), "", "no fence device"),
        ('<nvpair id="s" name="stonith-enabled" value="false"/>' + WATCHDOG.format("10s"), "", "fencing is disabled"),
    ],
)
def test_fencing_problem(props: str, found: str, problem: str | None) -> None:
    said = pacemaker.fencing_problem(ET.fromstring(CIB.format(props=props, resources=found)))
    assert said == problem if problem is None else problem in said


def test_running_on_reads_crm_mon() -> None:
    status = ET.fromstring(
        """<pacemaker-result><resources>
        <resource id="microvm-a" resource_agent="ocf:microvm:vm" active="true"><node name="n2" id="2"/></resource>
        <resource id="microvm-b" resource_agent="ocf:microvm:vm" active="false"/>
        <group id="g"><resource id="x" active="true"><node name="n1" id="1"/></resource></group>
        </resources></pacemaker-result>"""
    )
    assert pacemaker.running_on(status) == {"microvm-a": ["n2"], "microvm-b": [], "x": ["n1"]}


# --- host file options and checks ------------------------------------------------------

VM = """
[guest]
shell = false
{kernel}
[microvm]
vcpu = 1
migratable = {migratable}
[[microvm.volumes]]
image = "{image}"
size = 16
"""
HOST = """
[microvm]
stateDir = "/srv/microvms"
[microvm.host]
startupTimeout = 100
[cluster]
enable = {enable}
sharedStorage = "/srv/shared"
requireFencing = {fencing}
[microvm.vms.c1]
config = "c1.toml"
cluster = true
[microvm.vms.plain]
config = {{ guest.shell = false }}
"""


def _host(
    tmp_path: Path,
    enable: str = "true",
    image: str = "/srv/shared/c1.img",
    migratable: str = "true",
    kernel: str = "",
    fencing: str = "true",
) -> Path:
    write_vm(tmp_path, VM.format(kernel=kernel, migratable=migratable, image=image), "c1.toml")
    return write_vm(tmp_path, HOST.format(enable=enable, fencing=fencing), "host.toml")


def test_cluster_vm_options_are_checked(tmp_path: Path) -> None:
    host = load_host(_host(tmp_path))
    assert host.config.cluster.sharedStorage == "/srv/shared" and host.config.microvm.vms["c1"].cluster
    assert not host.warnings
    with pytest.raises(ConfigErrors) as caught:
        load_host(_host(tmp_path, enable="false"))
    assert f"{tmp_path}/host.toml: microvm.vms.c1.cluster: a cluster VM needs cluster.enable = true" in str(
        caught.value
    )
    with pytest.raises(ConfigErrors) as caught:
        load_host(_host(tmp_path, image="var.img"))
    assert (
        f"{tmp_path}/c1.toml: microvm.volumes[0].image: /srv/microvms/c1/var.img is not under "
        "cluster.sharedStorage /srv/shared" in str(caught.value)
    )
    # not migratable: allowed, with a warning (and no allow-migrate, below)
    warnings = load_host(_host(tmp_path, migratable="false")).warnings
    assert [w.option for w in warnings] == ["microvm.migratable"] and "shutdown and a boot" in str(warnings[0])


def test_a_cluster_vm_cannot_be_autostarted_or_deployed_from_a_source(tmp_path: Path) -> None:
    _host(tmp_path)
    text = (tmp_path / "host.toml").read_text().replace('config = "c1.toml"', f'source = "{tmp_path}"')
    write_vm(tmp_path, text.replace("[microvm]\n", '[microvm]\nautostart = ["c1"]\n', 1), "bad.toml")
    with pytest.raises(ConfigErrors) as caught:
        load_host(tmp_path / "bad.toml")
    message = str(caught.value)
    assert "microvm.vms.c1.cluster: a cluster VM needs config" in message
    assert "microvm.autostart[0]: 'c1' is a cluster VM: the cluster starts it, not the host" in message


# --- the resources, and cluster apply into a CIB file -----------------------------------


@pytest.fixture
def kernel(shared_store, tmp_path: Path) -> str:
    """A VM file's [guest.kernel] table of a kernel in the shared store (builds need no download then)."""
    return kernel_settings(shared_store, tmp_path)


@pytest.fixture
def cluster_host(kernel: str, tmp_path: Path) -> Path:
    return _host(tmp_path, kernel=kernel, fencing="false")


def test_wanted_resources(cluster_host: Path, shared_store) -> None:
    host = load_host(cluster_host)
    runner = Path("/store/abc-microvm-qemu-c1")
    want = resources.wanted(host.config, {"c1": host.vms["c1"].config}, {"c1": runner})
    assert list(want) == ["microvm-c1"]
    c1 = want["microvm-c1"]
    assert c1.params == {
        "name": "c1",
        "build": str(runner),
        "shared_storage": "/srv/shared",
        "require_fencing": "false",
    }
    assert c1.meta == {"resource-stickiness": "100", "allow-migrate": "true"}
    assert c1.ops[("monitor", "10s")] == "30s" and c1.ops[("start", "0s")] == "130s"  # startupTimeout + margin
    advertised = {a.get("name"): a.attrib for a in ET.fromstring(agent.metadata()).iterfind("./actions/action")}
    for (op, interval), timeout in c1.ops.items():  # as the agent's meta-data says, but start, stop and migrate_to
        if op in ("monitor", "migrate_from"):
            assert advertised[op]["timeout"] == timeout and advertised[op].get("interval", "0s") == interval
    assert c1.ops[("migrate_to", "0s")] == "130s"
    still = resources.wanted(host.config, {"c1": host.vms["c1"].config.model_copy(deep=True)}, {"c1": runner})
    assert still == want
    fixed = host.vms["c1"].config.model_copy(
        update={"microvm": host.vms["c1"].config.microvm.model_copy(update={"migratable": False})}
    )
    moved_by_restart = resources.wanted(host.config, {"c1": fixed}, {"c1": runner})["microvm-c1"]
    assert moved_by_restart.meta == {"resource-stickiness": "100"} and ("migrate_to", "0s") not in moved_by_restart.ops


def test_diff_touches_only_the_agents_microvm_resources() -> None:
    want = {
        "microvm-a": resources.Resource("microvm-a", {"name": "a", "build": "/s/new"}, {}, {("monitor", "10s"): "30s"}),
        "microvm-new": resources.Resource("microvm-new", {"name": "new"}, {}, {}),
    }
    live = ET.fromstring(
        CIB.format(
            props="",
            resources='<primitive id="microvm-a" class="ocf" provider="microvm" type="vm">'
            '<instance_attributes id="i"><nvpair id="i-n" name="name" value="a"/>'
            '<nvpair id="i-b" name="build" value="/s/old"/></instance_attributes>'
            '<meta_attributes id="m"><nvpair id="m-t" name="target-role" value="Stopped"/></meta_attributes>'
            '<operations><op id="microvm-a-monitor-interval-10s" name="monitor" interval="10s" timeout="30s"/>'
            "</operations></primitive>"
            + '<primitive id="microvm-gone" class="ocf" provider="microvm" type="vm"/>'
            + '<primitive id="microvm-other" class="ocf" provider="heartbeat" type="Dummy"/>'
            + '<primitive id="web" class="ocf" provider="heartbeat" type="IPaddr2"/>',
        )
    )
    found = resources.diff(live, want)
    assert [r.id for r in found.add] == ["microvm-new"] and [r.id for r in found.remove] == ["microvm-gone"]
    ((changed, kept, why),) = found.change
    assert changed is want["microvm-a"] and why == ["build /s/old -> /s/new"]
    assert {p.get("name"): p.get("value") for p in changed.xml(kept).iterfind("meta_attributes/nvpair")} == {
        "target-role": "Stopped"
    }
    assert found.describe() == [
        "add resource microvm-new (VM new)",
        "change resource microvm-a: build /s/old -> /s/new (Pacemaker restarts VM a: a shutdown and a boot)",
        "remove resource microvm-gone (the cluster stops it)",
    ]
    same = {rid: resource for rid, (resource, _) in resources.ours(live).items()}
    assert set(same) == {"microvm-a", "microvm-gone"} and not resources.diff(live, same)  # as it is: no change


def _cib(path: Path, props: str = '<nvpair id="o-s" name="stonith-enabled" value="false"/>') -> Path:
    """An empty CIB file with the cluster options ``props`` and someone else's resource."""
    empty = ET.fromstring(subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, check=True).stdout)
    config = empty.find("configuration")
    config.find("crm_config").append(ET.fromstring(f'<cluster_property_set id="o">{props}</cluster_property_set>'))
    config.find("resources").append(
        ET.fromstring('<primitive id="web" class="ocf" provider="heartbeat" type="IPaddr2"/>')
    )
    path.write_text(ET.tostring(empty, encoding="unicode"))
    return path


def _cluster(args: list[str], cib: Path, monkeypatch: pytest.MonkeyPatch, ok: bool = True) -> str:
    """`microvm cluster ARGS` on the CIB file; its output, and its error when not ``ok``."""
    monkeypatch.setenv("CIB_file", str(cib))
    result = CliRunner().invoke(app, ["cluster", *args])
    monkeypatch.delenv("CIB_file")
    assert (result.exit_code == 0) == ok, result.output
    return result.output if ok else result.output + str(result.exception)


def _apply_offline(host: Path, cib: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """`microvm cluster apply` on a CIB file of nodes n1 n2 n3 that do not exist: it writes the resources and
    constraints and then fails, naming the nodes it could not copy the builds to."""
    said = _cluster(["apply", str(host)], cib, monkeypatch, ok=False)
    assert "the builds are not on n1, n2, n3" in said
    return said


NOTHING = "resources and constraints: nothing to change"


def _verify(cib: Path) -> None:
    checked = subprocess.run(["crm_verify", "--xml-file", str(cib)], check=False, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pacemaker_tools
def test_cluster_apply_writes_only_its_resources_and_twice_changes_nothing(
    cluster_host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cib = _cib(tmp_path / "cib.xml")
    planned = _cluster(["plan", str(cluster_host)], cib, monkeypatch)
    assert "add resource microvm-c1 (VM c1)" in planned
    assert "microvm-c1" not in cib.read_text()  # plan writes nothing
    assert "add resource microvm-c1" in _cluster(["apply", str(cluster_host)], cib, monkeypatch)
    _verify(cib)
    live = ET.parse(cib).getroot()
    mine = live.find("./configuration/resources/primitive[@id='microvm-c1']")
    assert {k: mine.get(k) for k in ("class", "provider", "type")} == resources.AGENT
    assert live.find("./configuration/resources/primitive[@id='web']") is not None  # not ours: untouched
    params = {p.get("name"): p.get("value") for p in mine.iterfind("./instance_attributes/nvpair")}
    assert params["name"] == "c1" and Path(params["build"], "bin/microvm-run").exists()
    assert _cluster(["apply", str(cluster_host)], cib, monkeypatch).strip().endswith(NOTHING)

    # an administrator's meta attribute stays through a change; a longer start timeout is a change
    subprocess.run(
        ["crm_resource", "--resource", "microvm-c1", "--meta", "--set-parameter", "target-role", "--parameter-value",
         "Stopped"],
        env={**os.environ, "CIB_file": str(cib)}, check=True, capture_output=True,
    )  # fmt: skip
    cluster_host.write_text(cluster_host.read_text().replace("startupTimeout = 100", "startupTimeout = 200"))
    changed = _cluster(["apply", str(cluster_host)], cib, monkeypatch)
    assert (
        "change resource microvm-c1: op migrate_to 0s timeout 130s -> 230s; op start 0s timeout 130s -> 230s" in changed
    )
    _verify(cib)
    mine = ET.parse(cib).getroot().find("./configuration/resources/primitive[@id='microvm-c1']")
    meta = {p.get("name"): p.get("value") for p in mine.iterfind("./meta_attributes/nvpair")}
    assert meta == {"target-role": "Stopped", "resource-stickiness": "100", "allow-migrate": "true"}

    # no longer a cluster VM: its resource goes, the other resource stays
    cluster_host.write_text(cluster_host.read_text().replace("cluster = true", "cluster = false"))
    assert "remove resource microvm-c1" in _cluster(["apply", str(cluster_host)], cib, monkeypatch)
    ids = [p.get("id") for p in ET.parse(cib).getroot().iterfind("./configuration/resources/primitive")]
    assert ids == ["web"]


@pacemaker_tools
def test_cluster_apply_keeps_what_others_added_to_its_resources(
    cluster_host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rewrite overwrites only what microvm sets: an op's on-fail, an op it did not write (a deeper monitor),
    utilization stay; an op of its own it no longer wants goes."""
    cib = _cib(tmp_path / "cib.xml")
    _cluster(["apply", str(cluster_host)], cib, monkeypatch)
    live = ET.parse(cib).getroot()
    mine = live.find("./configuration/resources/primitive[@id='microvm-c1']")
    mine.find("./operations/op[@name='start']").set("on-fail", "block")
    deeper = ET.SubElement(mine.find("operations"), "op", id="deep", name="monitor", interval="60s", timeout="50s")
    ET.SubElement(ET.SubElement(deeper, "instance_attributes", id="deep-i"), "nvpair", id="deep-l",
                  name="OCF_CHECK_LEVEL", value="10")  # fmt: skip
    ET.SubElement(ET.SubElement(mine, "utilization", id="u"), "nvpair", id="u-m", name="memory", value="256")
    cib.write_text(ET.tostring(live, encoding="unicode"))
    cluster_host.write_text(cluster_host.read_text().replace("startupTimeout = 100", "startupTimeout = 200"))
    (tmp_path / "c1.toml").write_text(
        (tmp_path / "c1.toml").read_text().replace("migratable = true", "migratable = false")
    )
    changed = _cluster(["apply", str(cluster_host)], cib, monkeypatch)
    assert "op start 0s timeout 130s -> 230s" in changed and "op migrate_to 0s timeout 130s -> (none)" in changed
    _verify(cib)
    mine = ET.parse(cib).getroot().find("./configuration/resources/primitive[@id='microvm-c1']")
    ops = {(op.get("name"), op.get("interval")): op for op in mine.iterfind("./operations/op")}
    assert set(ops) == {("start", "0s"), ("stop", "0s"), ("monitor", "10s"), ("monitor", "60s")}
    assert ops["start", "0s"].get("on-fail") == "block" and ops["start", "0s"].get("timeout") == "230s"
    assert ops["monitor", "60s"].find("instance_attributes/nvpair").get("value") == "10"
    assert mine.find("utilization/nvpair").get("value") == "256"
    assert _cluster(["apply", str(cluster_host)], cib, monkeypatch).strip().endswith(NOTHING)


def _target_role(cib: Path, value: str) -> None:
    """An administrator's ``crm_resource --meta`` on microvm-c1 (pcs resource disable / enable)."""
    subprocess.run(
        ["crm_resource", "--resource", "microvm-c1", "--meta", "--set-parameter", "target-role", "--parameter-value",
         value],
        env={**os.environ, "CIB_file": str(cib)}, check=True, capture_output=True,
    )  # fmt: skip


@pacemaker_tools
def test_cluster_apply_writes_from_the_cib_as_it_is_after_the_copies(
    cluster_host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The builds take minutes to copy: a resource disabled meanwhile stays disabled; the change is one patch
    that Pacemaker refuses when the CIB changed between reading it and writing the change."""
    cib = _cib(tmp_path / "cib.xml")
    _cluster(["apply", str(cluster_host)], cib, monkeypatch)
    cluster_host.write_text(cluster_host.read_text().replace("startupTimeout = 100", "startupTimeout = 200"))
    monkeypatch.setenv("CIB_file", str(cib))
    planned = cluster_plan.plan(load_host(cluster_host), Store())
    _target_role(cib, "Stopped")  # while the builds are copied
    said: list[str] = []
    cluster_plan.apply(planned, Store(), said.append)
    assert len(said) == 1 and said[0].startswith("change resource microvm-c1: op migrate_to 0s timeout 130s -> 230s")
    mine = ET.parse(cib).getroot().find("./configuration/resources/primitive[@id='microvm-c1']")
    assert {p.get("name"): p.get("value") for p in mine.iterfind("./meta_attributes/nvpair")}[
        "target-role"
    ] == "Stopped"

    def meanwhile(draft: pacemaker.Draft) -> None:
        draft.delete('<primitive id="microvm-c1"/>')
        _target_role(cib, "Started")  # someone else, between the read and the write

    with pytest.raises(pacemaker.CibChanged):
        pacemaker.transaction(meanwhile)
    assert ET.parse(cib).getroot().find("./configuration/resources/primitive[@id='microvm-c1']") is not None


@pacemaker_tools
def test_cluster_apply_writes_the_resources_even_when_a_node_cannot_get_the_builds(
    cluster_host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cib = _cib(tmp_path / "cib.xml")
    nodes = f'<node id="1" uname="{os.uname().nodename}"/><node id="2" uname="no such node"/>'
    cib.write_text(cib.read_text().replace("<nodes />", f"<nodes>{nodes}</nodes>"))
    assert "to no such node" in _cluster(["plan", str(cluster_host)], cib, monkeypatch)  # this host: no copy
    failed = _cluster(["apply", str(cluster_host)], cib, monkeypatch, ok=False)
    assert "the builds are not on no such node: the cluster runs these VMs on the other nodes only" in failed
    assert ET.parse(cib).getroot().find("./configuration/resources/primitive[@id='microvm-c1']") is not None


@pacemaker_tools
def test_cluster_apply_refuses_a_cluster_without_fencing(
    cluster_host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_host.write_text(cluster_host.read_text().replace("requireFencing = false", "requireFencing = true"))
    cib = _cib(tmp_path / "cib.xml")
    refused = _cluster(["apply", str(cluster_host)], cib, monkeypatch, ok=False)
    assert "fencing is disabled in this cluster (the property stonith-enabled is false)" in refused
    assert "requireFencing = false" in refused and "microvm-c1" not in cib.read_text()
    monkeypatch.setenv("CIB_file", str(cib))
    said: list[str] = []
    with pytest.raises(MicrovmError, match="fencing is disabled"):
        cluster_plan.plan(load_host(cluster_host), Store(), said.append)
    assert said == []  # refused before building anything


# --- list and status on a cluster node --------------------------------------------------

PLACED = """<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="3" num_updates="0" admin_epoch="0"
 have-quorum="1" dc-uuid="1"><configuration>
<crm_config><cluster_property_set id="o"><nvpair id="o-s" name="stonith-enabled" value="false"/></cluster_property_set>
</crm_config><nodes><node id="1" uname="n1"/><node id="2" uname="n2"/></nodes>
<resources><primitive id="microvm-a" class="ocf" provider="microvm" type="vm"/>
<primitive id="microvm-b" class="ocf" provider="microvm" type="vm"/></resources><constraints/></configuration>
<status><node_state id="2" uname="n2" in_ccm="true" crmd="online" join="member" expected="member">
<lrm id="2"><lrm_resources><lrm_resource id="microvm-a" class="ocf" provider="microvm" type="vm">
<lrm_rsc_op id="microvm-a_last_0" operation_key="microvm-a_start_0" operation="start" crm_feature_set="3.16.1"
 transition-key="1:1:0:6f1a3c4e-0000-0000-0000-000000000001"
 transition-magic="0:0;1:1:0:6f1a3c4e-0000-0000-0000-000000000001" on_node="n2" call-id="5" rc-code="0"
 op-status="0" interval="0" last-rc-change="1700000000" exec-time="10" queue-time="0" op-digest="0"/>
</lrm_resource></lrm_resources></lrm></node_state>
<node_state id="1" uname="n1" in_ccm="true" crmd="online" join="member" expected="member"/></status></cib>"""


def _installed(state_dir: Path, name: str) -> None:
    """VM ``name`` installed (its current runner's vm.json is all list reads), not running here."""
    runner = state_dir / f"runner-{name}"
    (runner / "share/microvm").mkdir(parents=True)
    (runner / "share/microvm/vm.json").write_text('{"microvm": {"hypervisor": "qemu"}, "guest": {}}')
    (state_dir / name).mkdir(parents=True)
    (state_dir / name / "current").symlink_to(runner)


@pacemaker_tools
def test_list_and_status_show_the_node_of_cluster_vms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = Path(os.environ["MICROVM_STATE_DIR"])
    for name in ("a", "b", "local"):
        _installed(state_dir, name)
    (tmp_path / "cib.xml").write_text(PLACED)
    show.list_command(as_json=True)
    assert [vm["node"] for vm in json.loads(capsys.readouterr().out)] == [None, None, None]  # not a cluster node
    agent_file = tmp_path / "vm"
    agent_file.touch()
    monkeypatch.setattr(show, "OCF_AGENT", agent_file)  # where `host apply` put the agent on a cluster node
    monkeypatch.setenv("CIB_file", str(tmp_path / "cib.xml"))
    show.list_command(as_json=True)
    listed = {vm["name"]: vm for vm in json.loads(capsys.readouterr().out)}
    assert {name: vm["node"] for name, vm in listed.items()} == {"a": "n2", "b": "", "local": None}
    assert listed["a"]["command"] is None and listed["local"]["command"]  # the cluster starts a, not microvm
    show.list_command(as_json=False)
    table = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert table[0][-2:] == ["NODE", "NEXT"] and table[1][-1] == "n2" and table[2][-1] == "stopped"
    show.status_command("a", as_json=False)
    assert "node: n2" in capsys.readouterr().out.splitlines()


# --- constraints: preferNodes, after, apartFrom ----------------------------------------

CONSTRAINED = """
[microvm]
stateDir = "/srv/microvms"
[cluster]
enable = true
sharedStorage = "/srv/shared"
requireFencing = false
[microvm.vms.c1]
config = "c1.toml"
cluster = true
preferNodes = ["n2", "n3"]
[microvm.vms.c2]
config = "c2.toml"
cluster = true
apartFrom = ["c3"]
[microvm.vms.c3]
config = "c3.toml"
cluster = true
after = ["c1"]
apartFrom = ["c2"]
"""


BAD_CONSTRAINTS = """
[cluster]
enable = true
sharedStorage = "/srv/shared"
[microvm.vms.c2]
config = { guest.shell = false }
cluster = true
after = ["c3"]
apartFrom = ["c3", "c3"]
[microvm.vms.c3]
config = { guest.shell = false }
cluster = true
after = ["c2", "plain", "c3", "nowhere"]
[microvm.vms.plain]
config = { guest.shell = false }
preferNodes = ["n1"]
"""


def test_constraint_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_host(write_vm(tmp_path, BAD_CONSTRAINTS, "host.toml"))
    said = str(caught.value)
    host = f"{tmp_path}/host.toml"
    for expected in (
        f"{host}: microvm.vms.plain.preferNodes: only a cluster VM has constraints",
        f"{host}: microvm.vms.c3.after[1]: 'plain' is not a cluster VM of this host file\n  hint: cluster VMs: c2, c3",
        f"{host}: microvm.vms.c3.after[2]: 'c3' is this VM itself",
        f"{host}: microvm.vms.c3.after[3]: 'nowhere' is not a cluster VM of this host file",
        f"{host}: microvm.vms.c2.apartFrom[1]: VM 'c3' is also used by microvm.vms.c2.apartFrom[0]",
        f"{host}: microvm.vms.c3.after[0]: an order loop: c2 after c3 after c2: none of them could start",
    ):
        assert expected in said, said
    assert said.count("order loop") == 1  # one loop, reported once


def test_constraints_of_a_host_file() -> None:
    text = CONSTRAINED.replace('config = "c1.toml"', 'config = "c1.toml"\nafter = ["c2"]')
    config = HostConfig.model_validate(tomllib.loads(text))
    found = resources.constraints(config)
    assert {cid: (c.tag, c.attrs) for cid, c in found.items()} == {
        "microvm-c1..prefers..n2": ("rsc_location", {"rsc": "microvm-c1", "node": "n2", "score": "20"}),
        "microvm-c1..prefers..n3": ("rsc_location", {"rsc": "microvm-c1", "node": "n3", "score": "10"}),
        "microvm-c1..after..c2": ("rsc_order", {"first": "microvm-c2", "then": "microvm-c1", "kind": "Mandatory"}),
        "microvm-c3..after..c1": ("rsc_order", {"first": "microvm-c1", "then": "microvm-c3", "kind": "Mandatory"}),
        # both name each other: one constraint
        "microvm-c2..apart..c3": (
            "rsc_colocation",
            {"rsc": "microvm-c2", "with-rsc": "microvm-c3", "score": "-1000000"},
        ),
    }
    assert max(int(c.attrs.get("score", 0)) for c in found.values()) < config.cluster.stickiness
    # only c3 names c2: c3 is the one that yields (the id stays the pair's)
    one_sided = HostConfig.model_validate(tomllib.loads(text.replace('apartFrom = ["c3"]', "")))
    colocation = resources.constraints(one_sided)["microvm-c2..apart..c3"]
    assert colocation.attrs == {"rsc": "microvm-c3", "with-rsc": "microvm-c2", "score": "-1000000"}


@pytest.fixture
def constrained_host(kernel: str, tmp_path: Path) -> Path:
    for name in ("c1", "c2", "c3"):
        write_vm(tmp_path, VM.format(kernel=kernel, migratable="true", image=f"/srv/shared/{name}.img"), f"{name}.toml")
    return write_vm(tmp_path, CONSTRAINED, "host.toml")


def _three_nodes(cib: Path) -> Path:
    """The CIB file with the nodes n1 n2 n3, all three online and the cluster quorate (crm_simulate's input)."""
    root = ET.parse(cib).getroot()
    root.set("have-quorum", "1")
    for i in (1, 2, 3):
        ET.SubElement(root.find("./configuration/nodes"), "node", id=str(i), uname=f"n{i}")
        ET.SubElement(root.find("status"), "node_state", id=str(i), uname=f"n{i}", in_ccm="true", crmd="online",
                      join="member", expected="member")  # fmt: skip
    cib.write_text(ET.tostring(root, encoding="unicode"))
    return cib


def _simulate(cib: Path, out: Path, *changes: str) -> dict[str, list[str]]:
    """Run the scheduler on ``cib`` with ``changes`` (crm_simulate's --node-up/--node-down ...) and carry its
    actions out (simulated: no agent runs): where each resource runs then, the result saved to ``out``."""
    simulated = subprocess.run(
        ["crm_simulate", "--xml-file", str(cib), "--simulate", "--save-output", str(out), *changes],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    status = subprocess.run(
        ["crm_mon", "--one-shot", "--output-as=xml"], env={**os.environ, "CIB_file": str(out)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return pacemaker.running_on(ET.fromstring(status.stdout))


@pacemaker_tools
def test_the_scheduler_places_the_vms_as_the_constraints_say(
    constrained_host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cib = _three_nodes(_cib(tmp_path / "cib.xml"))
    _apply_offline(constrained_host, cib, monkeypatch)
    _verify(cib)
    placed = _simulate(cib, tmp_path / "1.xml")
    assert placed["microvm-c1"] == ["n2"]  # its first preference
    assert len(placed["microvm-c2"]) == len(placed["microvm-c3"]) == 1 and placed["microvm-c2"] != placed["microvm-c3"]
    # n2 goes: c1 to its second preference; n2 returns: c1 stays (stickiness 100 > the preference's 10)
    assert _simulate(tmp_path / "1.xml", tmp_path / "2.xml", "--node-down", "n2")["microvm-c1"] == ["n3"]
    assert _simulate(tmp_path / "2.xml", tmp_path / "3.xml", "--node-up", "n2")["microvm-c1"] == ["n3"]
    # one node for the two VMs that are apart: one of them runs, the other waits for a second node
    # (c2 and c3 name each other: c3, the later name, is placed first, even where c2 was the one running there)
    alone = _simulate(tmp_path / "1.xml", tmp_path / "4.xml", "--node-down", "n2", "--node-down", "n3")
    assert alone["microvm-c3"] == alone["microvm-c1"] == ["n1"] and alone["microvm-c2"] == []

    # without stickiness the returning node takes c1 back
    constrained_host.write_text(constrained_host.read_text().replace("[cluster]", "[cluster]\nstickiness = 0"))
    changed = _apply_offline(constrained_host, tmp_path / "2.xml", monkeypatch)
    assert "change resource microvm-c1: meta resource-stickiness 100 -> 0" in changed
    assert _simulate(tmp_path / "2.xml", tmp_path / "5.xml", "--node-up", "n2")["microvm-c1"] == ["n2"]


@pacemaker_tools
def test_an_order_makes_the_start_wait(constrained_host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """c3 after c1: in the scheduler's transition graph c3's start waits for c1's, and c1's stop for c3's; a live
    migration of c1 leaves c3 running."""
    cib = _three_nodes(_cib(tmp_path / "cib.xml"))
    _apply_offline(constrained_host, cib, monkeypatch)

    def waits_for(cib: Path, action: str, *changes: str) -> set[str]:
        graph = tmp_path / "graph.xml"
        subprocess.run(
            ["crm_simulate", "--xml-file", str(cib), "--simulate", "--save-graph", str(graph), *changes],
            capture_output=True, check=True,
        )  # fmt: skip
        synapse = next(
            s for s in ET.parse(graph).getroot().iterfind("synapse")
            if s.find(f"./action_set/rsc_op[@operation_key='{action}']") is not None
        )  # fmt: skip
        return {op.get("operation_key", "") for op in synapse.iterfind("./inputs/trigger/rsc_op")}

    assert "microvm-c1_start_0" in waits_for(cib, "microvm-c3_start_0")
    assert "microvm-c1_start_0" not in waits_for(cib, "microvm-c2_start_0")  # no order between c2 and c1
    running = tmp_path / "1.xml"
    assert _simulate(cib, running)["microvm-c1"] == ["n2"]
    # n2 drained: c1 migrates live, and c3 (after c1) keeps running: a migration is no stop of c1
    drained = tmp_path / "drained.xml"
    shutil.copy(running, drained)
    standby = ["crm_attribute", "--node", "n2", "--name", "standby", "--update", "on", "--lifetime", "forever"]
    subprocess.run(standby, env={**os.environ, "CIB_file": str(drained)}, check=True, capture_output=True)
    summary = (
        subprocess.run(
            ["crm_simulate", "--xml-file", str(drained), "--simulate"], capture_output=True, text=True, check=True
        )
        .stdout.split("Transition Summary:")[1]
        .split("Executing Cluster Transition")[0]
    )
    assert [line.split() for line in summary.strip().splitlines()] == [
        ["*", "Migrate", "microvm-c1", "(", "n2", "->", "n3", ")"]
    ]
    subprocess.run(
        ["crm_resource", "--resource", "microvm-c1", "--meta", "--set-parameter", "target-role", "--parameter-value",
         "Stopped"],
        env={**os.environ, "CIB_file": str(running)}, check=True, capture_output=True,
    )  # fmt: skip
    assert "microvm-c3_stop_0" in waits_for(running, "microvm-c1_stop_0")  # c1 stops: c3 stops first


@pacemaker_tools
def test_cluster_apply_keeps_the_constraints_as_the_host_file_says(
    constrained_host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cib = _three_nodes(_cib(tmp_path / "cib.xml"))
    theirs = '<rsc_location id="microvm-web-by-hand" rsc="web" node="n1" score="5"/>'  # our prefix, not ours
    cib.write_text(cib.read_text().replace("<constraints />", f"<constraints>{theirs}</constraints>"))
    planned = _cluster(["plan", str(constrained_host)], cib, monkeypatch).splitlines()
    assert planned[-4:] == [
        "add constraint microvm-c1..prefers..n2 (c1 prefers n2: score 20)",
        "add constraint microvm-c1..prefers..n3 (c1 prefers n3: score 10)",
        "add constraint microvm-c2..apart..c3 (c2 never on c3's node; c3 is placed first)",
        "add constraint microvm-c3..after..c1 (c1 starts before c3, stops after it)",
    ]
    _apply_offline(constrained_host, cib, monkeypatch)
    _verify(cib)

    def constraints() -> dict[str, dict[str, str]]:
        return {c.get("id"): dict(c.attrib) for c in ET.parse(cib).getroot().iterfind("./configuration/constraints/*")}

    assert len(constraints()) == 5
    applied = cib.read_text()
    _apply_offline(constrained_host, cib, monkeypatch)
    assert cib.read_text() == applied  # a second apply writes nothing
    crm_resource = ["crm_resource", "--resource", "microvm-c3", "--move", "--node", "n3"]  # an administrator's
    subprocess.run(crm_resource, env={**os.environ, "CIB_file": str(cib)}, check=True, capture_output=True)
    assert constraints()["cli-prefer-microvm-c3"]["node"] == "n3"
    assert _cluster(["plan", str(constrained_host)], cib, monkeypatch).strip().endswith(NOTHING)  # applied: no change

    # the preferences swapped: two changes; c3 no longer a cluster VM: its constraints go, before its resource
    text = constrained_host.read_text().replace('["n2", "n3"]', '["n3", "n2"]').replace('apartFrom = ["c3"]\n', "")
    text = text.replace('cluster = true\nafter = ["c1"]\napartFrom = ["c2"]', "cluster = false")
    constrained_host.write_text(text)
    # the administrator's --move names c3: refused before anything is written, with what to run
    held = _cluster(["apply", str(constrained_host)], cib, monkeypatch, ok=False)
    assert (
        f"{constrained_host}: runs no cluster VM c3 any more, but constraints that are not microvm's name its "
        "resource microvm-c3: cli-prefer-microvm-c3; Pacemaker cannot delete the resource under them" in held
    )
    assert "crm_resource --clear --resource microvm-c3" in held and len(constraints()) == 6
    clear = ["crm_resource", "--resource", "microvm-c3", "--clear"]
    subprocess.run(clear, env={**os.environ, "CIB_file": str(cib)}, check=True, capture_output=True)
    changed = [
        line
        for line in _apply_offline(constrained_host, cib, monkeypatch).splitlines()
        if "constraint" in line or "resource" in line
    ]
    assert changed == [
        "remove constraint microvm-c2..apart..c3",
        "remove constraint microvm-c3..after..c1",
        "remove resource microvm-c3",
        "change constraint microvm-c1..prefers..n3: score 10 -> 20",
        "change constraint microvm-c1..prefers..n2: score 20 -> 10",
    ]
    _verify(cib)
    now = constraints()
    assert now["microvm-c1..prefers..n3"]["score"] == "20" and "microvm-c3..after..c1" not in now
    assert now["microvm-web-by-hand"]["score"] == "5" and len(now) == 3  # theirs stays
    assert _cluster(["plan", str(constrained_host)], cib, monkeypatch).strip().endswith(NOTHING)


@pacemaker_tools
def test_prefer_nodes_must_be_the_clusters(
    constrained_host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cib = _three_nodes(_cib(tmp_path / "cib.xml"))
    constrained_host.write_text(constrained_host.read_text().replace('["n2", "n3"]', '["n2", "n4"]'))
    refused = _cluster(["plan", str(constrained_host)], cib, monkeypatch, ok=False)
    assert f"{constrained_host}: microvm.vms.c1.preferNodes[1]: 'n4' is not a node of this cluster" in refused
    assert "its nodes (crm_node -l): n1, n2, n3" in refused and "microvm-c1" not in cib.read_text()


# --- host apply: the agent ------------------------------------------------------------


def test_host_apply_removes_the_agent_when_the_host_leaves_the_cluster(
    shared_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan of `host apply` (only planned, but for the agent's own change: no unit is touched)."""
    agent_file = tmp_path / "ocf/microvm/vm"
    monkeypatch.setattr(host_apply, "OCF_AGENT", agent_file)

    def agent_changes(enable: str) -> list:
        text = f'[microvm]\nstateDir = "{tmp_path}/state"\n[cluster]\nenable = {enable}\n'
        changes = host_apply.plan(load_host(write_vm(tmp_path, text, "host.toml")), shared_store).changes
        return [c for c in changes if getattr(c, "path", None) == agent_file]

    (write,) = agent_changes("true")
    assert write.describe() == f"write {agent_file}"
    write.apply()
    assert agent_file.stat().st_mode & 0o7777 == 0o755 and "ocf-agent" in agent_file.read_text()
    assert agent_changes("true") == []  # installed as it should be
    (remove,) = agent_changes("false")
    assert remove.describe() == f"remove {agent_file}"
    remove.apply()
    assert not agent_file.exists() and agent_changes("false") == []
    agent_file.write_text("#!/bin/sh\n# an agent someone else put here\n")
    assert agent_changes("false") == []  # not written by microvm: kept


def _primitive(name: str) -> str:
    return f'<primitive id="microvm-{name}" class="ocf" provider="microvm" type="vm"/>'


@pacemaker_tools
def test_host_apply_refuses_to_leave_the_cluster_while_it_runs_the_vms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VM taken out of the cluster (or the host: the agent removed) while the CIB still has its resource: every
    node would start it by itself, or the resources' monitor and stop would fail. Refused before anything."""
    cib = _cib(tmp_path / "cib.xml")
    live = ET.parse(cib).getroot()
    live.find("configuration/resources").extend([ET.fromstring(_primitive("c1")), ET.fromstring(_primitive("old"))])
    cib.write_text(ET.tostring(live, encoding="unicode"))
    agent_file = tmp_path / "agent"
    monkeypatch.setattr("microvm.cli.host_cmds.OCF_AGENT", agent_file)
    monkeypatch.setenv("CIB_file", str(cib))
    monkeypatch.setenv("MICROVM_UNIT_DIR", str(tmp_path / "units"))

    def refused(host: Path, ok: bool = False) -> str:
        result = CliRunner().invoke(app, ["host", "apply", "--dry-run", str(host)])
        assert (result.exit_code == 0) == ok and ("would " in result.output) == ok, result.output
        return result.output + str(result.exception)

    host = _host(tmp_path)
    host.write_text(host.read_text().replace("cluster = true", "cluster = false"))
    said = refused(host)
    assert f"{host}: microvm.vms.c1.cluster: the cluster still runs VM 'c1' (its resource microvm-c1)" in said
    assert f"{host}: microvm.vms.old: the cluster still runs VM 'old'" in said and "microvm cluster apply" in said
    # the host leaves the cluster: the agent stays while resources use it
    host.write_text(host.read_text().replace("enable = true", "enable = false"))
    refused(host, ok=True)  # no agent installed here: not a cluster node, no cluster asked
    agent_file.write_text("the agent")
    said = refused(host)
    assert f"{host}: cluster.enable: the cluster still has resources of its agent: microvm-c1, microvm-old" in said
    assert "remove the cluster VMs from the host file and run microvm cluster apply first" in said
    assert host_apply._refuse_leaving_cluster(load_host(_host(tmp_path)), {"c1"}) is None  # still a cluster VM


def test_the_cluster_drop_ins_come_last_and_mark_the_vm_as_the_clusters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd applies a unit's drop-ins in the order of their names: ``Restart=no`` must outlast
    ``unitOverrides`` (overrides.conf). A VM only the agent set up (its runtime drop-in) is the cluster's too."""
    assert (
        max([units.OVERRIDES_DROPIN, units.CREDENTIALS_DROPIN, "install.conf", systemd.CLUSTER_DROPIN])
        == systemd.CLUSTER_DROPIN
        and systemd.AGENT_DROPIN > units.OVERRIDES_DROPIN
    )
    monkeypatch.setattr(systemd, "UNIT_DIR", tmp_path / "etc")
    monkeypatch.setattr(systemd, "RUNTIME_UNIT_DIR", tmp_path / "run")
    assert not systemd.cluster_managed("c1")
    systemd.agent_dropin("c1").parent.mkdir(parents=True)
    systemd.agent_dropin("c1").write_text(units.cluster_dropin(None))
    assert systemd.cluster_managed("c1") and not systemd.cluster_managed("c2")
    with pytest.raises(MicrovmError, match="VM 'c1' is run by the cluster"):
        lifecycle.control("start", "c1", tmp_path / "state")


def test_the_agent_is_executable_at_every_moment_it_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pacemaker may run the agent while `host apply` rewrites it: the file that replaces it is already 0755."""
    agent_file = tmp_path / "vm"
    WriteFile(agent_file, "#!/bin/sh\n", 0o755).apply()
    replaced, real = [], os.replace

    def replace(source: Path, target: Path) -> None:
        replaced.append(os.stat(source).st_mode & 0o777)
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    WriteFile(agent_file, "#!/bin/sh\nexit 0\n", 0o755).apply()
    assert replaced == [0o755] and agent_file.stat().st_mode & 0o777 == 0o755


@pacemaker_tools
def test_gc_on_a_cluster_node_keeps_the_builds_of_the_clusters_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cluster apply copies builds to nodes where no VM has them installed: gc there keeps them (fail-over
    starts them), and refuses when it cannot ask the cluster which they are."""
    made = """if True:
        import sys
        from pathlib import Path
        from microvm.store import Store
        store = Store(Path(sys.argv[1]))
        dep, _ = store.add("dep", {}, lambda out: None)
        print(dep, store.add("runner", {}, lambda out: None, references=(dep,))[0], store.add("junk", {}, lambda out: None)[0])
    """  # in a process of its own: the entries of a live process's builds are kept by any gc
    entries = subprocess.run(
        [sys.executable, "-c", made, str(tmp_path / "store")], capture_output=True, text=True, check=True
    )
    dep, build, junk = map(Path, entries.stdout.split())
    cib = _cib(tmp_path / "cib.xml")
    live = ET.parse(cib).getroot()
    primitive = ET.fromstring(_primitive("c1"))
    block = ET.SubElement(primitive, "instance_attributes", id="microvm-c1-instance_attributes")
    ET.SubElement(block, "nvpair", id="microvm-c1-build", name="build", value=str(build))
    live.find("configuration/resources").append(primitive)
    cib.write_text(ET.tostring(live, encoding="unicode"))
    agent_file = tmp_path / "agent"
    agent_file.write_text("the agent")
    monkeypatch.setattr("microvm.cli.build_cmds.OCF_AGENT", agent_file)
    monkeypatch.setenv("MICROVM_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MICROVM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CIB_file", str(tmp_path / "missing.xml"))
    refused = CliRunner().invoke(app, ["gc"])
    assert refused.exit_code != 0 and "cannot tell which builds the cluster's VMs use" in str(refused.exception)
    assert junk.exists()
    monkeypatch.setenv("CIB_file", str(cib))
    result = CliRunner().invoke(app, ["gc"])
    assert result.exit_code == 0, result.output
    assert not junk.exists() and build.exists() and dep.exists(), result.output
