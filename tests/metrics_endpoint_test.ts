/**
 * The Prometheus endpoint end to end: `[metrics] address` serves `/v1/metrics` with a running
 * container's cgroup figures (containerd's names and labels), the API call counter and latency
 * histogram, in a text format that parses line by line; off when not configured.
 */

import assert from "node:assert/strict";
import { cgroupMode, parseMountinfo } from "../shim/cgroups.ts";
import { busyboxRootfs } from "./fixtures.ts";
import { withDaemon } from "./harness.ts";

const unified = cgroupMode(parseMountinfo(Deno.readTextFileSync("/proc/self/mountinfo"))) ===
  "unified";

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Parses the text format strictly enough to catch malformed lines; returns samples. */
function parse(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    let m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      if (m[1] === "TYPE") {
        assert.match(m[3], /^(counter|gauge|histogram|summary|untyped)$/);
        assert.ok(!types.has(m[2]), `TYPE of ${m[2]} twice`);
        types.set(m[2], m[3]);
      }
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$/
      .exec(line);
    assert.ok(m, `malformed line: ${line}`);
    const base = m[1].replace(/_(bucket|sum|count)$/, "");
    assert.ok(types.has(m[1]) || types.has(base), `sample without TYPE: ${line}`);
    const v = Number(m[3].replace("+Inf", "Infinity"));
    assert.ok(!Number.isNaN(v), line);
    samples.set(`${m[1]}${m[2] ?? ""}`, v);
  }
  return samples;
}

Deno.test("metrics endpoint serves cgroup and API metrics in the Prometheus format", async () => {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "tainerd-rootfs-" });
  try {
    const rootfs = await busyboxRootfs(dir);
    await withDaemon(async (d) => {
      const r = await d.ctr(["run", "-d", "--rootfs", rootfs, "mx", "/bin/sleep", "1000"]);
      assert.equal(r.code, 0, r.stderr);
      try {
        const res = await fetch(`http://127.0.0.1:${port}/v1/metrics`);
        assert.equal(res.status, 200);
        assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
        const samples = parse(await res.text());
        const usage = unified
          ? "container_memory_usage_bytes"
          : "container_memory_usage_usage_bytes";
        const v = samples.get(`${usage}{container_id="mx",namespace="default"}`);
        assert.ok(v !== undefined && v > 0, `${usage} = ${v}`);
        assert.ok(
          samples.get(`container_pids_current{container_id="mx",namespace="default"}`)! >= 1,
        );
        const create =
          'grpc_method="Create",grpc_service="containerd.services.tasks.v1.Tasks",grpc_type="unary"';
        assert.ok(samples.get(`grpc_server_handled_total{grpc_code="OK",${create}}`)! >= 1);
        assert.ok(samples.get(`grpc_server_handling_seconds_bucket{${create},le="+Inf"}`)! >= 1);
        assert.ok(samples.get(`grpc_server_handling_seconds_count{${create}}`)! >= 1);
        assert.ok(samples.has(`grpc_server_handling_seconds_sum{${create}}`));
        assert.equal(samples.get("tainerd_shims_running"), 1);
        assert.ok(samples.get("process_resident_memory_bytes")! > 0);
        assert.equal(
          await fetch(`http://127.0.0.1:${port}/other`).then(async (x) => {
            await x.body?.cancel();
            return x.status;
          }),
          404,
        );
      } finally {
        await d.ctr(["tasks", "kill", "-s", "SIGKILL", "mx"]);
        for (let i = 0; i < 50; i++) {
          if ((await d.ctr(["tasks", "rm", "mx"])).code === 0) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        await d.ctr(["containers", "rm", "mx"]);
      }
    }, { config: `[metrics]\naddress = "127.0.0.1:${port}"\n` });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("metrics endpoint is off by default; a taken address leaves the daemon up", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  try {
    await withDaemon(async (d) => {
      assert.equal((await d.ctr(["version"])).code, 0);
      assert.match(
        await d.log(),
        /Cannot serve metrics on \\"127\.0\.0\.1:\d+\\": Address already in use/,
      );
    }, { config: `[metrics]\naddress = "127.0.0.1:${port}"\n` });
  } finally {
    taken.close();
  }
  const free = freePort();
  await withDaemon(async (d) => {
    assert.equal((await d.ctr(["version"])).code, 0);
    await assert.rejects(fetch(`http://127.0.0.1:${free}/v1/metrics`));
    assert.doesNotMatch(await d.log(), /metrics endpoint listening/);
  });
});

Deno.test("metrics rise while a container burns CPU and allocates memory", async () => {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "tainerd-rootfs-" });
  try {
    const rootfs = await busyboxRootfs(dir);
    await withDaemon(async (d) => {
      // Sleeps first (the baseline scrape), then doubles a string to ~10 MiB, then spins.
      const script = 'sleep 1; x=0123456789; i=0; while [ $i -lt 20 ]; do x="$x$x"; ' +
        "i=$((i+1)); done; while true; do :; done";
      const r = await d.ctr(["run", "-d", "--rootfs", rootfs, "burn", "/bin/sh", "-c", script]);
      assert.equal(r.code, 0, r.stderr);
      const key = '{container_id="burn",namespace="default"}';
      const usage = unified ? "container_memory_usage_bytes" : "container_memory_usage_usage_bytes";
      const cpu = unified ? "container_cpu_usage_usec" : "container_cpu_total_nanoseconds";
      const scrape = async () =>
        parse(await (await fetch(`http://127.0.0.1:${port}/v1/metrics`)).text());
      try {
        const before = await scrape();
        await new Promise((r) => setTimeout(r, 3500));
        const after = await scrape();
        const m0 = before.get(`${usage}${key}`)!;
        const m1 = after.get(`${usage}${key}`)!;
        const c0 = before.get(`${cpu}${key}`)!;
        const c1 = after.get(`${cpu}${key}`)!;
        assert.ok(m0 !== undefined && c0 !== undefined, `${usage}, ${cpu} present`);
        assert.ok(m1 - m0 > 8 * 1024 * 1024, `memory rose by ${m1 - m0} bytes`);
        assert.ok(c1 > c0, `cpu rose from ${c0} to ${c1}`);
      } finally {
        await d.ctr(["tasks", "kill", "-s", "SIGKILL", "burn"]);
        for (let i = 0; i < 50; i++) {
          if ((await d.ctr(["tasks", "rm", "burn"])).code === 0) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        await d.ctr(["containers", "rm", "burn"]);
      }
    }, { config: `[metrics]\naddress = "127.0.0.1:${port}"\n` });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
