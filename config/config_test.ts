import assert from "node:assert/strict";
import { parse as parseToml } from "smol-toml";
import { TainerdError } from "../plugins/errdefs.ts";
import { BUILTINS } from "../plugins/builtins.ts";
import { defaultConfig, formatDefaultConfig, loadConfig, parseConfig } from "./config.ts";

function invalid(re: RegExp) {
  return (e: unknown) =>
    e instanceof TainerdError && e.kind === "InvalidArgument" && re.test(e.message);
}

Deno.test("parseConfig() fills defaults for an empty version 2 config", () => {
  assert.deepEqual(parseConfig("version = 2\n"), defaultConfig());
});

Deno.test("parseConfig() reads containerd's keys", () => {
  const cfg = parseConfig(`
version = 2
root = "/data/root"
state = "/data/state"
disabled_plugins = ["io.containerd.grpc.v1.version"]
required_plugins = ["io.containerd.grpc.v1.namespaces"]
[grpc]
  address = "/tmp/x.sock"
  gid = 1000
[debug]
  level = "debug"
[timeouts]
  "io.containerd.timeout.shim.load" = "9s"
[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.05
`);
  assert.equal(cfg.root, "/data/root");
  assert.equal(cfg.grpc.address, "/tmp/x.sock");
  assert.equal(cfg.grpc.gid, 1000);
  assert.equal(cfg.grpc.max_recv_message_size, 16 * 1024 * 1024);
  assert.equal(cfg.debug.level, "debug");
  assert.deepEqual(cfg.disabled_plugins, ["io.containerd.grpc.v1.version"]);
  assert.equal(cfg.timeouts["io.containerd.timeout.shim.load"], "9s");
  assert.equal(cfg.timeouts["io.containerd.timeout.shim.cleanup"], "5s");
  assert.deepEqual({ ...cfg.plugins["io.containerd.gc.v1.scheduler"] }, { pause_threshold: 0.05 });
});

Deno.test("parseConfig() names unknown keys", () => {
  assert.throws(
    () => parseConfig("version = 2\nrooot = '/x'"),
    invalid(/Unknown config key rooot/),
  );
  assert.throws(
    () => parseConfig("version = 2\n[grpc]\nadress = '/x'"),
    invalid(/Unknown config key grpc\.adress/),
  );
  assert.throws(() => parseConfig("version = 2\n[nope]\n"), invalid(/Unknown config key nope/));
});

Deno.test("parseConfig() names keys of the wrong type", () => {
  assert.throws(
    () => parseConfig("version = 2\n[grpc]\ngid = 'wheel'"),
    invalid(/Config key grpc\.gid must be a number, not a string/),
  );
  assert.throws(
    () => parseConfig("version = 2\ndisabled_plugins = 'x'"),
    invalid(/disabled_plugins must be a array/),
  );
  assert.throws(() => parseConfig("version = 2\nplugins = 3"), invalid(/plugins must be a table/));
});

Deno.test("parseConfig() rejects other versions, bad TOML and bad log levels", () => {
  assert.throws(() => parseConfig("version = 1"), invalid(/version must be 2/));
  assert.throws(
    () => parseConfig("version = = 2", 'config file "/c"'),
    invalid(/Cannot parse config file "\/c"/),
  );
  assert.throws(
    () => parseConfig("version = 2\n[debug]\nlevel='loud'"),
    invalid(/unknown level "loud"/),
  );
});

Deno.test("loadConfig() gives defaults for a missing optional file, NotFound otherwise", async () => {
  assert.deepEqual(await loadConfig("/nonexistent/config.toml", true), defaultConfig());
  await assert.rejects(
    loadConfig("/nonexistent/config.toml", false),
    (e: unknown) => e instanceof TainerdError && e.kind === "NotFound",
  );
});

Deno.test("formatDefaultConfig() prints TOML that parses back, with plugin sections", () => {
  const text = formatDefaultConfig(BUILTINS);
  const parsed = parseConfig(text);
  assert.equal(parsed.root, "/var/lib/tainerd");
  assert.equal(parsed.grpc.address, "/run/tainerd/tainerd.sock");
  const raw = parseToml(text) as Record<string, unknown>;
  assert.equal(raw.version, 2);
  for (const r of BUILTINS) {
    if (r.config) assert.ok(parsed.plugins[`${r.type}.${r.id}`], `${r.type}.${r.id} missing`);
  }
});
