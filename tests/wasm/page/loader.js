// Bridge between the fixture (tests/wasm/conftest.py) and the real FNN WebAssembly node.
//
// 1. GET  /__bridge/config          -> {config, prefix, start_timeout_ms}
// 2. start the node (bounded: start() never settles when startup fails)
// 3. POST /__bridge/started         <- {ok, error}
// 4. loop: GET /__bridge/next (long poll; 204 = nothing yet) -> {id, method, params}
//          POST /__bridge/result    <- {id, ok, data} | {id, ok: false, error, error_kind}
//
// `error` is exactly what invokeCommand rejected with; the worker turns every failure into
// the string `${e}`, so it is normally a string. Anything else (an ErrorEvent when the
// worker itself dies) is reported as "<kind>: <text>" with error_kind set.
import { Fiber, randomSecretKey } from "/pkg/dist/index.js";

async function post(path, body) {
  await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

function log(line) {
  return post("/__bridge/log", { line: String(line) }).catch(() => {});
}

function describe(e) {
  if (typeof e === "string") return { error: e, error_kind: "string" };
  if (e instanceof Error) return { error: `${e}`, error_kind: "Error" };
  if (e && typeof e.message === "string") {
    return { error: `${e.constructor?.name ?? "object"}: ${e.message}`, error_kind: "event" };
  }
  return { error: `${e}`, error_kind: typeof e };
}

async function main() {
  const cfg = await (await fetch("/__bridge/config")).json();
  log(`crossOriginIsolated=${self.crossOriginIsolated}`);
  const fiber = new Fiber();
  const key = randomSecretKey();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`start() did not resolve within ${cfg.start_timeout_ms} ms`)),
      cfg.start_timeout_ms,
    );
  });
  try {
    await Promise.race([
      fiber.start(cfg.config, key, key, undefined, "info", cfg.prefix),
      timeout,
    ]);
  } catch (e) {
    await post("/__bridge/started", { ok: false, ...describe(e) });
    return;
  } finally {
    clearTimeout(timer);
  }
  await post("/__bridge/started", { ok: true });

  for (;;) {
    let resp;
    try {
      resp = await fetch("/__bridge/next");
    } catch (e) {
      return; // the fixture has gone away
    }
    if (resp.status === 410) return;
    if (resp.status !== 200) continue;
    const cmd = await resp.json();
    let answer;
    try {
      const data = await fiber.invokeCommand(cmd.method, cmd.params);
      answer = { id: cmd.id, ok: true, data: data === undefined ? null : data };
    } catch (e) {
      answer = { id: cmd.id, ok: false, ...describe(e) };
    }
    await post("/__bridge/result", answer);
  }
}

window.addEventListener("unhandledrejection", (ev) => log(`unhandledrejection: ${ev.reason}`));
main().catch((e) => post("/__bridge/started", { ok: false, ...describe(e) }));
