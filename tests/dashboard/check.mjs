#!/usr/bin/env node
// Headless check of the gateway dashboard. Zero dependencies: Node's built-in WebSocket (global in
// Node 22; on Node 20.10+ this script re-runs itself with --experimental-websocket) talks the Chrome
// DevTools Protocol to a headless Chromium.
//
//   node tests/dashboard/check.mjs <dashboard-url> <screenshot.png> [chromium-binary]
//
// Prints one JSON object on stdout (see tests/dashboard/README.md) and exits 0 when the page set
// its loaded marker with no console errors, 1 otherwise, 2 on bad usage. Chromium and its profile
// directory are removed on every path. Environment: CHECK_TIMEOUT_MS (default 20000) bounds the
// wait for the page; CHECK_SETTLE_MS (default 500) is how long to keep listening for late console
// errors after the page loaded.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const started = Date.now();
const [url, shotPath, binArg] = process.argv.slice(2);
const report = { loaded: false, consoleErrors: [], metrics: {}, title: null, pageError: null, missing: [], conflicts: [],
  screenshot: null, error: null, url: url ?? null, elapsedMs: 0 };

function finish(code) {
  report.elapsedMs = Date.now() - started;
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exitCode = code;
}

if (!url || !shotPath) {
  process.stderr.write("usage: node tests/dashboard/check.mjs <dashboard-url> <screenshot.png> [chromium-binary]\n");
  report.error = "bad usage";
  finish(2);
  process.exit(2);
}

// Node 20: the WebSocket global sits behind a flag; run again with it (signals are passed on).
if (typeof WebSocket === "undefined") {
  if (process.env.DASHBOARD_CHECK_REEXEC) {
    report.error = `Node ${process.version} has no WebSocket (Node 22, or 20.10+ with --experimental-websocket, is needed)`;
    finish(1);
    process.exit(1);
  }
  const child = spawn(process.execPath, ["--experimental-websocket", "--no-warnings", ...process.execArgv, process.argv[1], ...process.argv.slice(2)],
    { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, DASHBOARD_CHECK_REEXEC: "1" } });
  let wrote = false;
  child.stdout.on("data", (d) => { wrote = true; process.stdout.write(d); });
  for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => child.kill(sig));
  const code = await new Promise((r) => child.on("close", (c) => r(c)));
  if (!wrote) {
    report.error = `could not re-run Node ${process.version} with --experimental-websocket (exit ${code})`;
    finish(1);
  }
  process.exit(wrote ? code ?? 1 : 1);
}

const TIMEOUT = Number(process.env.CHECK_TIMEOUT_MS) || 20000;
const SETTLE = Number(process.env.CHECK_SETTLE_MS ?? 500);
const WIDTH = 1280, HEIGHT = 2000, MAX_SHOT_HEIGHT = 10000;
const bin = binArg || process.env.CHROMIUM || "/usr/bin/chromium";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let chrome = null, profile = null, ws = null, browser = null, cleaned = false;

async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  const alive = () => chrome && chrome.exitCode === null && chrome.signalCode === null;
  if (alive()) {
    const gone = new Promise((r) => chrome.once("exit", r));
    // Ask politely first (Chromium then reaps its helpers), then end its whole process group.
    if (browser) { browser.send("Browser.close", {}, undefined, 2000).catch(() => {}); await Promise.race([gone, sleep(3000)]); }
    try { process.kill(-chrome.pid, "SIGKILL"); } catch { /* the group is gone */ }
    if (alive()) { try { chrome.kill("SIGKILL"); } catch { /* gone */ } await Promise.race([gone, sleep(5000)]); }
  }
  try { ws?.close(); } catch { /* already closed */ }
  if (profile) {
    for (let i = 0; i < 5; i++) {
      try { rmSync(profile, { recursive: true, force: true }); break; } catch { await sleep(200); }
    }
  }
}

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, async () => {
    report.error = report.error || `interrupted (${sig})`;
    await cleanup();
    finish(1);
    process.exit(1);
  });
}

function launch() {
  profile = mkdtempSync(join(tmpdir(), "dashboard-check-"));
  const args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0", `--user-data-dir=${profile}`,
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-dev-shm-usage", "--mute-audio",
    "--hide-scrollbars", "--force-color-profile=srgb", `--window-size=${WIDTH},${HEIGHT}`, "about:blank"];
  chrome = spawn(bin, args, { detached: true, stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    let tail = "";
    const t = setTimeout(() => reject(new Error(`Chromium printed no DevTools URL within 15 s: ${tail.slice(-500)}`)), 15000);
    chrome.once("error", (e) => { clearTimeout(t); reject(new Error(`cannot start ${bin}: ${e.message}`)); });
    chrome.once("exit", (code, sig) => { clearTimeout(t); reject(new Error(`Chromium exited (${code ?? sig}): ${tail.slice(-500)}`)); });
    chrome.stderr.setEncoding("utf8");
    chrome.stderr.on("data", (d) => {
      tail = (tail + d).slice(-4000);
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(tail);
      if (m) { clearTimeout(t); resolve(m[1]); }
    });
  });
}

function connect(wsUrl) {
  return new Promise((resolve, reject) => {
    const sock = new WebSocket(wsUrl);
    const pending = new Map(), listeners = [];
    let next = 0;
    const cdp = {
      send(method, params = {}, sessionId, ms = 15000) {
        return new Promise((res, rej) => {
          const id = ++next;
          const t = setTimeout(() => { pending.delete(id); rej(new Error(`${method}: no answer in ${ms} ms`)); }, ms);
          pending.set(id, { res, rej, t, method });
          sock.send(JSON.stringify(sessionId ? { id, method, params, sessionId } : { id, method, params }));
        });
      },
      on(fn) { listeners.push(fn); },
    };
    sock.onopen = () => resolve(cdp);
    sock.onerror = () => reject(new Error(`cannot connect to ${wsUrl}`));
    sock.onclose = () => { for (const p of pending.values()) { clearTimeout(p.t); p.rej(new Error(`${p.method}: DevTools connection closed`)); } pending.clear(); };
    sock.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(typeof ev.data === "string" ? ev.data : Buffer.from(ev.data).toString("utf8")); } catch { return; }
      if (msg.id && pending.has(msg.id)) {
        const p = pending.get(msg.id);
        pending.delete(msg.id);
        clearTimeout(p.t);
        if (msg.error) p.rej(new Error(`${p.method}: ${msg.error.message}`)); else p.res(msg.result);
      } else if (msg.method) for (const fn of listeners) fn(msg);
    };
    ws = sock;
  });
}

function argText(a) {
  if (!a) return "";
  if (a.type === "string") return a.value;
  if ("value" in a) return JSON.stringify(a.value);
  return a.description || a.unserializableValue || a.type;
}

const EXTRACT = `(() => {
  const b = document.body || document.documentElement, metrics = {}, missing = [], conflicts = [];
  for (const e of document.querySelectorAll("[data-metric]")) {
    const k = e.getAttribute("data-metric"), raw = e.getAttribute("data-value");
    if (raw === null) { missing.push(k); continue; }
    let v; try { v = JSON.parse(raw); } catch { v = raw; }
    if (Object.prototype.hasOwnProperty.call(metrics, k) && JSON.stringify(metrics[k]) !== JSON.stringify(v)) conflicts.push(k);
    metrics[k] = v;
  }
  return { metrics, missing, conflicts, title: document.title, loaded: b.dataset.loaded === "1", pageError: b.dataset.error || null,
    height: Math.ceil(Math.max(document.documentElement.scrollHeight, b.scrollHeight)) };
})()`;

async function main() {
  const wsUrl = await launch();
  const cdp = await connect(wsUrl);
  browser = cdp;
  const { targetId } = await cdp.send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await cdp.send("Target.attachToTarget", { targetId, flatten: true });
  const S = (m, p, ms) => cdp.send(m, p, sessionId, ms);
  cdp.on((msg) => {
    if (msg.sessionId !== sessionId) return;
    const p = msg.params || {};
    if (msg.method === "Runtime.consoleAPICalled" && (p.type === "error" || p.type === "assert")) {
      report.consoleErrors.push(`console.${p.type}: ${(p.args || []).map(argText).join(" ")}`);
    } else if (msg.method === "Runtime.exceptionThrown") {
      const d = p.exceptionDetails || {};
      report.consoleErrors.push(`exception: ${d.exception?.description || d.text || "unknown"}${d.url ? ` (${d.url}:${d.lineNumber + 1})` : ""}`);
    } else if (msg.method === "Log.entryAdded" && p.entry?.level === "error") {
      const e = p.entry;
      report.consoleErrors.push(`log[${e.source}]: ${e.text}${e.url ? ` (${e.url})` : ""}`);
    }
  });
  await S("Runtime.enable");
  await S("Log.enable");
  await S("Page.enable");
  await S("Emulation.setDeviceMetricsOverride", { width: WIDTH, height: HEIGHT, deviceScaleFactor: 1, mobile: false });
  const nav = await S("Page.navigate", { url });
  if (nav.errorText) throw new Error(`navigation failed: ${nav.errorText}`);

  const deadline = Date.now() + TIMEOUT;
  let state = null;
  for (;;) {
    try {
      state = (await S("Runtime.evaluate", { expression: EXTRACT, returnByValue: true }, 5000)).result?.value ?? null;
    } catch { state = null; } // the document may be between navigations
    if (state && (state.loaded || state.pageError)) break;
    if (Date.now() > deadline) break;
    await sleep(150);
  }
  if (state?.loaded && SETTLE > 0) {
    await sleep(SETTLE);
    try { state = (await S("Runtime.evaluate", { expression: EXTRACT, returnByValue: true }, 5000)).result?.value ?? state; } catch { /* keep */ }
  }
  if (state) Object.assign(report, { loaded: state.loaded, metrics: state.metrics, missing: state.missing, conflicts: state.conflicts,
    title: state.title, pageError: state.pageError });
  if (!state?.loaded && !state?.pageError) report.error = `the page did not set data-loaded within ${TIMEOUT} ms`;

  // Full page (bounded), at 1280 px wide.
  const height = Math.min(Math.max(state?.height || HEIGHT, 600), MAX_SHOT_HEIGHT);
  await S("Emulation.setDeviceMetricsOverride", { width: WIDTH, height, deviceScaleFactor: 1, mobile: false });
  await sleep(100);
  const shot = await S("Page.captureScreenshot", { format: "png", captureBeyondViewport: false, fromSurface: true }, 30000);
  writeFileSync(shotPath, Buffer.from(shot.data, "base64"));
  report.screenshot = shotPath;
}

const hard = setTimeout(async () => {
  report.error = report.error || `gave up after ${TIMEOUT + 30000} ms`;
  await cleanup();
  finish(1);
  process.exit(1);
}, TIMEOUT + 30000);

try {
  await main();
} catch (e) {
  report.error = report.error || (e && e.message) || String(e);
}
clearTimeout(hard);
await cleanup();
finish(report.loaded && !report.consoleErrors.length && !report.error ? 0 : 1);
process.exit(process.exitCode);
