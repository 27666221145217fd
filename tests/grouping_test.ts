/**
 * Shim grouping: containers with the same `io.containerd.runc.v2.group` spec annotation share
 * one shim process (and one ttrpc connection); the last one out shuts the shim down. These
 * daemons run with `shim_group = ""` (containerd's behaviour: an ungrouped container gets its
 * own shim); the default shared shim is tested in shim_shared_test.ts.
 */

import assert from "node:assert/strict";

const PER_CONTAINER = `
[plugins."io.containerd.runtime.v2.task"]
shim_group = ""
`;
import {
  ctrEvents,
  delay,
  shimPids,
  type TestDaemon,
  waitFor,
  withRestartableDaemon,
} from "./harness.ts";

async function runGrouped(d: TestDaemon, rootfs: string, id: string, group = "g1") {
  const r = await d.ctr([
    "run",
    "-d",
    "--annotation",
    `io.containerd.runc.v2.group=${group}`,
    "--rootfs",
    rootfs,
    id,
    "/bin/sleep",
    "1000",
  ]);
  assert.equal(r.code, 0, r.stderr);
}

/** How many connections the shim of a bundle has accepted (the daemon's, normally one). */
async function shimConnections(d: TestDaemon, id: string): Promise<number> {
  const bundle = `${d.state}/io.containerd.runtime.v2.task/default/${id}`;
  const path = (await Deno.readTextFile(`${bundle}/address`)).trim().replace(/^unix:\/\//, "");
  const out = await new Deno.Command("ss", { args: ["-x"] }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) =>
    /\bESTAB\b/.test(l) && l.includes(` ${path} `)
  ).length;
}

Deno.test("grouped containers share one shim; the last one out shuts it down", () =>
  withRestartableDaemon(async (d, rootfs) => {
    const all = ["a", "b", "c", "x", "y"];
    for (const id of all) await runGrouped(d, rootfs, id);
    let r = await d.ctr(["tasks", "ls"]);
    for (const id of all) {
      assert.match(r.stdout, new RegExp(`^${id}\\s+\\d+\\s+RUNNING`, "m"));
    }
    const shims = await shimPids(d);
    assert.equal(shims.length, 1, "one shim serves the group of five");
    // an ungrouped container gets its own shim
    r = await d.ctr(["run", "-d", "--rootfs", rootfs, "solo", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await shimPids(d)).length, 2);
    assert.equal(await shimConnections(d, "a"), 1, "one connection to the grouped shim");
    r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "solo"]);
    await waitFor(
      async () => /^solo\s+\d+\s+STOPPED/m.test((await d.ctr(["tasks", "ls"])).stdout),
      "solo to stop",
    );
    assert.equal((await d.ctr(["tasks", "rm", "solo"])).code, 0);
    await waitFor(async () => (await shimPids(d)).length === 1, "solo's shim to exit");

    // kill and remove two: the others keep running in the same shim
    for (const id of ["a", "x"]) {
      r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", id]);
      assert.equal(r.code, 0, r.stderr);
      await waitFor(
        async () =>
          new RegExp(`^${id}\\s+\\d+\\s+STOPPED`, "m").test((await d.ctr(["tasks", "ls"])).stdout),
        `${id} to stop`,
      );
      r = await d.ctr(["tasks", "rm", id]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /exit code 137/);
    }
    r = await d.ctr(["tasks", "ls"]);
    for (const id of ["b", "c", "y"]) {
      assert.match(r.stdout, new RegExp(`^${id}\\s+\\d+\\s+RUNNING`, "m"));
    }
    assert.deepEqual(await shimPids(d), shims, "the shim stays for the others");
    r = await d.ctr(["tasks", "exec", "--exec-id", "e1", "b", "/bin/echo", "still-here"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "still-here\n");

    // daemon SIGKILL + restart: both reconnect, through one connection
    await d.kill();
    await d.start({ config: PER_CONTAINER });
    r = await d.ctr(["tasks", "ls"]);
    for (const id of ["b", "c", "y"]) {
      assert.match(r.stdout, new RegExp(`^${id}\\s+\\d+\\s+RUNNING`, "m"));
    }
    assert.deepEqual(await shimPids(d), shims);
    assert.equal(await shimConnections(d, "b"), 1, "one connection to the grouped shim");

    for (const id of ["b", "c", "y"]) {
      r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", id]);
      assert.equal(r.code, 0, r.stderr);
      await waitFor(
        async () =>
          new RegExp(`^${id}\\s+\\d+\\s+STOPPED`, "m").test(
            (await d.ctr(["tasks", "ls"])).stdout,
          ),
        `${id} to stop`,
      );
      r = await d.ctr(["tasks", "rm", id]);
      assert.equal(r.code, 0, r.stderr);
      if (id !== "y") assert.deepEqual(await shimPids(d), shims);
    }
    await waitFor(
      async () => (await shimPids(d)).length === 0,
      "the shim to exit with its last task",
    );
    for (const id of [...all, "solo"]) {
      assert.equal((await d.ctr(["containers", "rm", id])).code, 0);
    }
    const left = [...Deno.readDirSync(`${d.state}/io.containerd.runtime.v2.task/default`)];
    assert.deepEqual(left, [], "no bundle left");
  }, { config: PER_CONTAINER }));

Deno.test("a killed grouped shim: every task of it is reported exited and cleaned up", () =>
  withRestartableDaemon(async (d, rootfs) => {
    await runGrouped(d, rootfs, "v1", "g2");
    await runGrouped(d, rootfs, "v2", "g2");
    const events = await ctrEvents(d);
    const shims = await shimPids(d);
    assert.equal(shims.length, 1);
    Deno.kill(shims[0], "SIGKILL");
    await waitFor(
      async () => !/^v[12]\s/m.test((await d.ctr(["tasks", "ls"])).stdout),
      "both tasks to be gone",
    );
    await events.waitFor(/\/tasks\/delete[^\n]*"container_id":"v1"/, "v1's delete");
    await events.waitFor(/\/tasks\/delete[^\n]*"container_id":"v2"/, "v2's delete");
    await delay(300);
    const out = await events.stop();
    for (const id of ["v1", "v2"]) {
      const exits = out.split("\n").filter((l) =>
        l.includes("/tasks/exit") && l.includes(`"container_id":"${id}"`)
      );
      assert.equal(exits.length, 1, out);
      assert.match(exits[0], /"exit_status":137/);
      assert.match(out, new RegExp(`/tasks/delete.*"container_id":"${id}"`));
      const bundle = `${d.state}/io.containerd.runtime.v2.task/default/${id}`;
      await assert.rejects(Deno.stat(bundle), Deno.errors.NotFound, "bundle removed");
      const r = await d.ctr(["containers", "rm", id]);
      assert.equal(r.code, 0, r.stderr);
    }
    const mounts = await Deno.readTextFile("/proc/self/mountinfo");
    assert.ok(!mounts.includes(d.dir), "no mount left");
    assert.equal((await d.ctr(["version"])).code, 0, "the daemon stays healthy");
  }, { config: PER_CONTAINER }));
