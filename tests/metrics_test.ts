/**
 * Task metrics end to end with the real ctr: `ctr tasks metrics` (table and JSON) decodes the
 * cgroup statistics tainerd's shim returns, as it does containerd's.
 */

import assert from "node:assert/strict";
import { cgroupMode, parseMountinfo } from "../shim/cgroups.ts";
import { busyboxRootfs } from "./fixtures.ts";
import { delay, type TestDaemon, withDaemon } from "./harness.ts";

const LIMIT = 64 * 1024 * 1024;

const unified = cgroupMode(parseMountinfo(Deno.readTextFileSync("/proc/self/mountinfo"))) ===
  "unified";

async function withRootfs(fn: (d: TestDaemon, rootfs: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-rootfs-" });
  try {
    const rootfs = await busyboxRootfs(dir);
    await withDaemon((d) => fn(d, rootfs));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Kills and removes a container, whatever state it is in. */
async function remove(d: TestDaemon, id: string): Promise<void> {
  await d.ctr(["tasks", "kill", "-s", "SIGKILL", id]);
  for (let i = 0; i < 50; i++) {
    const r = await d.ctr(["tasks", "rm", id]);
    if (r.code === 0 || /not found/.test(r.stderr)) break;
    await delay(100);
  }
  await d.ctr(["containers", "rm", id]);
}

/** The value of one metric row of `ctr tasks metrics`' table. */
function row(table: string, metric: string): string {
  const m = table.match(new RegExp(`^${metric.replaceAll(".", "\\.")}\\s+(.+?)\\s*$`, "m"));
  assert.ok(m, `no ${metric} row in:\n${table}`);
  return m[1];
}

Deno.test("ctr tasks metrics shows a container's memory, cpu and pids", () =>
  withRootfs(async (d, rootfs) => {
    const id = "metrics1";
    try {
      let r = await d.ctr([
        "run",
        "-d",
        "--memory-limit",
        String(LIMIT),
        "--rootfs",
        rootfs,
        id,
        "/bin/sh",
        "-c",
        // some anonymous memory (a 4 MB shell variable) and some page cache, then idle
        "x=$(/bin/busybox yes | head -c 4000000); " +
        "/bin/busybox dd if=/dev/zero of=/tmp/fill bs=1M count=4 2>/dev/null; " +
        "touch /tmp/ready; sleep 1000",
      ]);
      assert.equal(r.code, 0, r.stderr);
      for (let i = 0; i < 100; i++) {
        try {
          await Deno.stat(`${rootfs}/tmp/ready`);
          break;
        } catch {
          await delay(100);
        }
      }

      r = await d.ctr(["tasks", "metrics", id]);
      assert.equal(r.code, 0, r.stderr);
      const table = r.stdout;
      assert.match(table, new RegExp(`^ID\\s+TIMESTAMP\\s*\\n${id}\\s+\\d{4}-\\d\\d-\\d\\d `, "m"));
      assert.ok(Number(row(table, "pids.current")) >= 1, table);
      if (unified) {
        assert.ok(Number(row(table, "memory.usage")) > 0, table);
        assert.equal(Number(row(table, "memory.usage_limit")), LIMIT, table);
        assert.ok(Number(row(table, "cpu.usage_usec")) > 0, table);
      } else {
        assert.ok(Number(row(table, "memory.usage_in_bytes")) > 0, table);
        assert.equal(Number(row(table, "memory.limit_in_bytes")), LIMIT, table);
        assert.ok(Number(row(table, "cpuacct.usage")) > 0, table);
        assert.match(row(table, "cpuacct.usage_percpu"), /^\[\d+( \d+)*\]$/);
      }

      r = await d.ctr(["tasks", "metrics", "--format", "json", id]);
      assert.equal(r.code, 0, r.stderr);
      const json = JSON.parse(r.stdout);
      assert.ok(json.pids.current >= 1, r.stdout);
      if (unified) {
        assert.ok(json.memory.usage > 0, r.stdout);
        assert.equal(json.memory.usage_limit, LIMIT);
        assert.ok(json.memory.anon > 0, r.stdout);
        assert.ok(json.cpu.usage_usec > 0, r.stdout);
      } else {
        assert.ok(json.memory.usage.usage > 0, r.stdout);
        assert.equal(json.memory.usage.limit, LIMIT);
        assert.ok(json.memory.usage.max >= json.memory.usage.usage, r.stdout);
        assert.equal(json.memory.hierarchical_memory_limit, LIMIT);
        assert.ok(json.memory.total_rss + json.memory.total_cache >= 4_000_000, r.stdout);
        assert.ok(json.cpu.usage.total > 0, r.stdout);
        assert.ok(Array.isArray(json.cpu.usage.per_cpu), r.stdout);
        assert.ok(json.blkio !== undefined, r.stdout);
      }
    } finally {
      await remove(d, id);
    }
  }));

Deno.test("ctr tasks metrics picks the task by id; a stopped task still has its cgroup", () =>
  withRootfs(async (d, rootfs) => {
    const [stopped, running] = ["metrics2", "metrics3"];
    try {
      for (const id of [stopped, running]) {
        const r = await d.ctr(["run", "-d", "--rootfs", rootfs, id, "/bin/sleep", "1000"]);
        assert.equal(r.code, 0, r.stderr);
      }
      let r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", stopped]);
      assert.equal(r.code, 0, r.stderr);
      for (let i = 0; i < 50; i++) {
        r = await d.ctr(["tasks", "ls"]);
        if (new RegExp(`^${stopped}\\s+\\d+\\s+STOPPED`, "m").test(r.stdout)) break;
        await delay(100);
      }

      // ctr asks for the metrics of tasks matching "id==<id>" and prints the first
      r = await d.ctr(["tasks", "metrics", running]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^${running}\\s`, "m"));
      assert.ok(Number(row(r.stdout, "pids.current")) >= 1, r.stdout);

      r = await d.ctr(["tasks", "metrics", "--format", "json", stopped]);
      assert.equal(r.code, 0, r.stderr);
      const json = JSON.parse(r.stdout);
      assert.equal(json.pids?.current ?? 0, 0, r.stdout);

      r = await d.ctr(["tasks", "metrics", "nosuch"]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /not found/);
    } finally {
      await remove(d, stopped);
      await remove(d, running);
    }
  }));
