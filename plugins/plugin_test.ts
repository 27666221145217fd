import assert from "node:assert/strict";
import { Logger } from "../log.ts";
import { TainerdError } from "./errdefs.ts";
import {
  mergeConfig,
  orderRegistrations,
  PluginSet,
  pluginUri,
  type Registration,
  skipPlugin,
} from "./plugin.ts";

const quiet = new Logger("fatal");

function reg(
  type: string,
  id: string,
  requires: string[] = [],
  init: Registration["init"] = () => ({ id }),
): Registration {
  return { type, id, requires, init };
}

function opts(extra: Partial<Parameters<PluginSet["initAll"]>[1]> = {}) {
  return {
    daemonRoot: "/nonexistent/root",
    daemonState: "/nonexistent/state",
    address: "/nonexistent/sock",
    pluginConfigs: {},
    disabled: [],
    required: [],
    log: quiet,
    ...extra,
  };
}

Deno.test("orderRegistrations() puts required types first, registration order otherwise", () => {
  const a = reg("t.grpc", "a", ["t.service"]);
  const b = reg("t.service", "b", ["t.metadata"]);
  const c = reg("t.metadata", "c");
  const d = reg("t.other", "d");
  assert.deepEqual(orderRegistrations([a, b, c, d]).map(pluginUri), [
    "t.metadata.c",
    "t.service.b",
    "t.grpc.a",
    "t.other.d",
  ]);
});

Deno.test('orderRegistrations() puts a plugin requiring "*" after every other type', () => {
  const all = reg("t.last", "x", ["*"]);
  const a = reg("t.a", "a");
  const b = reg("t.b", "b", ["t.a"]);
  assert.deepEqual(orderRegistrations([all, a, b]).map(pluginUri), ["t.a.a", "t.b.b", "t.last.x"]);
});

Deno.test("orderRegistrations() rejects a dependency cycle, naming it", () => {
  const a = reg("t.a", "a", ["t.b"]);
  const b = reg("t.b", "b", ["t.a"]);
  assert.throws(
    () => orderRegistrations([a, b]),
    (e: unknown) =>
      e instanceof TainerdError && e.kind === "InvalidArgument" &&
      /cycle: t\.a\.a -> t\.b\.b -> t\.a\.a/.test(e.message),
  );
});

Deno.test("orderRegistrations() rejects a duplicate type and id", () => {
  assert.throws(() => orderRegistrations([reg("t.a", "a"), reg("t.a", "a")]), /registered twice/);
});

Deno.test("PluginSet.initAll() records skip and error without stopping the others", async () => {
  const set = new PluginSet();
  const seen: string[] = [];
  await set.initAll([
    reg("t.a", "skipper", [], () => {
      throw skipPlugin("no btrfs here");
    }),
    reg("t.a", "broken", [], () => {
      throw new Error("disk on fire");
    }),
    reg("t.b", "fine", ["t.a"], () => {
      seen.push("fine");
      return 42;
    }),
  ], opts());
  const status = Object.fromEntries(set.records.map((r) => [r.registration.id, r.status]));
  assert.deepEqual(status, { skipper: "skip", broken: "error", fine: "ok" });
  assert.match(set.records[0].error!.message, /no btrfs here: skip plugin/);
  assert.equal(set.records[1].error!.message, "disk on fire");
  assert.deepEqual(seen, ["fine"]);
});

Deno.test("PluginSet.initAll() fails when a required plugin fails", async () => {
  const set = new PluginSet();
  await assert.rejects(
    set.initAll([reg("t.a", "x", [], () => {
      throw new Error("boom");
    })], opts({ required: ["t.a.x"] })),
    (e: unknown) =>
      e instanceof TainerdError && e.kind === "FailedPrecondition" &&
      e.message === `Required plugin "t.a.x" failed to load: boom`,
  );
});

Deno.test("PluginSet.initAll() rejects unknown required plugins and skips disabled ones", async () => {
  await assert.rejects(
    new PluginSet().initAll([], opts({ required: ["t.nope.x"] })),
    /not a known/,
  );
  const set = new PluginSet();
  await set.initAll([reg("t.a", "x"), reg("t.a", "y")], opts({ disabled: ["t.a.x"] }));
  assert.deepEqual(set.records.map((r) => r.registration.id), ["y"]);
});

Deno.test("InitContext.get() gives typed instances and fails for failed dependencies", async () => {
  const base: Registration<{ n: number }> = { type: "t.base", id: "b", init: () => ({ n: 7 }) };
  const broken: Registration<number> = {
    type: "t.broken",
    id: "x",
    init: () => {
      throw new Error("nope");
    },
  };
  let got = 0;
  const user: Registration<void> = {
    type: "t.user",
    id: "u",
    requires: ["t.base", "t.broken"],
    init: (ic) => {
      got = ic.get(base).n;
      ic.get(broken);
    },
  };
  const set = new PluginSet();
  await set.initAll([user, base, broken] as Registration[], opts());
  assert.equal(got, 7);
  const u = set.records.find((r) => r.registration.id === "u")!;
  assert.equal(u.status, "error");
  assert.match(u.error!.message, /"t\.broken\.x" is not available: nope/);
});

Deno.test("InitContext gives per-plugin root/state dirs and the merged config section", async () => {
  let seen: { root: string; state: string; config: unknown } | undefined;
  const r: Registration<void, { size: number; name: string; nested: { on: boolean } }> = {
    type: "t.cfg",
    id: "c",
    config: () => ({ size: 1, name: "x", nested: { on: false } }),
    init: (ic) => {
      seen = { root: ic.root, state: ic.state, config: ic.config };
    },
  };
  await new PluginSet().initAll(
    [r as Registration],
    opts({
      pluginConfigs: { "t.cfg.c": { size: 5n, nested: { on: true } } },
    }),
  );
  assert.deepEqual(seen, {
    root: "/nonexistent/root/t.cfg.c",
    state: "/nonexistent/state/t.cfg.c",
    config: { size: 5, name: "x", nested: { on: true } },
  });
});

Deno.test("PluginSet.initAll() rejects config for unknown plugins and unknown keys", async () => {
  await assert.rejects(
    new PluginSet().initAll([], opts({ pluginConfigs: { "t.no.such": {} } })),
    /Unknown plugin in config: plugins."t.no.such"/,
  );
  const r: Registration = { type: "t.a", id: "a", config: () => ({ x: 1 }), init: () => 1 };
  const set = new PluginSet();
  await set.initAll([r], opts({ pluginConfigs: { "t.a.a": { y: 2 } } }));
  assert.equal(set.records[0].status, "error");
  assert.match(set.records[0].error!.message, /Unknown config key plugins."t.a.a".y/);
});

Deno.test("mergeConfig() names the key with the wrong type", () => {
  assert.throws(
    () => mergeConfig({ a: { b: "text" } }, { a: { b: 1 } }, "root"),
    (e: unknown) =>
      e instanceof TainerdError &&
      e.message === "Config key root.a.b must be a number, not a string",
  );
});

Deno.test("PluginSet.closeAll() closes instances in reverse init order", async () => {
  const closed: string[] = [];
  const mk = (id: string, requires: string[] = []): Registration => ({
    type: `t.${id}`,
    id,
    requires,
    init: () => ({ close: () => void closed.push(id) }),
  });
  const set = new PluginSet();
  await set.initAll([mk("b", ["t.a"]), mk("a")], opts());
  await set.closeAll(quiet);
  assert.deepEqual(closed, ["b", "a"]);
});
