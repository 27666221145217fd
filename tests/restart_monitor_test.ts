/**
 * The restart monitor (`io.containerd.internal.v1.restart`) against a real daemon and the real
 * ctr: labelled containers come back after their task exits or is killed, on-failure:N stops
 * after N restarts, status=stopped ends the restarts, and a task killed while the daemon was
 * down comes back once it starts again.
 */

import assert from "node:assert/strict";
import { canUnpack, withRegistryImage } from "../images/testdata/busybox_image.ts";
import { busyboxRootfs } from "./fixtures.ts";
import { delay, TestDaemon } from "./harness.ts";

const CONFIG = `[plugins."io.containerd.internal.v1.restart"]\ninterval = "1s"\n`;
const STATUS = "containerd.io/restart.status";

interface Env {
  d: TestDaemon;
  rootfs: string;
  /** A host directory bind-mounted at /out in the containers. */
  out: string;
}

async function withMonitor(fn: (e: Env) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-test-" });
  const d = new TestDaemon(dir);
  const out = `${dir}/out`;
  await Deno.mkdir(out);
  try {
    const rootfs = await busyboxRootfs(dir);
    await d.start({ config: CONFIG });
    await fn({ d, rootfs, out });
  } catch (err) {
    console.error(await d.log());
    throw err;
  } finally {
    try {
      // No more restarts, then no task and no container is left.
      const cs = (await d.ctr(["containers", "ls", "-q"])).stdout.trim().split("\n")
        .filter((x) => x);
      for (const id of cs) await d.ctr(["containers", "label", id, `${STATUS}=`]);
      for (const id of cs) {
        await d.ctr(["tasks", "kill", "-a", "-s", "SIGKILL", id]);
      }
      await delay(300);
      for (const id of cs) {
        await d.ctr(["tasks", "rm", "-f", id]);
        await d.ctr(["containers", "rm", id]);
      }
    } catch {
      // Daemon gone.
    }
    await d.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

async function waitFor(fn: () => Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await delay(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function starts(out: string, id: string): Promise<number> {
  try {
    return (await Deno.readTextFile(`${out}/${id}`)).split("\n").filter((l) => l).length;
  } catch {
    return 0;
  }
}

async function taskPid(d: TestDaemon, id: string): Promise<{ pid: number; status: string }> {
  const r = await d.ctr(["tasks", "ls"]);
  const m = r.stdout.match(new RegExp(`^${id}\\s+(\\d+)\\s+(\\w+)`, "m"));
  return m ? { pid: Number(m[1]), status: m[2] } : { pid: 0, status: "" };
}

function runArgs(e: Env, id: string, labels: string[], script: string): string[] {
  return [
    "run",
    "-d",
    ...labels.flatMap((l) => ["--label", l]),
    "--mount",
    `type=bind,src=${e.out},dst=/out,options=rbind:rw`,
    "--rootfs",
    e.rootfs,
    id,
    "/bin/sh",
    "-c",
    script,
  ];
}

Deno.test("restart monitor: a killed task comes back with a new pid, its log appended", () =>
  withMonitor(async (e) => {
    const log = `${e.out}/k.log`;
    const r = await e.d.ctr(runArgs(e, "k", [
      `${STATUS}=running`,
      `containerd.io/restart.logpath=${log}`,
    ], "echo started >> /out/k; echo hello; exec sleep 1000"));
    assert.equal(r.code, 0, r.stderr);
    await waitFor(async () => (await taskPid(e.d, "k")).status === "RUNNING", "k running");
    const first = await taskPid(e.d, "k");
    let k = await e.d.ctr(["tasks", "kill", "-s", "SIGKILL", "k"]);
    assert.equal(k.code, 0, k.stderr);
    await waitFor(
      async () => {
        const t = await taskPid(e.d, "k");
        return t.status === "RUNNING" && t.pid !== first.pid;
      },
      "k restarted with a new pid",
      5000,
    );
    await waitFor(async () => (await starts(e.out, "k")) === 2, "two starts of k");
    const second = await taskPid(e.d, "k");
    k = await e.d.ctr(["tasks", "kill", "-s", "SIGKILL", "k"]);
    assert.equal(k.code, 0, k.stderr);
    await waitFor(
      async () => {
        const t = await taskPid(e.d, "k");
        return t.status === "RUNNING" && t.pid !== second.pid;
      },
      "k restarted again",
      5000,
    );
    await waitFor(async () => {
      try {
        return (await Deno.readTextFile(log)).split("\n").filter((l) => l === "hello")
          .length === 2;
      } catch {
        return false;
      }
    }, "the log file appended by both restarts");
    const info = await e.d.ctr(["containers", "info", "k"]);
    assert.match(info.stdout, /"containerd\.io\/restart\.count": "2"/);
  }));

Deno.test("restart monitor: on-failure:2 stops after two restarts; status=stopped stops", () =>
  withMonitor(async (e) => {
    let r = await e.d.ctr(runArgs(e, "f", [
      `${STATUS}=running`,
      "containerd.io/restart.policy=on-failure:2",
    ], "echo x >> /out/f; exit 3"));
    assert.equal(r.code, 0, r.stderr);
    r = await e.d.ctr(runArgs(e, "a", [`${STATUS}=running`], "echo x >> /out/a; exit 0"));
    assert.equal(r.code, 0, r.stderr);
    await waitFor(async () => (await starts(e.out, "f")) >= 3, "three runs of f");
    await waitFor(async () => (await starts(e.out, "a")) >= 3, "three runs of a (always)");
    // Give the monitor a few more intervals: f stays at 1 + 2 restarts.
    r = await e.d.ctr(["containers", "label", "a", `${STATUS}=stopped`]);
    assert.equal(r.code, 0, r.stderr);
    await delay(1500);
    const aStopped = await starts(e.out, "a");
    await delay(3000);
    assert.equal(await starts(e.out, "f"), 3);
    assert.equal(await starts(e.out, "a"), aStopped, "no restart after status=stopped");
  }));

Deno.test("restart monitor: a task killed while the daemon was down comes back", async () => {
  await withMonitor(async (e) => {
    const r = await e.d.ctr(runArgs(e, "p", [`${STATUS}=running`], "exec sleep 1000"));
    assert.equal(r.code, 0, r.stderr);
    await waitFor(async () => (await taskPid(e.d, "p")).status === "RUNNING", "p running");
    const first = await taskPid(e.d, "p");
    await e.d.kill();
    Deno.kill(first.pid, "SIGKILL");
    await delay(500);
    await e.d.start({ config: CONFIG });
    await waitFor(
      async () => {
        const t = await taskPid(e.d, "p");
        return t.status === "RUNNING" && t.pid !== first.pid;
      },
      "p running again after the daemon restart",
      10_000,
    );
  });
});

Deno.test("restart monitor: a bad policy is reported, the daemon stays up", () =>
  withMonitor(async (e) => {
    const r = await e.d.ctr(runArgs(e, "b", [
      `${STATUS}=running`,
      "containerd.io/restart.policy=sometimes",
    ], "exit 1"));
    assert.equal(r.code, 0, r.stderr);
    await waitFor(
      async () => /restart policy \\?"sometimes\\?" is not supported/i.test(await e.d.log()),
      "the bad policy reported",
    );
    const v = await e.d.ctr(["version"]);
    assert.equal(v.code, 0, v.stderr);
  }));

Deno.test("restart monitor: tainerd run --restart from an image (snapshot mounts); bad input", () =>
  withRegistryImage(({ ref }) =>
    withMonitor(async (e) => {
      const c = e.d.client();
      try {
        if (!(await canUnpack(c))) return;
      } finally {
        c.close();
      }
      let r = await e.d.cli(["images", "pull", "--plain-http", ref]);
      assert.equal(r.code, 0, r.stderr);
      r = await e.d.cli(["run", "-d", "--restart", "sometimes", ref, "bad", "true"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /Restart policy "sometimes" is not supported/);
      r = await e.d.cli(["run", "-d", "--log-path", "/x", ref, "bad2", "true"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /--log-path needs --restart/);
      const log = `${e.out}/img.log`;
      r = await e.d.cli([
        "run",
        "-d",
        "--restart",
        "on-failure:1",
        "--log-path",
        log,
        ref,
        "img",
        "sh",
        "-c",
        "echo run; exit 7",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const info = await e.d.ctr(["containers", "info", "img"]);
      assert.match(info.stdout, /"containerd\.io\/restart\.policy": "on-failure:1"/);
      assert.match(info.stdout, /"containerd\.io\/restart\.status": "running"/);
      await waitFor(async () => {
        try {
          return (await Deno.readTextFile(log)).trim() === "run";
        } catch {
          return false;
        }
      }, "one restart of img into its log");
      await delay(2500);
      assert.equal((await Deno.readTextFile(log)).trim(), "run", "on-failure:1 restarts once");
    })
  ));

Deno.test("restart monitor: a log path in a missing directory is created, as containerd's shim does", () =>
  withMonitor(async (e) => {
    // containerd's runc shim creates the parent directories of a file:// log (pkg/process/io.go);
    // tainerd does the same instead of failing.
    const log = `${e.out}/missing/sub/task.log`;
    const r = await e.d.ctr(runArgs(e, "nolog", [
      `${STATUS}=running`,
      "containerd.io/restart.policy=on-failure:1",
      `containerd.io/restart.logpath=${log}`,
    ], "echo restarted; exit 1"));
    assert.equal(r.code, 0, r.stderr);
    await waitFor(async () => {
      try {
        return (await Deno.readTextFile(log)).includes("restarted");
      } catch {
        return false;
      }
    }, "the restarted task's output in the new directory");
    const v = await e.d.ctr(["version"]);
    assert.equal(v.code, 0, v.stderr);
  }));
