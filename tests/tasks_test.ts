/**
 * Tasks end to end with the real ctr: containers run by runc under tainerd's shim.
 */

import assert from "node:assert/strict";
import { busyboxRootfs } from "./fixtures.ts";
import { ctrEvents, delay, type TestDaemon, withDaemon } from "./harness.ts";

async function withRootfs(fn: (d: TestDaemon, rootfs: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-rootfs-" });
  try {
    const rootfs = await busyboxRootfs(dir);
    await withDaemon((d) => fn(d, rootfs));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function shimsOf(d: TestDaemon): Promise<number> {
  const out = await new Deno.Command("pgrep", {
    args: ["-f", "--", ` shim .*-address ${d.address} `],
  }).output();
  return new TextDecoder().decode(out.stdout).trim().split("\n").filter((l) => l).length;
}

Deno.test("ctr run --rm prints the container's output and returns its exit code", () =>
  withRootfs(async (d, rootfs) => {
    let r = await d.ctr([
      "run",
      "--rm",
      "--rootfs",
      rootfs,
      "r1",
      "/bin/sh",
      "-c",
      "echo hello from $(cat /proc/1/comm); exit 0",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "hello from sh\n");
    r = await d.ctr([
      "run",
      "--rm",
      "--rootfs",
      rootfs,
      "r2",
      "/bin/sh",
      "-c",
      "echo oops >&2; exit 7",
    ]);
    assert.equal(r.code, 7);
    assert.match(r.stderr, /oops/);
    const ls = await d.ctr(["containers", "ls", "-q"]);
    assert.equal(ls.stdout.trim(), "", "--rm removed every container");
    // The default shared shim stays warm for the next container (shim_idle_timeout); none
    // other outlives its task.
    assert.ok(await shimsOf(d) <= 1, "at most the warm shared shim");
  }));

Deno.test("ctr run -d, task exec, ps, pause, resume, kill and rm", () =>
  withRootfs(async (d, rootfs) => {
    let r = await d.ctr(["run", "-d", "--rootfs", rootfs, "bg", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["tasks", "ls"]);
    assert.match(r.stdout, /^bg\s+\d+\s+RUNNING\s*$/m);
    r = await d.ctr([
      "tasks",
      "exec",
      "--exec-id",
      "e1",
      "bg",
      "/bin/sh",
      "-c",
      "echo exec-ok; cat /proc/1/cmdline",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^exec-ok\n\/bin\/sleep/);
    r = await d.ctr(["tasks", "ps", "bg"]);
    assert.match(r.stdout, /^PID\s+INFO/);
    assert.equal(r.stdout.trim().split("\n").length, 2);
    r = await d.ctr(["tasks", "pause", "bg"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["tasks", "ls"]);
    assert.match(r.stdout, /^bg\s+\d+\s+PAUSED\s*$/m);
    r = await d.ctr(["tasks", "resume", "bg"]);
    r = await d.ctr(["tasks", "ls"]);
    assert.match(r.stdout, /^bg\s+\d+\s+RUNNING\s*$/m);
    r = await d.ctr(["tasks", "rm", "bg"]);
    assert.notEqual(r.code, 0, "a running task cannot be removed");
    assert.match(r.stderr, /failed precondition/);
    r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "bg"]);
    assert.equal(r.code, 0, r.stderr);
    for (let i = 0; i < 50; i++) {
      r = await d.ctr(["tasks", "ls"]);
      if (/STOPPED/.test(r.stdout)) break;
      await delay(100);
    }
    assert.match(r.stdout, /^bg\s+\d+\s+STOPPED\s*$/m);
    r = await d.ctr(["tasks", "rm", "bg"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["containers", "rm", "bg"]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(await shimsOf(d) <= 1, "at most the warm shared shim");
  }));

Deno.test("tasks publish create, start, exit and delete events in order", () =>
  withRootfs(async (d, rootfs) => {
    const events = await ctrEvents(d);
    try {
      const r = await d.ctr(["run", "--rm", "--rootfs", rootfs, "ev", "/bin/true"]);
      assert.equal(r.code, 0, r.stderr);
      await events.waitFor(/\/containers\/delete[^\n]*"id":"ev"/, "ev's container delete");
      await delay(200);
      const out = await events.stop();
      const topics = out.split("\n").map((l) => l.match(/ (\/(?:tasks|containers)\/[a-z-]+) /)?.[1])
        .filter((t) => t !== undefined);
      assert.deepEqual(topics, [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
      ]);
    } finally {
      await events.stop();
    }
  }));

Deno.test("task operations on unknown containers fail with NotFound", () =>
  withRootfs(async (d) => {
    let r = await d.ctr(["tasks", "start", "nope"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not found/);
    r = await d.ctr(["tasks", "kill", "nope"]);
    assert.match(r.stderr, /not found/);
  }));
