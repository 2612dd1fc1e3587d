"""Desugaring (microvm.model.desugar): computed defaults and shorthands, on frozen models, without files."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from pydantic import ValidationError

from microvm.model.desugar import desugar_host, desugar_vm
from microvm.model.names import host_arch
from microvm.model.options import STORE_RW_MOUNTPOINT, STORE_SHARE_SOURCE, STORE_SHARE_TAG, HostConfig, VMConfig


def desugared(guest: dict[str, Any], microvm: dict[str, Any] | None = None, control_socket: bool = True) -> VMConfig:
    return desugar_vm(
        VMConfig.model_validate({"guest": guest, "microvm": microvm or {}}), control_socket=control_socket
    )


def test_defaults_that_depend_on_other_options() -> None:
    vm = desugared({"hostName": "web"})
    assert vm.guest.arch == ("aarch64" if host_arch() == "aarch64" else "x86_64")
    assert vm.guest.machineId == hashlib.sha256(b"microvm:web").hexdigest()[:32]
    assert vm.microvm.qemu.machine == ("virt" if vm.guest.arch == "aarch64" else "microvm")
    assert vm.microvm.socket == "web.sock" and vm.microvm.storeOnDisk is True
    assert vm.guest.kernel.flavor == "cloud"
    arm = desugared({"hostName": "arm", "arch": "aarch64"}, {"qemu": {"machine": "virt,gic-version=3"}})
    assert arm.microvm.qemu.machine == "virt,gic-version=3"  # set by hand: kept
    assert desugared({"hostName": "x", "arch": "aarch64"}).microvm.qemu.machine == "virt"


def test_the_control_socket_default_is_what_the_caller_says_the_backend_has() -> None:
    assert desugared({"hostName": "web"}, control_socket=False).microvm.socket is None
    assert desugared({"hostName": "web"}, {"socket": "own.sock"}, control_socket=False).microvm.socket == "own.sock"


def test_shares_get_virtiofs_sockets_and_9p_asks_for_the_generic_kernel() -> None:
    shares = [
        {"tag": "a", "source": "/srv/a", "mountPoint": "/a", "proto": "virtiofs"},
        {"tag": "b", "source": "/srv/b", "mountPoint": "/b", "proto": "virtiofs", "socket": "mine.sock"},
        {"tag": "c", "source": "/srv/c", "mountPoint": "/c"},
    ]
    vm = desugared({"hostName": "web"}, {"shares": shares})
    assert [s.socket for s in vm.microvm.shares] == ["web-virtiofs-a.sock", "mine.sock", None]
    assert vm.guest.kernel.flavor == "generic"
    assert desugared({"hostName": "web", "kernel": {"flavor": "cloud"}}, {"shares": shares}).guest.kernel.flavor == (
        "cloud"
    )


def test_mounts_become_volumes_and_shares() -> None:
    vm = desugared(
        {
            "hostName": "web",
            "mounts": {
                "postgresql-database": {},
                "big": {"volume": {"sizeGB": 2, "image": "big.raw"}},
                "www": {"share": {"enable": True, "hostPath": "/srv/www"}, "mountpoint": "/srv/www"},
                "off": {"enable": False},
            },
        }
    )
    volumes = [(v.image, v.mountPoint, v.size, v.label) for v in vm.microvm.volumes]
    assert volumes == [
        ("postgresql-database.img", "/var/lib/postgresql-database", 1024, "postgresql-datab"),  # labels: 16 bytes
        ("big.raw", "/var/lib/big", 2048, "big"),
    ]
    shares = [(s.tag, s.source, s.mountPoint, s.proto, s.socket) for s in vm.microvm.shares]
    assert shares == [("www", "/srv/www", "/srv/www", "virtiofs", "web-virtiofs-www.sock")]
    assert vm.guest.mounts["big"].mountpoint == "/var/lib/big" and vm.guest.mounts["big"].volume.enable is True
    assert vm.guest.mounts["www"].volume.enable is False
    assert vm.guest.mounts["off"].mountpoint is None  # a disabled mount stays as written


def test_a_mount_is_a_volume_or_a_share() -> None:
    with pytest.raises(ValidationError) as raised:
        VMConfig.model_validate(
            {"guest": {"hostName": "web", "mounts": {"x": {"volume": {"enable": True}, "share": {"enable": True}}}}}
        )
    (error,) = raised.value.errors()
    assert error["loc"] == ("guest", "mounts", "x") and "either a volume or a share, not both" in error["msg"]


def test_the_store_shorthands() -> None:
    shared = desugared({"hostName": "web", "store": {"readonly": {"enable": True}}})
    assert [(s.tag, s.source, s.mountPoint, s.readOnly) for s in shared.microvm.shares] == [
        (STORE_SHARE_TAG, STORE_SHARE_SOURCE, "/", True)
    ]
    assert shared.microvm.storeOnDisk is False
    writable = desugared({"hostName": "web", "store": {"readwrite": {"enable": True, "size": 300}}})
    assert [(v.image, v.mountPoint, v.size) for v in writable.microvm.volumes] == [
        ("store-rw.img", STORE_RW_MOUNTPOINT, 300)
    ]
    assert writable.microvm.writableStoreOverlay == STORE_RW_MOUNTPOINT
    # storeOnDisk = false by hand shares the store as well
    assert [s.tag for s in desugared({"hostName": "web"}, {"storeOnDisk": False}).microvm.shares] == [STORE_SHARE_TAG]


def test_the_store_share_is_the_one_whose_source_is_the_store() -> None:
    # as microvm.nix's `{ tag = "nix-store"; source = "/nix/store"; ... }` translates: any tag, any mount point
    shared = desugared(
        {"hostName": "web"},
        {"shares": [{"tag": "nix-store", "source": "store", "mountPoint": "/nix/.ro-store", "proto": "virtiofs"}]},
    )
    assert [(s.tag, s.mountPoint, s.readOnly) for s in shared.microvm.shares] == [(STORE_SHARE_TAG, "/", True)]
    assert shared.microvm.storeOnDisk is False
    # a share that only carries the tag is data: the system stays on its disk (and check refuses the tag)
    data = desugared(
        {"hostName": "web"}, {"shares": [{"tag": STORE_SHARE_TAG, "source": "/srv", "mountPoint": "/srv"}]}
    )
    assert data.microvm.storeOnDisk is True


def test_the_base_interface_and_the_routed_layout() -> None:
    bridged = desugared({"hostName": "web", "network": {"base": {"enable": True, "n": 2}}})
    assert [(i.type, i.id, i.mac) for i in bridged.microvm.interfaces] == [("tap", "vm2", "02:00:00:01:00:02")]
    assert bridged.guest.network.interfaces == {}  # DHCP and SLAAC from the host's bridge
    routed = desugared({"hostName": "web", "network": {"base": {"enable": True, "n": 2, "routed": {"enable": True}}}})
    assert [i.id for i in routed.microvm.interfaces] == ["rvm2"]
    own = routed.guest.network.interfaces["rvm2"]
    assert (own.dhcp, own.acceptRA, own.addresses) == (False, False, ["10.214.0.4/32", "fd12:3456:789b::4/128"])
    assert [(r.destination, r.gateway) for r in own.routes] == [
        ("0.0.0.0/0", "10.214.0.1"),
        ("::/0", "fd12:3456:789b::1"),
    ]
    v4_only = {"enable": True, "n": 0, "routed": {"enable": True, "ipv6Prefix": False}}
    assert desugared({"hostName": "w", "network": {"base": v4_only}}).guest.network.interfaces["rvm0"].addresses == [
        "10.214.0.2/32"
    ]
    by_hand = {"base": {"enable": True, "n": 2, "routed": {"enable": True}}, "interfaces": {"rvm2": {"dhcp": False}}}
    assert desugared({"hostName": "w", "network": by_hand}).guest.network.interfaces["rvm2"].addresses == []
    # past the end of the subnet: no addresses to give (the checks say so)
    past = {"enable": True, "n": 300, "routed": {"enable": True}}
    assert desugared({"hostName": "w", "network": {"base": past}}).guest.network.interfaces == {}


RICH = {
    "hostName": "web",
    "mounts": {"data": {}, "www": {"share": {"enable": True}}},
    "store": {"readonly": {"enable": True}, "readwrite": {"enable": True}},
    "network": {"base": {"enable": True, "n": 5, "routed": {"enable": True}}},
}


def test_desugaring_is_idempotent_and_leaves_its_input_alone() -> None:
    """An expanded config (microvm eval, vm.json) desugars to itself: nothing is added twice."""
    declared = VMConfig.model_validate({"guest": RICH})
    written = declared.dump()
    once = desugar_vm(declared, control_socket=True)
    assert declared.dump() == written
    again = desugar_vm(VMConfig.model_validate(once.dump()), control_socket=True)
    assert again == once
    assert VMConfig.model_validate(once.dump()) == once  # vm.json read back as it is


def test_validated_models_are_frozen() -> None:
    vm = desugared(RICH)
    with pytest.raises(ValidationError, match="frozen"):
        vm.microvm.mem = 1024  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        vm.microvm.shares[0].source = "/elsewhere"  # type: ignore[misc]
    variant = vm.model_copy(update={"microvm": vm.microvm.model_copy(update={"mem": 1024})})
    assert (variant.microvm.mem, vm.microvm.mem) == (1024, 512)


def test_declared_vms_defaults() -> None:
    host = desugar_host(
        HostConfig.model_validate(
            {
                "microvm": {
                    "vms": {
                        "full": {"config": "web.toml"},
                        "deployed": {"source": "/etc/microvm"},
                        "own": {"source": "/a", "updateSource": "/b", "restartIfChanged": True},
                    }
                }
            }
        )
    )
    vms = host.microvm.vms
    assert (vms["full"].restartIfChanged, vms["full"].updateSource) == (True, None)
    assert (vms["deployed"].restartIfChanged, vms["deployed"].updateSource) == (False, "/etc/microvm")
    assert (vms["own"].restartIfChanged, vms["own"].updateSource) == (True, "/b")
