/**
 * The builds: `scripts/build.ts bundle` (dist/tainerd.js + wrapper) and `compile` (a
 * standalone binary, only when DENORT_BIN points at a denort). Each must run from outside the
 * source tree — daemon, CLI and shims — and keep containers running across a daemon restart.
 */

import assert from "node:assert/strict";
import { TainerdClient } from "../client/client.ts";
import { VERSION } from "../version.ts";
import { canUnpack, withRegistryImage } from "../images/testdata/busybox_image.ts";
import { busyboxRootfs } from "./fixtures.ts";
import { delay, have, run, type RunResult } from "./harness.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const DENORT = Deno.env.get("DENORT_BIN");
const REVISION = `test-${crypto.randomUUID().slice(0, 8)}`;

if (!DENORT) {
  console.log(
    "binary_test: the compiled binary is not tested: DENORT_BIN is not set (deno compile needs " +
      `denort for Deno ${Deno.version.deno}, which this machine cannot download)`,
  );
}

/** Runs scripts/build.ts. */
function build(kind: "bundle" | "compile", outDir: string, env: Record<string, string> = {}) {
  return run(
    Deno.execPath(),
    ["run", "-A", `${ROOT}/scripts/build.ts`, kind, "--out-dir", outDir],
    {
      cwd: ROOT,
      env: { TAINERD_REVISION: REVISION, ...env },
    },
  );
}

function scratchDirs(): string[] {
  try {
    return [...Deno.readDirSync(`${ROOT}/dist`)].map((e) => e.name).filter((n) =>
      n.startsWith(".build-")
    );
  } catch {
    return [];
  }
}

/** A daemon run from a build, in a directory outside the source tree. */
class BuiltDaemon {
  readonly address: string;
  #child?: Deno.ChildProcess;
  #log = "";
  #done?: Promise<void>;

  constructor(readonly dir: string, readonly command: string[]) {
    this.address = `${dir}/tainerd.sock`;
  }

  async start(): Promise<void> {
    const [cmd, ...args] = this.command;
    const child = new Deno.Command(cmd, {
      args: [
        ...args,
        "daemon",
        "--config",
        `${this.dir}/config.toml`,
        "--address",
        this.address,
        "--root",
        `${this.dir}/root`,
        "--state",
        `${this.dir}/state`,
      ],
      cwd: this.dir,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#done = (async () => {
      for await (const s of child.stderr.pipeThrough(new TextDecoderStream())) this.#log += s;
    })();
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if ((await this.ctr("version")).code === 0) return;
      const exited = await Promise.race([child.status, delay(200).then(() => null)]);
      if (exited) throw new Error(`daemon exited with ${exited.code}:\n${this.#log}`);
    }
    throw new Error(`daemon did not answer within 30s:\n${this.#log}`);
  }

  ctr(...args: string[]): Promise<RunResult> {
    return run("ctr", ["-a", this.address, ...args]);
  }

  get log(): string {
    return this.#log;
  }

  async stop(signal: Deno.Signal = "SIGTERM"): Promise<number | undefined> {
    const child = this.#child;
    if (!child) return undefined;
    this.#child = undefined;
    try {
      child.kill(signal);
    } catch {
      // Exited.
    }
    const st = await child.status;
    await this.#done;
    return st.code;
  }

  /** The shims of this daemon: pid and command line. */
  async shims(): Promise<{ pid: number; cmdline: string[] }[]> {
    const r = await run("pgrep", ["-f", "--", ` shim .*-address ${this.address} `]);
    return r.stdout.trim().split("\n").filter((p) => p).map((p) => ({
      pid: Number(p),
      cmdline: Deno.readTextFileSync(`/proc/${p}/cmdline`).split("\0"),
    }));
  }

  /** Kills every task and container, the daemon, and any shim left. */
  async cleanup(): Promise<void> {
    if (this.#child) {
      const ls = await this.ctr("tasks", "ls", "-q");
      for (const id of ls.stdout.trim().split("\n").filter((x) => x)) {
        await this.ctr("tasks", "kill", "-s", "SIGKILL", id);
        await delay(300);
        await this.ctr("tasks", "rm", "-f", id);
      }
      const cs = await this.ctr("containers", "ls", "-q");
      for (const id of cs.stdout.trim().split("\n").filter((x) => x)) {
        await this.ctr("containers", "rm", id);
      }
    }
    for (const s of await this.shims().catch(() => [])) {
      try {
        Deno.kill(s.pid, "SIGKILL");
      } catch {
        // Gone.
      }
    }
    await this.stop();
  }
}

/**
 * Daemon from the build, `ctr run --rm` (a shim started from the build), `ctr run -d`, daemon
 * restart: the container still runs, same pid.
 */
async function smoke(t: Deno.TestContext, dir: string, command: string[], shimExe: string) {
  await Deno.writeTextFile(`${dir}/config.toml`, "version = 2\n");
  const rootfs = await busyboxRootfs(dir);
  const d = new BuiltDaemon(dir, command);
  try {
    await d.start();
    await t.step("ctr run --rm: a shim from the build runs the container", async () => {
      const r = await d.ctr("run", "--rm", "--rootfs", rootfs, "smoke-echo", "/bin/echo", "hi");
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "hi\n");
    });
    await t.step("a container keeps running across a daemon restart", async () => {
      let r = await d.ctr("run", "-d", "--rootfs", rootfs, "smoke-long", "/bin/sleep", "1000");
      assert.equal(r.code, 0, r.stderr);
      const shims = await d.shims();
      assert.equal(shims.length, 1);
      assert.ok(shims[0].cmdline.includes(shimExe), shims[0].cmdline.join(" "));
      assert.ok(!shims[0].cmdline.some((a) => a.startsWith(ROOT)), "nothing from the tree");
      const pid = (await d.ctr("tasks", "ls")).stdout.match(/^smoke-long\s+(\d+)\s+RUNNING/m)?.[1];
      assert.ok(pid);
      assert.equal(await d.stop(), 0);
      await d.start();
      r = await d.ctr("tasks", "ls");
      assert.match(r.stdout, new RegExp(`^smoke-long\\s+${pid}\\s+RUNNING`, "m"));
      r = await d.ctr("tasks", "kill", "-s", "SIGKILL", "smoke-long");
      assert.equal(r.code, 0, r.stderr);
      for (let i = 0; i < 50 && !/STOPPED/.test((await d.ctr("tasks", "ls")).stdout); i++) {
        await delay(100);
      }
      r = await d.ctr("tasks", "rm", "smoke-long");
      assert.equal(r.code, 0, r.stderr);
      r = await d.ctr("containers", "rm", "smoke-long");
      assert.equal(r.code, 0, r.stderr);
    });
  } catch (err) {
    console.error(`daemon log:\n${d.log}`);
    throw err;
  } finally {
    await d.cleanup();
  }
}

Deno.test("the bundle runs from anywhere: CLI, daemon, shims, install", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-bundle-" });
  const elsewhere = `${dir}/elsewhere`;
  try {
    await t.step("scripts/build.ts bundle builds tainerd.js, its chunks and wrapper", async () => {
      const before = scratchDirs();
      const r = await build("bundle", `${dir}/dist`);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(scratchDirs().filter((n) => !before.includes(n)), [], "scratch removed");
      for (const f of ["tainerd.js", "tainerd"]) {
        assert.ok(((await Deno.stat(`${dir}/dist/${f}`)).mode! & 0o111) !== 0, `${f} executable`);
      }
      const js = await Deno.readTextFile(`${dir}/dist/tainerd.js`);
      const chunks = new Map<string, string>();
      for (const e of Deno.readDirSync(`${dir}/dist/chunks`)) {
        chunks.set(e.name, await Deno.readTextFile(`${dir}/dist/chunks/${e.name}`));
      }
      for (const text of [js, ...chunks.values()]) {
        assert.ok(!text.includes(ROOT), "no path into the source tree");
        for (const [, spec] of text.matchAll(/\bimport\(\s*["'`]([^"'`]+)["'`]/g)) {
          assert.match(spec, /^(\.\/chunks\/|\.\/|node:)/, `a dynamic import of ${spec}`);
        }
      }
      // The shim's static module graph: its chunk and what it imports, transitively. None of
      // it may load Node's compatibility layer (the shim's start-up time).
      const shimChunk = [...chunks].find(([, t]) => /^\/\/ shim\/main\.ts$/m.test(t))?.[0];
      assert.ok(shimChunk, "a chunk holds shim/main.ts");
      const seen = new Set<string>();
      const visit = (name: string) => {
        if (seen.has(name)) return;
        seen.add(name);
        for (const [, spec] of chunks.get(name)!.matchAll(/^import[^"]*"([^"]+)";$/gm)) {
          assert.ok(!spec.startsWith("node:"), `the shim's ${name} imports ${spec}`);
          if (spec.startsWith("./")) visit(spec.slice(2));
        }
      };
      visit(shimChunk);
      await Deno.mkdir(`${elsewhere}/chunks`, { recursive: true });
      for (const f of ["tainerd.js", "tainerd", ...[...chunks.keys()].map((n) => `chunks/${n}`)]) {
        await Deno.copyFile(`${dir}/dist/${f}`, `${elsewhere}/${f}`);
      }
      await Deno.remove(`${dir}/dist`, { recursive: true });
    });

    await t.step("it runs outside the tree, stamped with the revision", async () => {
      const opts = { cwd: dir, env: { TAINERD_REVISION: "" } };
      let r = await run(
        Deno.execPath(),
        ["run", "-A", `${elsewhere}/tainerd.js`, "--version"],
        opts,
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), VERSION);
      r = await run(`${elsewhere}/tainerd`, ["config", "default"], opts);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^version = 2$/m);
      r = await run(`${elsewhere}/tainerd.js`, ["-a", `${dir}/none.sock`, "version"], opts);
      assert.match(r.stdout, new RegExp(`Revision: ${REVISION}\\n`), r.stdout + r.stderr);
    });

    await t.step("daemon and shims", (t) => {
      return smoke(t, dir, [`${elsewhere}/tainerd`], `${elsewhere}/tainerd.js`);
    });

    await t.step("tainerd install puts a working wrapper and a valid unit in place", async () => {
      const r = await run(`${elsewhere}/tainerd`, [
        "install",
        "--prefix",
        `${dir}/prefix`,
        "--config-dir",
        `${dir}/etc`,
        "--systemd-dir",
        `${dir}/systemd`,
      ], { cwd: dir });
      assert.equal(r.code, 0, r.stderr);
      const v = await run(`${dir}/prefix/bin/tainerd`, ["--version"], { cwd: "/" });
      assert.equal(v.code, 0, v.stderr);
      assert.equal(v.stdout.trim(), VERSION);
      const unit = await Deno.readTextFile(`${dir}/systemd/tainerd.service`);
      assert.match(
        unit,
        new RegExp(
          `^ExecStart=${dir}/prefix/bin/tainerd daemon --config ${dir}/etc/config.toml$`,
          "m",
        ),
      );
      if (have("systemd-analyze")) {
        const a = await run("systemd-analyze", ["verify", `${dir}/systemd/tainerd.service`]);
        assert.equal(a.code, 0, a.stderr);
        assert.equal(a.stderr.trim(), "");
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("airgapped: an image travels as an archive from one bundle daemon to another", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-airgap-" });
  const archive = `${dir}/image.tar`;
  const connected = new BuiltDaemon(`${dir}/connected`, [`${dir}/dist/tainerd`]);
  const airgapped = new BuiltDaemon(`${dir}/airgapped`, [`${dir}/dist/tainerd`]);
  const cli = (d: BuiltDaemon, ...args: string[]) =>
    run(`${dir}/dist/tainerd`, ["-a", d.address, ...args], { cwd: dir });
  try {
    const b = await build("bundle", `${dir}/dist`);
    assert.equal(b.code, 0, b.stderr);
    for (const d of [connected, airgapped]) {
      await Deno.mkdir(d.dir);
      await Deno.writeTextFile(`${d.dir}/config.toml`, "version = 2\n");
    }
    let ref = "";
    // On the connected side: pull, export; then the registry goes away.
    await withRegistryImage(async (reg) => {
      ref = reg.ref;
      await connected.start();
      let r = await cli(connected, "images", "pull", "--plain-http", "--no-unpack", ref);
      assert.equal(r.code, 0, r.stderr);
      r = await cli(connected, "images", "export", archive, ref);
      assert.equal(r.code, 0, r.stderr);
      await connected.cleanup();
    });
    // On the airgapped side: import, run.
    await airgapped.start();
    const client = new TainerdClient({ address: airgapped.address, namespace: "default" });
    const unpack = await canUnpack(client).finally(() => client.close());
    console.log(`airgap: ${unpack ? "import, unpack and run" : "import only (no snapshotter)"}`);
    let r = await cli(airgapped, "images", "import", ...(unpack ? [] : ["--no-unpack"]), archive);
    assert.equal(r.code, 0, r.stderr);
    r = await airgapped.ctr("images", "ls", "-q");
    assert.equal(r.stdout.trim(), ref);
    if (unpack) {
      r = await airgapped.ctr("run", "--rm", ref, "airgap-echo", "/bin/echo", "hi");
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "hi\n");
    }
  } catch (err) {
    console.error(
      `connected daemon log:\n${connected.log}\nairgapped daemon log:\n${airgapped.log}`,
    );
    throw err;
  } finally {
    await connected.cleanup();
    await airgapped.cleanup();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("compile with an unusable DENORT_BIN fails saying how to get denort", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-compile-" });
  try {
    const r = await build("compile", dir, { DENORT_BIN: `${dir}/no-denort` });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /DENORT_BIN/);
    assert.match(r.stderr, new RegExp(`denort-${Deno.build.target}\\.zip`));
    assert.match(r.stderr, new RegExp(`v${Deno.version.deno.replaceAll(".", "\\.")}`));
    assert.deepEqual([...Deno.readDirSync(dir)], [], "no output");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "the compiled binary runs from anywhere: CLI, daemon, shims (needs DENORT_BIN)",
  ignore: !DENORT,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "tainerd-compiled-" });
    try {
      const r = await build("compile", `${dir}/dist`);
      assert.equal(r.code, 0, r.stderr);
      const bin = `${dir}/bin/tainerd`;
      await Deno.mkdir(`${dir}/bin`);
      await Deno.copyFile(`${dir}/dist/tainerd`, bin);
      await Deno.chmod(bin, 0o755);
      const v = await run(bin, ["-a", `${dir}/none.sock`, "version"], {
        cwd: dir,
        env: { TAINERD_REVISION: "" },
      });
      assert.match(v.stdout, new RegExp(`Version:  ${VERSION}\\n  Revision: ${REVISION}\\n`));
      await smoke(t, dir, [bin], bin);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
