/**
 * Interop with containerd's shim v2 contract, both ways (real ctr, real runc):
 *
 * - tainerd drives containerd's `containerd-shim-runc-v2` (a `shims` entry in the runtime
 *   config, or the runtime named by absolute path);
 * - a private containerd 1.6 drives tainerd's shim, installed as `containerd-shim-tainerd-v2`
 *   on its PATH and selected with `--runtime io.containerd.tainerd.v2`.
 */

import assert from "node:assert/strict";
import { busyboxRootfs } from "./fixtures.ts";
import { ctrEvents, delay, have, run, TestDaemon } from "./harness.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const RUNC_SHIM = "/usr/bin/containerd-shim-runc-v2";
const decoder = new TextDecoder();
const ignore = !have("containerd") || !have("runc") || !have("ctr") || Deno.uid() !== 0;

async function waitFor(fn: () => Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await delay(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Pids of processes whose command line matches `pattern` (pgrep -f). */
async function pgrep(pattern: string): Promise<number[]> {
  const out = await new Deno.Command("pgrep", { args: ["-f", "--", pattern], stdout: "piped" })
    .output();
  return decoder.decode(out.stdout).trim().split("\n").filter((x) => x).map(Number);
}

function killPid(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch {
    // gone
  }
}

/** Force-removes what runc still has under `root` (containers of a test's namespace). */
async function runcCleanup(root: string): Promise<void> {
  const ls = await run("runc", ["--root", root, "list", "-q"]).catch(() => null);
  for (const id of ls?.stdout.trim().split("\n").filter((x) => x) ?? []) {
    await run("runc", ["--root", root, "delete", "-f", id]);
  }
  await Deno.remove(root, { recursive: true }).catch(() => {});
}

/** Kills and removes every task and container of `ns` through ctr at `address`. */
async function ctrCleanup(address: string, ns: string): Promise<void> {
  const ctr = (...args: string[]) => run("ctr", ["-a", address, "-n", ns, ...args]);
  const ls = await ctr("tasks", "ls", "-q");
  for (const id of ls.stdout.trim().split("\n").filter((x) => x)) {
    await ctr("tasks", "kill", "-s", "SIGKILL", id);
    await delay(300);
    await ctr("tasks", "rm", "-f", id);
  }
  const cs = await ctr("containers", "ls", "-q");
  for (const id of cs.stdout.trim().split("\n").filter((x) => x)) await ctr("containers", "rm", id);
}

// ---------------------------------------------------------------------------------------------
// tainerd → containerd-shim-runc-v2

async function withTainerd(
  config: string,
  fn: (d: TestDaemon, ns: string, rootfs: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-interop-" });
  const ns = `interop-${crypto.randomUUID().slice(0, 8)}`;
  const d = new TestDaemon(dir);
  try {
    const rootfs = await busyboxRootfs(dir);
    await d.start({ config });
    await fn(d, ns, rootfs);
  } catch (err) {
    console.error(`daemon log (${d.logPath}):\n${await d.log()}`);
    throw err;
  } finally {
    await ctrCleanup(d.address, ns).catch(() => {});
    await d.stop();
    for (const pid of await pgrep(`containerd-shim-runc-v2 .*-address ${d.address}`)) {
      killPid(pid);
    }
    // containerd's runc shim keeps its runc state under containerd's default state dir.
    await runcCleanup(`/run/containerd/runc/${ns}`);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const RUNC_SHIM_CONFIG = `[plugins."io.containerd.runtime.v2.task"]
shims = { "io.containerd.runc.v2" = "containerd-shim-runc-v2" }
`;

Deno.test({
  name: "tainerd runs io.containerd.runc.v2 through containerd-shim-runc-v2 when configured",
  ignore,
  fn: () =>
    withTainerd(RUNC_SHIM_CONFIG, async (d, ns, rootfs) => {
      const ctr = (...args: string[]) => d.ctr(args, { namespace: ns });
      const events = await ctrEvents(d);
      let r;
      try {
        r = await ctr("run", "--rm", "--rootfs", rootfs, "hello", "/bin/echo", "hi");
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout.trim(), "hi");
        r = await ctr("run", "--rm", "--rootfs", rootfs, "three", "/bin/sh", "-c", "exit 3");
        assert.equal(r.code, 3, r.stderr);
        await events.waitFor(/\/tasks\/delete[^\n]*"container_id":"three"/, "three's delete");
        await delay(300);
      } finally {
        await events.stop();
      }
      const out = events.text();
      assert.match(out, new RegExp(`/tasks/exit.*"container_id":"hello".*`));
      assert.match(out, /\/tasks\/exit.*"container_id":"three".*"exit_status":3/);
      assert.match(out, /\/tasks\/delete.*"container_id":"three"/);

      // -d, then a daemon SIGKILL: the restarted daemon reconnects to containerd's shim.
      r = await ctr("run", "-d", "--rootfs", rootfs, "long", "/bin/sleep", "1000");
      assert.equal(r.code, 0, r.stderr);
      const shims = await pgrep(`containerd-shim-runc-v2 .*-address ${d.address}`);
      assert.equal(shims.length, 1, "containerd's shim serves the task");
      const bundle = `${d.state}/io.containerd.runtime.v2.task/${ns}/long`;
      assert.equal(await Deno.readTextFile(`${bundle}/shim-binary-path`), RUNC_SHIM);
      const pid = (await ctr("tasks", "ls")).stdout.match(/^long\s+(\d+)\s+RUNNING/m)?.[1];
      assert.ok(pid);
      await d.kill();
      await d.start({ config: RUNC_SHIM_CONFIG });
      r = await ctr("tasks", "ls");
      assert.match(r.stdout, new RegExp(`^long\\s+${pid}\\s+RUNNING`, "m"), "reconnected");
      r = await ctr("tasks", "exec", "--exec-id", "e1", "long", "/bin/echo", "exec");
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), "exec");
      r = await ctr("tasks", "kill", "-s", "SIGKILL", "long");
      assert.equal(r.code, 0, r.stderr);
      await waitFor(
        async () => /^long\s+\d+\s+STOPPED/m.test((await ctr("tasks", "ls")).stdout),
        "long to stop",
      );
      r = await ctr("tasks", "rm", "long");
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /exit code 137/);
      r = await ctr("containers", "rm", "long");
      assert.equal(r.code, 0, r.stderr);
      await waitFor(
        async () => (await pgrep(`containerd-shim-runc-v2 .*-address ${d.address}`)).length === 0,
        "containerd's shim to exit",
      );
      await assert.rejects(Deno.stat(bundle), Deno.errors.NotFound, "bundle removed");

      // A killed shim: tainerd runs containerd's shim's `delete` and publishes the exit.
      r = await ctr("run", "-d", "--rootfs", rootfs, "victim", "/bin/sleep", "1000");
      assert.equal(r.code, 0, r.stderr);
      const [victimShim] = await pgrep(`containerd-shim-runc-v2 .*-address ${d.address}`);
      assert.ok(victimShim);
      killPid(victimShim);
      await waitFor(
        async () => !(await ctr("tasks", "ls")).stdout.includes("victim"),
        "the victim's task to be cleaned up",
      );
      r = await ctr("containers", "rm", "victim");
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(await d.log(), /shim delete of container "victim" failed/);
      assert.match(await d.log(), /source=shim/, "the shim's log reaches the daemon's");
    }),
});

Deno.test({
  name: "tainerd runs a runtime named by the absolute path of containerd's shim",
  ignore,
  fn: () =>
    withTainerd("", async (d, ns, rootfs) => {
      const ctr = (...args: string[]) => d.ctr(args, { namespace: ns });
      let r = await ctr(
        "run",
        "--rm",
        "--runtime",
        RUNC_SHIM,
        "--rootfs",
        rootfs,
        "abs",
        "/bin/echo",
        "hi",
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), "hi");
      r = await ctr(
        "run",
        "--rm",
        "--runtime",
        "io.containerd.nosuch.v1",
        "--rootfs",
        rootfs,
        "bad",
        "/bin/true",
      );
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /containerd-shim-nosuch-v1/);
    }),
});

// ---------------------------------------------------------------------------------------------
// containerd → tainerd's shim

/** A private containerd 1.6 on temp directories with `containerd-shim-tainerd-v2` on PATH. */
class PrivateContainerd {
  readonly dir: string;
  readonly address: string;
  readonly #config: string;
  readonly #bin: string;
  #child?: Deno.ChildProcess;
  #pump?: Promise<void>;

  constructor(dir: string) {
    this.dir = dir;
    this.address = `${dir}/containerd.sock`;
    this.#config = `${dir}/config.toml`;
    this.#bin = `${dir}/bin`;
  }

  /**
   * Writes the config and puts `containerd-shim-tainerd-v2` on containerd's PATH: a launcher
   * of the source tree, or a symlink to the one `scripts/build.ts bundle` writes.
   */
  async setup(kind: "source" | "bundle"): Promise<void> {
    await Deno.mkdir(this.#bin);
    const shim = `${this.#bin}/containerd-shim-tainerd-v2`;
    if (kind === "source") {
      await Deno.writeTextFile(
        shim,
        `#!/bin/sh\nexec "${Deno.execPath()}" run -A --config "${ROOT}/deno.json" ` +
          `"${ROOT}/main.ts" shim "$@"\n`,
        { mode: 0o755 },
      );
    } else {
      const r = await run(
        Deno.execPath(),
        ["run", "-A", `${ROOT}/scripts/build.ts`, "bundle", "--out-dir", `${this.dir}/dist`],
        { cwd: ROOT },
      );
      assert.equal(r.code, 0, r.stderr);
      await Deno.symlink(`${this.dir}/dist/containerd-shim-tainerd-v2`, shim);
    }
    await Deno.writeTextFile(
      this.#config,
      `version = 2
root = "${this.dir}/root"
state = "${this.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "${this.address}"
[ttrpc]
  address = "${this.address}.ttrpc"
[debug]
  address = "${this.dir}/debug.sock"
`,
    );
  }

  async start(): Promise<void> {
    const log = await Deno.open(`${this.dir}/containerd.log`, { create: true, append: true });
    const child = new Deno.Command("containerd", {
      args: ["--config", this.#config, "--log-level", "debug"],
      env: { PATH: `${this.#bin}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}` },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#pump = child.stderr.pipeTo(log.writable).catch(() => {});
    await waitFor(
      async () => (await run("ctr", ["-a", this.address, "version"])).code === 0,
      "containerd to serve",
    );
  }

  ctr(ns: string, ...args: string[]) {
    return run("ctr", ["-a", this.address, "-n", ns, ...args]);
  }

  async stop(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    try {
      child.kill(signal);
    } catch {
      // gone
    }
    await child.status;
    await this.#pump;
  }

  log(): Promise<string> {
    return Deno.readTextFile(`${this.dir}/containerd.log`).catch(() => "");
  }
}

for (const kind of ["source", "bundle"] as const) {
  Deno.test({
    name: `containerd runs tasks through tainerd's shim as io.containerd.tainerd.v2 (${kind})`,
    ignore,
    fn: async () => {
      const dir = await Deno.makeTempDir({ prefix: "tainerd-interop-" });
      const ns = `interop-${crypto.randomUUID().slice(0, 8)}`;
      const c = new PrivateContainerd(dir);
      const ourShims = () => pgrep(` shim .*-address ${c.address} `);
      try {
        await c.setup(kind);
        const rootfs = await busyboxRootfs(dir);
        await c.start();
        const run1 = (id: string, ...cmd: string[]) =>
          c.ctr(
            ns,
            "run",
            "--rm",
            "--runtime",
            "io.containerd.tainerd.v2",
            "--rootfs",
            rootfs,
            id,
            ...cmd,
          );
        let r = await run1("hello", "/bin/echo", "hi");
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout.trim(), "hi");
        r = await run1("three", "/bin/sh", "-c", "exit 3");
        assert.equal(r.code, 3, r.stderr);

        r = await c.ctr(
          ns,
          "run",
          "-d",
          "--runtime",
          "io.containerd.tainerd.v2",
          "--rootfs",
          rootfs,
          "long",
          "/bin/sleep",
          "1000",
        );
        assert.equal(r.code, 0, r.stderr);
        assert.equal((await ourShims()).length, 1, "tainerd's shim serves the task");
        const pid = (await c.ctr(ns, "tasks", "ls")).stdout.match(/^long\s+(\d+)\s+RUNNING/m)?.[1];
        assert.ok(pid);
        r = await c.ctr(ns, "tasks", "exec", "--exec-id", "e1", "long", "/bin/echo", "exec");
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout.trim(), "exec");

        // containerd SIGKILL and restart: it reconnects through the bundle's address file.
        await c.stop("SIGKILL");
        await c.start();
        r = await c.ctr(ns, "tasks", "ls");
        assert.match(r.stdout, new RegExp(`^long\\s+${pid}\\s+RUNNING`, "m"), "reconnected");
        r = await c.ctr(ns, "tasks", "kill", "-s", "SIGKILL", "long");
        assert.equal(r.code, 0, r.stderr);
        await waitFor(
          async () => /^long\s+\d+\s+STOPPED/m.test((await c.ctr(ns, "tasks", "ls")).stdout),
          "long to stop",
        );
        r = await c.ctr(ns, "tasks", "rm", "long");
        assert.equal(r.code, 0, r.stderr);
        r = await c.ctr(ns, "containers", "rm", "long");
        assert.equal(r.code, 0, r.stderr);
        await waitFor(async () => (await ourShims()).length === 0, "tainerd's shim to exit");

        // A killed shim: containerd runs our `delete` action and reports the task gone.
        r = await c.ctr(
          ns,
          "run",
          "-d",
          "--runtime",
          "io.containerd.tainerd.v2",
          "--rootfs",
          rootfs,
          "victim",
          "/bin/sleep",
          "1000",
        );
        assert.equal(r.code, 0, r.stderr);
        const [victimShim] = await ourShims();
        assert.ok(victimShim);
        killPid(victimShim);
        await waitFor(
          async () => !(await c.ctr(ns, "tasks", "ls")).stdout.includes("victim"),
          "the victim's task to be cleaned up",
        );
        r = await c.ctr(ns, "containers", "rm", "victim");
        assert.equal(r.code, 0, r.stderr);
        assert.doesNotMatch(await c.log(), /failed to delete/);
      } catch (err) {
        console.error(`containerd log:\n${await c.log()}`);
        throw err;
      } finally {
        await ctrCleanup(c.address, ns).catch(() => {});
        await c.stop();
        for (const pid of await ourShims()) killPid(pid);
        // containerd sets no TAINERD_STATE_DIR: the shim keeps runc state under /run/tainerd.
        await runcCleanup(`/run/tainerd/runc/${ns}`);
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    },
  });
}
