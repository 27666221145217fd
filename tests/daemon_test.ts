/**
 * The daemon end to end: the real ctr and curl against a real daemon process.
 */

import assert from "node:assert/strict";
import { curlJson, delay, run, TestDaemon, withDaemon } from "./harness.ts";
import { VERSION } from "../version.ts";

Deno.test("ctr version shows tainerd's server version and revision", () =>
  withDaemon(async (d) => {
    const r = await d.ctr(["version"]);
    assert.equal(r.code, 0, r.stderr);
    const server = r.stdout.slice(r.stdout.indexOf("Server:"));
    assert.match(server, new RegExp(`Version:\\s+${VERSION.replaceAll(".", "\\.")}\\n`));
    assert.match(server, /Revision:\s+\S+/);
    assert.match(server, /UUID: [0-9a-f-]{36}/);
  }));

Deno.test("ctr plugins ls lists every builtin plugin as ok", () =>
  withDaemon(async (d) => {
    const r = await d.ctr(["plugins", "ls"]);
    assert.equal(r.code, 0, r.stderr);
    const rows = r.stdout.trim().split("\n").slice(1).map((l) => l.trim().split(/\s+/));
    const byId = new Map(rows.map((cols) => [`${cols[0]}.${cols[1]}`, cols[3]]));
    for (
      const id of [
        "io.containerd.event.v1.exchange",
        "io.containerd.metadata.v1.sqlite",
        "io.containerd.grpc.v1.namespaces",
        "io.containerd.grpc.v1.version",
        "io.containerd.grpc.v1.introspection",
        "io.containerd.grpc.v1.healthcheck",
      ]
    ) assert.equal(byId.get(id), "ok", `${id} in:\n${r.stdout}`);
    const filtered = await d.ctr(["plugins", "ls", "type==io.containerd.grpc.v1"]);
    assert.ok(
      filtered.stdout.trim().split("\n").slice(1).every((l) =>
        l.startsWith("io.containerd.grpc.v1")
      ),
    );
  }));

Deno.test("ctr plugins ls shows a disabled plugin's absence and a failing one as error", () =>
  withDaemon(async (d) => {
    const r = await d.ctr(["plugins", "ls"]);
    assert.ok(!r.stdout.includes("healthcheck"), r.stdout);
    const v = await d.ctr(["plugins", "ls", "id==version"]);
    assert.match(v.stdout, /io\.containerd\.grpc\.v1\s+version\s+-\s+ok/);
  }, { config: `disabled_plugins = ["io.containerd.grpc.v1.healthcheck"]` }));

Deno.test("the server UUID survives a daemon restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-test-" });
  const d = new TestDaemon(dir);
  try {
    await d.start();
    const c1 = d.client();
    const first = (await c1.introspection.server({})).uuid;
    c1.close();
    await d.stop();
    await d.start();
    const c2 = d.client();
    assert.equal((await c2.introspection.server({})).uuid, first);
    c2.close();
  } finally {
    await d.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ctr namespaces create, ls, label and remove round-trip", () =>
  withDaemon(async (d) => {
    let r = await d.ctr(["namespaces", "create", "web", "team=a", "tier=front"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["namespaces", "ls"]);
    assert.match(r.stdout, /^web\s+team=a,tier=front\s*$/m);
    r = await d.ctr(["namespaces", "label", "web", "team=b", "tier="]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["namespaces", "ls", "-q"]);
    assert.deepEqual(r.stdout.trim().split("\n"), ["web"]);
    r = await d.ctr(["namespaces", "ls"]);
    assert.match(r.stdout, /^web\s+team=b\s*$/m);
    r = await d.ctr(["namespaces", "create", "web"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /already exists/);
    r = await d.ctr(["namespaces", "remove", "web"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "web");
    r = await d.ctr(["namespaces", "ls", "-q"]);
    assert.equal(r.stdout.trim(), "");
    // Removing a missing namespace: ctr tolerates NotFound (as with containerd); the
    // NotFound itself is checked through our CLI below.
  }));

Deno.test("ctr gets clear errors for invalid namespace names", () =>
  withDaemon(async (d) => {
    const r = await d.ctr(["namespaces", "create", "bad name"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /"bad name" is invalid.*: invalid argument/);
    const r2 = await d.ctr(["namespaces", "ls"], { namespace: "../etc" });
    assert.equal(r2.code, 0, "listing does not need a namespace");
  }));

Deno.test("our CLI drives the same daemon: version, plugins ls, namespaces", () =>
  withDaemon(async (d) => {
    let r = await d.cli(["version"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Server:\n\s+Version:\s+\S+/);
    r = await d.cli(["plugins", "ls"]);
    assert.match(r.stdout, /io\.containerd\.grpc\.v1\s+version\s+-\s+ok/);
    r = await d.cli(["namespaces", "create", "cli-ns", "k=v"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(["ns", "label", "cli-ns", "k=w", "x=y"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(["ns", "ls"]);
    assert.match(r.stdout, /^cli-ns\s+k=w,x=y$/m);
    r = await d.cli(["ns", "rm", "cli-ns"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(["ns", "rm", "cli-ns"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tainerd: Namespace "cli-ns" not found\n$/);
  }));

Deno.test("the CLI takes the address from TAINERD_ADDRESS and CONTAINERD_ADDRESS", () =>
  withDaemon(async (d) => {
    const main = new URL("../main.ts", import.meta.url).pathname;
    for (const name of ["TAINERD_ADDRESS", "CONTAINERD_ADDRESS"]) {
      const r = await run(Deno.execPath(), ["run", "-A", main, "ns", "ls", "-q"], {
        env: { [name]: d.address },
      });
      assert.equal(r.code, 0, `${name}: ${r.stderr}`);
    }
    const r = await run(Deno.execPath(), ["run", "-A", main, "-a", "/nonexistent.sock", "version"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tainerd: .+/);
    assert.ok(!r.stderr.includes("    at "), "no stack trace");
  }));

Deno.test("Connect JSON through curl answers the same services", () =>
  withDaemon(async (d) => {
    let r = await curlJson(d.address, "/containerd.services.version.v1.Version/Version", "{}");
    assert.match(r.stdout, /^\{"version":"[^"]+","revision":"[^"]+"\}\n200$/);
    r = await curlJson(
      d.address,
      "/containerd.services.namespaces.v1.Namespaces/Create",
      JSON.stringify({ namespace: { name: "viajson", labels: { a: "b" } } }),
    );
    assert.equal(r.stdout, `{"namespace":{"name":"viajson","labels":{"a":"b"}}}\n200`);
    r = await curlJson(
      d.address,
      "/containerd.services.namespaces.v1.Namespaces/List",
      JSON.stringify({ filter: "labels.a==b" }),
    );
    assert.match(r.stdout, /"name":"viajson"/);
    r = await curlJson(d.address, "/grpc.health.v1.Health/Check", "{}");
    assert.equal(r.stdout, `{"status":"SERVING"}\n200`);
    r = await curlJson(
      d.address,
      "/containerd.services.introspection.v1.Introspection/Plugins",
      JSON.stringify({ filters: ["id==version"] }),
    );
    const plugins = JSON.parse(r.stdout.split("\n")[0]).plugins;
    assert.deepEqual(plugins.map((p: { id: string }) => p.id), ["version"]);
  }));

Deno.test("bad input gets clear codes and the daemon stays up", () =>
  withDaemon(async (d) => {
    let r = await curlJson(
      d.address,
      "/containerd.services.namespaces.v1.Namespaces/Create",
      "{bad",
    );
    assert.match(r.stdout, /"code":"invalid_argument"/);
    r = await curlJson(
      d.address,
      "/containerd.services.namespaces.v1.Namespaces/Create",
      JSON.stringify({ namespace: { name: 42 } }),
    );
    assert.match(r.stdout, /"code":"invalid_argument"/);
    r = await curlJson(d.address, "/containerd.services.nope.v1.Nope/Do", "{}");
    assert.match(r.stdout, /"code":"unimplemented".*\n404$/);
    r = await curlJson(
      d.address,
      "/containerd.services.namespaces.v1.Namespaces/Get",
      JSON.stringify({ name: "../../etc" }),
    );
    assert.match(r.stdout, /"code":"invalid_argument"/);
    // Malformed protobuf over gRPC: Internal with the parse error, exactly as grpc-go (and so
    // containerd) answers "error unmarshalling request".
    const garbage = new Uint8Array([0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]);
    const g = await run("curl", [
      "-s",
      "-o",
      "/dev/null",
      "-v",
      "--http2-prior-knowledge",
      "--unix-socket",
      d.address,
      "-H",
      "content-type: application/grpc",
      "-H",
      "te: trailers",
      "--data-binary",
      "@-",
      "http://localhost/containerd.services.namespaces.v1.Namespaces/Create",
    ], { stdin: garbage });
    assert.match(g.stderr, /grpc-status: 13/i);
    assert.match(g.stderr, /grpc-message: parse%20binary/i);
    // An unknown method over gRPC: Unimplemented in a trailers-only response.
    const unknown = await run("curl", [
      "-s",
      "-o",
      "/dev/null",
      "-v",
      "--http2-prior-knowledge",
      "--unix-socket",
      d.address,
      "-H",
      "content-type: application/grpc",
      "-H",
      "te: trailers",
      "--data-binary",
      "@-",
      "http://localhost/containerd.services.nope.v1.Nope/Do",
    ], { stdin: new Uint8Array([0, 0, 0, 0, 0]) });
    assert.match(unknown.stderr, /grpc-status: 12/i);
    assert.match(unknown.stderr, /grpc-message: Unknown%20method/i);
    // Still serving.
    const v = await d.ctr(["version"]);
    assert.equal(v.code, 0, v.stderr);
  }));

Deno.test("a second daemon on the same root or socket refuses to start", () =>
  withDaemon(async (d) => {
    const other = await Deno.makeTempDir({ prefix: "tainerd-test-" });
    try {
      const main = new URL("../main.ts", import.meta.url).pathname;
      const sameRoot = await run(Deno.execPath(), [
        "run",
        "-A",
        main,
        "daemon",
        "--address",
        `${other}/s.sock`,
        "--root",
        d.root,
        "--state",
        `${other}/state`,
      ]);
      assert.equal(sameRoot.code, 1);
      assert.match(sameRoot.stderr, /Another tainerd daemon is using root/);
      const sameSocket = await run(Deno.execPath(), [
        "run",
        "-A",
        main,
        "daemon",
        "--address",
        d.address,
        "--root",
        `${other}/root`,
        "--state",
        `${other}/state`,
      ]);
      assert.equal(sameSocket.code, 1);
      assert.match(sameSocket.stderr, /another daemon is serving on it/);
      const v = await d.ctr(["version"]);
      assert.equal(v.code, 0, "the first daemon is unharmed");
    } finally {
      await Deno.remove(other, { recursive: true });
    }
  }));

Deno.test("a stale socket from a crashed daemon is replaced; the socket is mode 0660", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-test-" });
  const d = new TestDaemon(dir);
  try {
    await d.start();
    await d.kill();
    assert.ok((await Deno.lstat(d.address)).isSocket, "the crash left the socket behind");
    await d.start();
    assert.equal((await Deno.stat(d.address)).mode! & 0o777, 0o660);
    const r = await d.ctr(["version"]);
    assert.equal(r.code, 0, r.stderr);
  } finally {
    await d.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SIGTERM and SIGINT shut the daemon down cleanly and remove the socket", async () => {
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    const dir = await Deno.makeTempDir({ prefix: "tainerd-test-" });
    const d = new TestDaemon(dir);
    try {
      await d.start();
      const st = await d.stop(sig);
      assert.equal(st?.code, 0, `${sig}: ${await d.log()}`);
      await assert.rejects(Deno.lstat(d.address), Deno.errors.NotFound);
      assert.match(await d.log(), /tainerd stopped/);
    } finally {
      await d.stop();
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("the daemon rejects a config with an unknown key, naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-test-" });
  const d = new TestDaemon(dir);
  try {
    await assert.rejects(
      d.start({ config: "[grpc]\nadress = '/x'" }),
      /Unknown config key grpc\.adress/,
    );
  } finally {
    await d.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("API calls are logged at debug with method, namespace, duration and code", () =>
  withDaemon(async (d) => {
    await d.ctr(["namespaces", "create", "logged"]);
    await delay(100);
    const log = await d.log();
    assert.match(
      log,
      /level=debug msg="API call" method=\/containerd\.services\.namespaces\.v1\.Namespaces\/Create namespace=default duration=[\d.]+ms code=ok/,
    );
  }));
