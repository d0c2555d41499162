// Headless dashboard check, no npm packages: Node 22's WebSocket speaks the Chrome DevTools
// Protocol to a headless Chromium.
//
//   node check_dashboard.mjs <dashboard-url> <screenshot.png> [chromium]
//
// Prints one JSON object: {"loaded", "title", "consoleErrors": [...], "metrics": {path: value}}
// where `metrics` maps each element's data-metric to its data-value (the raw JSON number).
// Exits 0 when the page loaded without console errors, 1 otherwise. Chromium is always killed.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, shotPath, chromium = "chromium"] = process.argv.slice(2);
if (!url || !shotPath) {
  console.error("usage: node check_dashboard.mjs <url> <screenshot.png> [chromium]");
  process.exit(2);
}
const profile = mkdtempSync(join(tmpdir(), "eg-chromium-"));
const browser = spawn(chromium, [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
  "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
  `--user-data-dir=${profile}`, "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });

const result = { loaded: false, title: null, consoleErrors: [], metrics: {} };
let finished = false;
function finish(code) {
  if (finished) return;
  finished = true;
  try { browser.kill("SIGKILL"); } catch {}
  try { rmSync(profile, { recursive: true, force: true }); } catch {}
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}
const deadline = setTimeout(() => { result.consoleErrors.push("checker timed out"); finish(1); }, 45_000);
browser.on("exit", () => { if (!finished) { result.consoleErrors.push("chromium exited early"); finish(1); } });
browser.on("error", (e) => { result.consoleErrors.push(`cannot start chromium: ${e.message}`); finish(1); });

const wsUrl = await new Promise((resolve) => {
  let buf = "";
  browser.stderr.on("data", (d) => {
    buf += d.toString();
    const m = buf.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
});

const ws = new WebSocket(wsUrl);
await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
let nextId = 1;
const pending = new Map();
let session = null;
ws.onmessage = (ev) => {
  const msg = JSON.parse(ev.data);
  if (msg.id && pending.has(msg.id)) {
    const { resolve, reject } = pending.get(msg.id);
    pending.delete(msg.id);
    msg.error ? reject(new Error(msg.error.message)) : resolve(msg.result);
    return;
  }
  if (msg.sessionId !== session) return;
  if (msg.method === "Runtime.consoleAPICalled" && (msg.params.type === "error" || msg.params.type === "assert")) {
    result.consoleErrors.push(msg.params.args.map((a) => a.value ?? a.description ?? "").join(" "));
  } else if (msg.method === "Runtime.exceptionThrown") {
    const d = msg.params.exceptionDetails;
    result.consoleErrors.push(d.exception?.description ?? d.text);
  } else if (msg.method === "Log.entryAdded" && msg.params.entry.level === "error") {
    result.consoleErrors.push(`${msg.params.entry.source}: ${msg.params.entry.text} ${msg.params.entry.url ?? ""}`.trim());
  }
};
const send = (method, params = {}, sessionId = session) => new Promise((resolve, reject) => {
  const id = nextId++;
  pending.set(id, { resolve, reject });
  ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
});
const evaluate = async (expression) => (await send("Runtime.evaluate", { expression, returnByValue: true })).result.value;

try {
  const { targetId } = await send("Target.createTarget", { url: "about:blank" }, null);
  ({ sessionId: session } = await send("Target.attachToTarget", { targetId, flatten: true }, null));
  await send("Runtime.enable");
  await send("Log.enable");
  await send("Page.enable");
  await send("Emulation.setDeviceMetricsOverride", { width: 1280, height: 1600, deviceScaleFactor: 1, mobile: false });
  await send("Page.navigate", { url });
  const until = Date.now() + 20_000;
  while (Date.now() < until) {
    if (await evaluate("document.body ? document.body.dataset.loaded || '' : ''") === "1") { result.loaded = true; break; }
    await new Promise((r) => setTimeout(r, 200));
  }
  await new Promise((r) => setTimeout(r, 300)); // let late console messages arrive
  result.title = await evaluate("document.title");
  result.metrics = await evaluate(`Object.fromEntries([...document.querySelectorAll("[data-metric]")]
    .map((e) => [e.dataset.metric, JSON.parse(e.dataset.value ?? "null")]))`);
  if (await evaluate("document.body.dataset.error || ''") === "1") {
    result.consoleErrors.push("the page reported a failed API call: " + await evaluate("document.getElementById('error').textContent"));
  }
  const shot = await send("Page.captureScreenshot", { format: "png", captureBeyondViewport: true });
  writeFileSync(shotPath, Buffer.from(shot.data, "base64"));
} catch (e) {
  result.consoleErrors.push(`checker: ${e.message}`);
}
clearTimeout(deadline);
finish(result.loaded && result.consoleErrors.length === 0 ? 0 : 1);
