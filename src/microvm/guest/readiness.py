"""The guest's half of ``microvm.readiness``: say READY=1 on the readiness port once booted.

The hypervisor adds a virtio-serial port named :data:`READINESS_PORT`; the
guest finds its device by that name (busybox has no udev to make the
/dev/virtio-ports link) and writes the message. busybox guests run it from
inittab after their system init and oneshot services, Debian guests from a
unit ordered after multi-user.target.
"""

from __future__ import annotations

from ..layout import READINESS_PORT

READY_SCRIPT_PATH = "etc/microvm/ready"
READY_SCRIPT = f"""#!/bin/sh
# microvm.readiness: tell the host that this guest has booted.
for port in /sys/class/virtio-ports/*; do
    if [ "$(cat "$port/name" 2>/dev/null)" = {READINESS_PORT} ]; then
        echo READY=1 > "/dev/${{port##*/}}"
        exit
    fi
done
echo "microvm: no virtio port named {READINESS_PORT}: cannot tell the host this guest is ready" >&2
exit 1
"""

READY_UNIT = f"""[Unit]
Description=Tell the host this VM has booted (microvm.readiness)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh /{READY_SCRIPT_PATH}

[Install]
WantedBy=multi-user.target
"""
