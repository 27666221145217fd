/**
 * Shared shims (runtime `shim_group = "namespace"`): containers without a group annotation
 * share one shim per namespace, which stays up `shim_idle_timeout` once empty so the next
 * container starts without a shim start, and exits after it.
 */

import assert from "node:assert/strict";
import { shimPids, waitFor, withRestartableDaemon } from "./harness.ts";

const CONFIG = `
[plugins."io.containerd.runtime.v2.task"]
shim_group = "namespace"
shim_idle_timeout = "2s"
`;

Deno.test("shim_group = namespace: one shim for concurrent containers, kept warm, then gone", () =>
  withRestartableDaemon(async (d, rootfs) => {
    // Concurrent creates of one group start exactly one shim.
    const ids = ["s1", "s2", "s3", "s4"];
    const runs = await Promise.all(
      ids.map((id) => d.ctr(["run", "-d", "--rootfs", rootfs, id, "/bin/sleep", "1000"])),
    );
    for (const r of runs) assert.equal(r.code, 0, r.stderr);
    const shims = await shimPids(d);
    assert.equal(shims.length, 1, `one shim for four containers: ${shims}`);
    // Another namespace gets its own.
    let r = await d.ctr(["run", "-d", "--rootfs", rootfs, "other", "/bin/sleep", "1000"], {
      namespace: "other",
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await shimPids(d)).length, 2);
    r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "other"], { namespace: "other" });
    await waitFor(
      async () => /STOPPED/.test((await d.ctr(["tasks", "ls"], { namespace: "other" })).stdout),
      "other to stop",
    );
    await d.ctr(["tasks", "rm", "other"], { namespace: "other" });
    await d.ctr(["containers", "rm", "other"], { namespace: "other" });

    // A daemon restart reconnects to the shared shim.
    await d.kill();
    await d.start({ config: CONFIG });
    r = await d.ctr(["tasks", "ls"]);
    for (const id of ids) assert.match(r.stdout, new RegExp(`^${id}\\s+\\d+\\s+RUNNING`, "m"));
    r = await d.ctr(["tasks", "exec", "--exec-id", "e1", "s3", "/bin/echo", "hi"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "hi\n");

    // Remove them all: the shim stays, and a new container reuses it.
    for (const id of ids) {
      await d.ctr(["tasks", "kill", "-s", "SIGKILL", id]);
    }
    await waitFor(
      async () => !/RUNNING/.test((await d.ctr(["tasks", "ls"])).stdout),
      "the tasks to stop",
    );
    for (const id of ids) {
      assert.equal((await d.ctr(["tasks", "rm", id])).code, 0);
      assert.equal((await d.ctr(["containers", "rm", id])).code, 0);
    }
    const warm = (await shimPids(d)).filter((p) => shims.includes(p));
    assert.deepEqual(warm, shims, "the empty shim stays up for the idle timeout");
    r = await d.ctr(["run", "--rm", "--rootfs", rootfs, "next", "/bin/echo", "warm"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "warm\n");
    assert.ok((await shimPids(d)).includes(shims[0]), "the next container used the warm shim");

    // Empty for longer than the idle timeout: it exits.
    await waitFor(async () => (await shimPids(d)).length === 0, "the idle shim to exit", 15_000);
  }, { config: CONFIG }));

Deno.test("the default: one shared shim, warm after its last container, ended by a daemon stop", () =>
  withRestartableDaemon(async (d, rootfs) => {
    for (const id of ["d1", "d2"]) {
      const r = await d.ctr(["run", "-d", "--rootfs", rootfs, id, "/bin/sleep", "1000"]);
      assert.equal(r.code, 0, r.stderr);
    }
    const shims = await shimPids(d);
    assert.equal(shims.length, 1, "one shim for both");
    for (const id of ["d1", "d2"]) await d.ctr(["tasks", "kill", "-s", "SIGKILL", id]);
    await waitFor(
      async () => !/RUNNING/.test((await d.ctr(["tasks", "ls"])).stdout),
      "the tasks to stop",
    );
    for (const id of ["d1", "d2"]) {
      assert.equal((await d.ctr(["tasks", "rm", id])).code, 0);
      assert.equal((await d.ctr(["containers", "rm", id])).code, 0);
    }
    assert.deepEqual(await shimPids(d), shims, "warm after its last container");
    const pid = shims[0];
    await d.stop();
    await waitFor(() => {
      try {
        Deno.kill(pid, "SIGCONT"); // signal 0 is not offered; SIGCONT is harmless
        return Promise.resolve(false);
      } catch {
        return Promise.resolve(true);
      }
    }, "the idle shim to exit with the daemon");
    await d.start();
  }));
