/**
 * Containers outlive the daemon, and no exit is lost: daemon SIGKILL and restart, shims
 * killed under a running container.
 */

import assert from "node:assert/strict";
import { ctrEvents, delay, waitFor, withRestartableDaemon } from "./harness.ts";

Deno.test("tasks survive a daemon SIGKILL; an exit during the downtime keeps its code", () =>
  withRestartableDaemon(async (d, rootfs) => {
    let r = await d.ctr(["run", "-d", "--rootfs", rootfs, "long", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["run", "-d", "--rootfs", rootfs, "short", "/bin/sh", "-c", "sleep 2; exit 5"]);
    assert.equal(r.code, 0, r.stderr);
    const before = (await d.ctr(["tasks", "ls"])).stdout;
    const pid = before.match(/^long\s+(\d+)/m)?.[1];
    assert.ok(pid, before);
    await d.kill();
    await delay(3000); // "short" exits while no daemon runs.
    await d.start();
    r = await d.ctr(["tasks", "ls"]);
    assert.match(
      r.stdout,
      new RegExp(`^long\\s+${pid}\\s+RUNNING`, "m"),
      "same process, reconnected",
    );
    assert.match(r.stdout, /^short\s+\d+\s+STOPPED/m);
    r = await d.ctr(["tasks", "rm", "short"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /exit code 5/);
    r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "long"]);
    assert.equal(r.code, 0, r.stderr);
    await waitFor(
      async () => /STOPPED/.test((await d.ctr(["tasks", "ls"])).stdout),
      "long to stop",
    );
    r = await d.ctr(["tasks", "rm", "long"]);
    assert.match(r.stderr, /exit code 137/);
  }));

Deno.test("a restarted daemon takes over the socket even while shims run (no inherited fds)", () =>
  withRestartableDaemon(async (d, rootfs) => {
    const r = await d.ctr(["run", "-d", "--rootfs", rootfs, "held", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    const shim = new TextDecoder().decode(
      (await new Deno.Command("pgrep", {
        args: ["-f", "--", ` shim .*-address ${d.address} `],
      }).output()).stdout,
    ).trim().split("\n")[0];
    assert.ok(shim, "a shim runs");
    const fds = [...Deno.readDirSync(`/proc/${shim}/fd`)].map((e) => {
      try {
        return Deno.readLinkSync(`/proc/${shim}/fd/${e.name}`);
      } catch {
        return "";
      }
    });
    const daemonSockets = new Set(
      [...Deno.readDirSync(`/proc/${d.pid}/fd`)].map((e) => {
        try {
          return Deno.readLinkSync(`/proc/${d.pid}/fd/${e.name}`);
        } catch {
          return "";
        }
      }).filter((l) => l.startsWith("socket:")),
    );
    const inherited = fds.filter((l) => daemonSockets.has(l));
    assert.deepEqual(inherited, [], "the shim holds none of the daemon's sockets");
    await d.kill();
    await d.start();
    const ls = await d.ctr(["tasks", "ls"]);
    assert.match(ls.stdout, /^held\s+\d+\s+RUNNING/m);
  }));

Deno.test("a killed shim: its task is reported stopped and everything is cleaned up", () =>
  withRestartableDaemon(async (d, rootfs) => {
    let r = await d.ctr(["run", "-d", "--rootfs", rootfs, "victim", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    const events = await ctrEvents(d);
    const shims = new TextDecoder().decode(
      (await new Deno.Command("pgrep", {
        args: ["-f", "--", ` shim .*-address ${d.address} `],
      }).output()).stdout,
    ).trim().split("\n").filter((x) => x);
    assert.equal(shims.length, 1);
    Deno.kill(Number(shims[0]), "SIGKILL");
    await waitFor(
      async () => !(await d.ctr(["tasks", "ls"])).stdout.includes("victim"),
      "the task to be gone",
    );
    await events.waitFor(/\/tasks\/delete[^\n]*"container_id":"victim"/, "victim's delete")
      .finally(() => events.stop());
    const out = events.text();
    assert.match(out, /\/tasks\/exit.*"container_id":"victim".*"exit_status":137/);
    assert.match(out, /\/tasks\/delete.*"container_id":"victim"/);
    const bundle = `${d.state}/io.containerd.runtime.v2.task/default/victim`;
    await assert.rejects(Deno.stat(bundle), Deno.errors.NotFound, "bundle removed");
    const mounts = await Deno.readTextFile("/proc/self/mountinfo");
    assert.ok(!mounts.includes(d.dir), "no mount left");
    r = await d.ctr(["containers", "rm", "victim"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["version"]);
    assert.equal(r.code, 0, "the daemon stays healthy");
  }));

Deno.test("three tasks across a daemon SIGKILL: the one that exits meanwhile is published exactly once", () =>
  withRestartableDaemon(async (d, rootfs) => {
    for (const id of ["a1", "a2"]) {
      const r = await d.ctr(["run", "-d", "--rootfs", rootfs, id, "/bin/sleep", "1000"]);
      assert.equal(r.code, 0, r.stderr);
    }
    let r = await d.ctr([
      "run",
      "-d",
      "--rootfs",
      rootfs,
      "a3",
      "/bin/sh",
      "-c",
      "sleep 2; exit 7",
    ]);
    assert.equal(r.code, 0, r.stderr);
    await d.kill();
    await delay(3000);
    const logBefore = (await d.log()).length;
    await d.start();
    const exitsAfterRestart = async () =>
      (await d.log()).slice(logBefore).split("\n").filter((l) =>
        l.includes('msg="event published"') && l.includes("topic=/tasks/exit")
      ).length;
    await waitFor(async () => (await exitsAfterRestart()) >= 1, "the queued exit to arrive");
    await delay(3000); // retries, if any, would have arrived by now
    assert.equal(await exitsAfterRestart(), 1, "the exit is forwarded exactly once");
    r = await d.ctr(["tasks", "ls"]);
    assert.match(r.stdout, /^a1\s+\d+\s+RUNNING/m);
    assert.match(r.stdout, /^a2\s+\d+\s+RUNNING/m);
    assert.match(r.stdout, /^a3\s+\d+\s+STOPPED/m);
    r = await d.ctr(["tasks", "rm", "a3"]);
    assert.match(r.stderr, /exit code 7/);
    for (const id of ["a1", "a2"]) {
      r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", id]);
      assert.equal(r.code, 0, r.stderr);
    }
  }));

/** One shim per container (containerd's way): a wedged shim holds up only its own task. */
const PER_CONTAINER = `
[plugins."io.containerd.runtime.v2.task"]
shim_group = ""
`;

Deno.test("a wedged shim (SIGSTOP) does not hold up daemon start-up beyond its timeout", () =>
  withRestartableDaemon(async (d, rootfs) => {
    let r = await d.ctr(["run", "-d", "--rootfs", rootfs, "wedged", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["run", "-d", "--rootfs", rootfs, "healthy", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    const pids = new TextDecoder().decode(
      (await new Deno.Command("pgrep", {
        args: ["-f", "--", ` shim .*-id wedged .*-address ${d.address} `],
      }).output()).stdout,
    ).trim().split("\n").filter((x) => x);
    assert.equal(pids.length, 1, "one shim for the wedged task");
    const shim = Number(pids[0]);
    Deno.kill(shim, "SIGSTOP");
    try {
      await d.kill();
      const t0 = performance.now();
      await d.start({ config: PER_CONTAINER });
      const took = performance.now() - t0;
      // The shim load timeout is 5 s; start-up (Deno boot included) must not wait much longer.
      assert.ok(took < 12_000, `daemon start took ${took.toFixed(0)} ms`);
      r = await d.ctr(["tasks", "ls"]);
      assert.match(r.stdout, /^healthy\s+\d+\s+RUNNING/m, r.stdout);
    } finally {
      Deno.kill(shim, "SIGKILL");
    }
    r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "healthy"]);
    assert.equal(r.code, 0, r.stderr);
  }, { config: PER_CONTAINER }));
