"""`microvm web` in a real headless browser (Debian's Chromium, driven by selenium with its chromedriver).

The VMs' page: in a systemd-nspawn container with real systemd, `host apply` installs
two VMs and the web unit (listening on a unix socket in a directory bound into the
container); the browser reaches it through a forwarder on 127.0.0.1. Start, the live
console, stop, as a user would click and type. The screenshots in docs/ come from here (see SCREENSHOTS).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    REPO,
    STATE,
    Host,
    address,
    kernel_settings,
    serving,
    unpacked_rootfs,
    wait_until,
    write_vm,
)

pytest.importorskip("selenium")
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1280,800"]  # fmt: skip
# The screenshots in docs/: MICROVM_WEB_SCREENSHOTS=docs pytest tests/test_web_browser.py (else they go to tmp_path)
SCREENSHOTS = os.environ.get("MICROVM_WEB_SCREENSHOTS")

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs chromium and chromium-driver (scripts/setup.sh)"
)


@contextlib.contextmanager
def browser() -> Iterator[webdriver.Chrome]:
    """Debian's Chromium through its chromedriver: nothing downloaded, the console's messages kept."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def errors(driver: webdriver.Chrome) -> list[str]:
    """What the page's JavaScript (or a failed load) logged as an error since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@needs_chromium
def test_the_page_needs_the_token(tmp_path: Path) -> None:
    with serving("--listen", "127.0.0.1:0") as (_, line), browser() as driver:
        base, token = address(line)
        driver.get(f"{base}/")
        assert "a token is needed" in driver.find_element(By.TAG_NAME, "body").text
        driver.get(f"{base}/api/vms")
        assert "a token is needed" in driver.find_element(By.TAG_NAME, "body").text
        errors(driver)  # the two refusals (401) are logged as failed loads
        driver.get(f"{base}/?token={token}")
        assert driver.current_url == f"{base}/"  # the token left the address: a cookie carries it
        wait_until("the empty list", lambda: driver.find_element(By.ID, "empty").is_displayed(), 30)
        assert errors(driver) == []


class Forwarder(socketserver.ThreadingTCPServer):
    """127.0.0.1:PORT -> a unix socket (the browser speaks TCP; the web unit listens on a unix socket)."""

    daemon_threads = True

    def __init__(self, target: Path) -> None:
        self.target = target
        super().__init__(("127.0.0.1", 0), _Pipe)


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(str(self.server.target))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
        back.start()
        pump(self.request, upstream)
        back.join()
        upstream.close()


def _row(driver: webdriver.Chrome, name: str) -> dict[str, str]:
    cells = driver.find_elements(By.CSS_SELECTOR, f'tr[data-vm="{name}"] td')
    return {"state": cells[1].text, "build": cells[2].text.split("\n")[0]} if cells else {}


def _click(driver: webdriver.Chrome, name: str, action: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'tr[data-vm="{name}"] button[data-action="{action}"]').click()


def _screen(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.CSS_SELECTOR, ".xterm-rows").text


VM = """
imports = ["common.toml"]
[guest]
hostName = "{name}"
shell = true
commands = ['echo "marker: {name} booted"']
[microvm]
mem = 256
"""


@pytest.mark.boot
@pytest.mark.xdist_group("boot")
@needs_chromium
def test_page_lists_starts_shows_the_console_and_stops_under_systemd(shared_store, tmp_path: Path) -> None:
    if not Path("/sys/fs/cgroup").is_dir() or not shutil.which("systemd-nspawn"):
        pytest.skip("needs systemd-nspawn")
    from nspawn import container

    shots = REPO / SCREENSHOTS if SCREENSHOTS else tmp_path
    work = tmp_path / "work"
    common = kernel_settings(shared_store, tmp_path) + "[microvm]\nvcpu = 1\n"
    write_vm(work, common, "common.toml")
    for name in ("alpha", "beta"):
        write_vm(work, VM.format(name=name), f"{name}.toml")
    web_socket = work / "web" / "web.sock"
    host_file = write_vm(
        work,
        f"""
        [microvm]
        stateDir = "{STATE}"
        [microvm.vms.alpha]
        config = "alpha.toml"
        autostart = false
        [microvm.vms.beta]
        config = "beta.toml"
        autostart = false
        [microvm.web]
        enable = true
        listen = "unix:{web_socket}"
        """,
        "host.toml",
    )
    rootfs, ro_binds = unpacked_rootfs(tmp_path)
    with container(rootfs, [str(shared_store.root), str(work)], ro_binds, tmp_path / "container.log") as box:
        host = Host(box, rootfs, set())
        box.wait_running()
        applied = host.microvm("host", "apply", str(host_file)).stdout
        assert "systemctl start microvm-web.service (host file)" in applied, applied
        with contextlib.suppress(AssertionError):
            wait_until("the web unit's socket", web_socket.is_socket, 60)
        assert web_socket.is_socket(), box.run("journalctl", "--no-pager", "-u", "microvm-web.service").stdout
        forwarder = Forwarder(web_socket)
        threading.Thread(target=forwarder.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{forwarder.server_address[1]}"
        try:
            with browser() as driver:
                driver.get(f"{base}/")
                wait_until("both VMs listed", lambda: _row(driver, "alpha") and _row(driver, "beta"), 30)
                assert _row(driver, "alpha") == {"state": "stopped", "build": "not booted"}
                assert _row(driver, "beta") == {"state": "stopped", "build": "not booted"}

                _click(driver, "alpha", "start")
                wait_until("alpha running", lambda: _row(driver, "alpha")["state"] == "running")
                assert host.active("alpha") and not host.active("beta")
                _click(driver, "beta", "start")
                wait_until("beta running", lambda: _row(driver, "beta")["state"] == "running")

                _click(driver, "alpha", "console")
                wait_until("alpha's boot on the console", lambda: "marker: alpha booted" in _screen(driver))
                keys = driver.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")

                def answered() -> bool:  # the shell may still be starting: type again until it answers
                    keys.send_keys("echo hello\n")
                    time.sleep(1)
                    return "hello" in [line.strip() for line in _screen(driver).splitlines()]

                wait_until("the guest's answer to echo hello", answered, 120)
                driver.save_screenshot(str(shots / "web-console.png"))
                driver.execute_script("window.scrollTo(0, 0)")
                driver.find_element(By.ID, "console-close").click()

                _click(driver, "alpha", "stop")
                wait_until("alpha stopped", lambda: _row(driver, "alpha")["state"] == "stopped")
                assert not host.active("alpha") and host.active("beta")
                assert _row(driver, "alpha")["build"] == "not booted"
                driver.save_screenshot(str(shots / "web-vms.png"))
                assert errors(driver) == []
        finally:
            forwarder.shutdown()
        journal = box.run("journalctl", "--no-pager", "-u", "microvm-web.service").stdout
        assert "start alpha: alpha: start done" in journal and "stop alpha: alpha: stop done" in journal
        assert "console alpha opened" in journal
