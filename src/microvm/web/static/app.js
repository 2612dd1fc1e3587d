// The page of `microvm web`: the VM table (refreshed from /api/vms), action buttons, one live console.
"use strict";

const ACTIONS = ["start", "stop", "restart", "suspend", "update", "console"];
const statusLine = document.getElementById("status");
let terminal = null;
let socket = null;

function say(text, error = false) {
  statusLine.textContent = text;
  statusLine.className = error ? "error" : "";
}

function uptime(seconds) {
  if (seconds === null) return "";
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function cell(row, text, className = "") {
  const td = row.insertCell();
  td.textContent = text;
  td.className = className;
  return td;
}

function render(vms) {
  const body = document.querySelector("#vms tbody");
  body.replaceChildren();
  document.getElementById("empty").hidden = vms.length > 0;
  for (const vm of vms) {
    const row = body.insertRow();
    row.dataset.vm = vm.name;
    document.getElementById("node").textContent = vm.node;
    cell(row, vm.name, "name");
    cell(row, vm.running ? "running" : "stopped", `state ${vm.running ? "running" : "stopped"}`);
    const build = cell(row, vm.state, `build ${vm.state.replace(" ", "-")}`);
    if (vm.next) {
      const next = document.createElement("span");
      next.className = "next";
      next.textContent = vm.next;
      build.append(document.createElement("br"), next);
    }
    cell(row, vm.hypervisor ?? "");
    cell(row, vm.vcpu ?? "");
    cell(row, vm.mem ? `${vm.mem} MiB` : "");
    cell(row, vm.addresses.join(", "));
    cell(row, uptime(vm.uptime));
    const actions = row.insertCell();
    for (const action of ACTIONS) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = action;
      button.dataset.action = action;
      button.disabled = ["stop", "restart", "suspend"].includes(action) ? !vm.running : action === "start" && vm.running;
      button.addEventListener("click", () => (action === "console" ? openConsole(vm.name) : act(vm.name, action)));
      actions.append(button);
    }
  }
}

async function refresh() {
  try {
    const response = await fetch("/api/vms", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    render(await response.json());
  } catch (error) {
    say(`cannot list the VMs: ${error.message}`, true);
  }
}

async function act(name, action) {
  say(`${action} ${name} ...`);
  document.querySelectorAll(`tr[data-vm="${CSS.escape(name)}"] button`).forEach((b) => (b.disabled = true));
  const response = await fetch(`/api/vms/${encodeURIComponent(name)}/${action}`, { method: "POST" });
  const answer = await response.json();
  if (response.ok) say(answer.message);
  else say(answer.error + (answer.hint ? ` (${answer.hint})` : ""), true);
  await refresh();
}

function closeConsole() {
  if (socket) socket.close();
  if (terminal) terminal.dispose();
  socket = terminal = null;
  document.getElementById("console-pane").hidden = true;
}

function openConsole(name) {
  closeConsole();
  document.getElementById("console-pane").hidden = false;
  document.getElementById("console-name").textContent = name;
  document.getElementById("console-log").href = `/api/vms/${encodeURIComponent(name)}/log`;
  terminal = new Terminal({ convertEol: true, scrollback: 5000, fontSize: 13 });
  const fit = new FitAddon.FitAddon();
  terminal.loadAddon(fit);
  terminal.open(document.getElementById("terminal"));
  fit.fit();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/api/vms/${encodeURIComponent(name)}/console`);
  socket.binaryType = "arraybuffer";
  const mine = socket;
  socket.onmessage = (event) => terminal.write(new Uint8Array(event.data));
  socket.onclose = (event) => {
    if (socket === mine && terminal) terminal.write(`\r\n[console closed${event.reason ? ": " + event.reason : ""}]\r\n`);
  };
  terminal.onData((keys) => mine.readyState === WebSocket.OPEN && mine.send(keys));
  terminal.focus();
}

document.getElementById("console-close").addEventListener("click", closeConsole);
refresh();
setInterval(refresh, 2000);
