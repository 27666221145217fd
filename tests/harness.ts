/**
 * End-to-end test harness: a real tainerd daemon in its own process on a temp socket, root
 * and state, driven by the real `ctr` (Debian's containerd package), curl or our client.
 *
 * @module
 */

import { TainerdClient } from "../client/client.ts";
import { busyboxRootfs } from "./fixtures.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const decoder = new TextDecoder();

/** The result of running a command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, capturing its output. */
export async function run(
  cmd: string,
  args: string[],
  opts: { stdin?: Uint8Array | string; env?: Record<string, string>; cwd?: string } = {},
): Promise<RunResult> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: opts.env,
    cwd: opts.cwd,
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(
      typeof opts.stdin === "string" ? new TextEncoder().encode(opts.stdin) : opts.stdin,
    );
    await w.close();
  }
  const out = await child.output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** Whether an executable is on PATH. */
export function have(cmd: string): boolean {
  try {
    return new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`], stdout: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/** Options for {@link startDaemon}. */
export interface DaemonOptions {
  /** Extra config TOML written to the config file. */
  config?: string;
  /** Reuse directories of an earlier daemon (restart tests). */
  dir?: string;
  /** Extra daemon arguments. */
  args?: string[];
  logLevel?: string;
}

/** A daemon under test. */
export class TestDaemon {
  readonly dir: string;
  readonly address: string;
  readonly root: string;
  readonly state: string;
  readonly logPath: string;
  #child?: Deno.ChildProcess;
  #exited?: Promise<Deno.CommandStatus>;

  constructor(dir: string) {
    this.dir = dir;
    this.address = `${dir}/tainerd.sock`;
    this.root = `${dir}/root`;
    this.state = `${dir}/state`;
    this.logPath = `${dir}/daemon.log`;
  }

  /** The daemon's pid. */
  get pid(): number {
    if (!this.#child) throw new Error("daemon not started");
    return this.#child.pid;
  }

  /** Starts the daemon process and waits until the API answers. */
  async start(opts: DaemonOptions = {}): Promise<void> {
    const args = [
      "run",
      "-A",
      MAIN,
      "daemon",
      "--address",
      this.address,
      "--root",
      this.root,
      "--state",
      this.state,
      "--log-level",
      opts.logLevel ?? "debug",
    ];
    const configPath = `${this.dir}/config.toml`;
    await Deno.writeTextFile(configPath, `version = 2\n${opts.config ?? ""}\n`);
    args.push("--config", configPath, ...(opts.args ?? []));
    const log = await Deno.open(this.logPath, { create: true, append: true });
    const child = new Deno.Command(Deno.execPath(), {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // Copy the daemon's output into the log file.
    const pump = async (s: ReadableStream<Uint8Array>) => {
      for await (const chunk of s) await log.write(chunk);
    };
    const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]).finally(() => log.close());
    this.#child = child;
    this.#exited = child.status.then(async (st) => {
      await pumps;
      return st;
    });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const exited = await Promise.race([this.#exited, delay(100).then(() => undefined)]);
      if (exited) {
        throw new Error(`daemon exited with ${exited.code} before serving:\n${await this.log()}`);
      }
      const c = this.client();
      try {
        await c.version.version({}, { timeoutMs: 1000 });
        return;
      } catch {
        // Not up yet.
      } finally {
        c.close();
      }
    }
    throw new Error(`daemon did not answer within 30s:\n${await this.log()}`);
  }

  /** The daemon's log so far. */
  async log(): Promise<string> {
    try {
      return await Deno.readTextFile(this.logPath);
    } catch {
      return "";
    }
  }

  /** A client of this daemon. */
  client(namespace = "default"): TainerdClient {
    return new TainerdClient({ address: this.address, namespace });
  }

  /** Runs the real ctr against this daemon. */
  ctr(args: string[], opts: { stdin?: Uint8Array | string; namespace?: string } = {}) {
    return run("ctr", ["-a", this.address, "-n", opts.namespace ?? "default", ...args], opts);
  }

  /** Runs our CLI against this daemon. */
  cli(args: string[], opts: { stdin?: Uint8Array | string; env?: Record<string, string> } = {}) {
    return run(Deno.execPath(), ["run", "-A", MAIN, "-a", this.address, ...args], opts);
  }

  /** Stops the daemon with a signal and waits for it to exit. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus | undefined> {
    if (!this.#child || !this.#exited) return undefined;
    try {
      this.#child.kill(signal);
    } catch {
      // Already exited.
    }
    const st = await this.#exited;
    this.#child = undefined;
    return st;
  }

  /** Kills the daemon with SIGKILL, as a crash. */
  kill(): Promise<Deno.CommandStatus | undefined> {
    return this.stop("SIGKILL");
  }
}

/** Sleeps. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Runs `fn` with a fresh daemon on temp directories, then stops it and removes everything.
 */
export async function withDaemon(
  fn: (d: TestDaemon) => Promise<void>,
  opts: DaemonOptions = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-test-" });
  const d = new TestDaemon(dir);
  try {
    await d.start(opts);
    await fn(d);
  } catch (err) {
    console.error(`daemon log (${d.logPath}):\n${await d.log()}`);
    throw err;
  } finally {
    await d.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Calls a method as Connect JSON with curl over the unix socket. */
export function curlJson(
  address: string,
  path: string,
  body: string,
  headers: Record<string, string> = {},
): Promise<RunResult> {
  const args = [
    "-s",
    "--http2-prior-knowledge",
    "--unix-socket",
    address,
    "-H",
    "content-type: application/json",
    "-w",
    "\n%{http_code}",
  ];
  for (const [k, v] of Object.entries(headers)) args.push("-H", `${k}: ${v}`);
  args.push("--data-binary", body, `http://localhost${path}`);
  return run("curl", args);
}

/** Polls `fn` every 100 ms until it holds; throws after `ms` naming `what`. */
export async function waitFor(
  fn: () => Promise<boolean>,
  what: string,
  ms = 10_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await delay(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** The pids of the long-lived shims serving a daemon. */
export async function shimPids(d: TestDaemon): Promise<number[]> {
  const out = await new Deno.Command("pgrep", {
    args: ["-f", "--", ` shim .*-address ${d.address} `],
  }).output();
  return new TextDecoder().decode(out.stdout).trim().split("\n").filter((l) => l).map(Number);
}

/**
 * Runs `fn` with a daemon the test may kill and start again (same directories) and a busybox
 * rootfs; afterwards every task is killed and removed, the daemon stopped, the directory gone.
 */
export async function withRestartableDaemon(
  fn: (d: TestDaemon, rootfs: string) => Promise<void>,
  opts: DaemonOptions = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-test-" });
  const d = new TestDaemon(dir);
  try {
    const rootfs = await busyboxRootfs(dir);
    await d.start(opts);
    await fn(d, rootfs);
  } catch (err) {
    console.error(await d.log());
    throw err;
  } finally {
    try {
      const ls = await d.ctr(["tasks", "ls", "-q"]);
      for (const id of ls.stdout.trim().split("\n").filter((x) => x)) {
        await d.ctr(["tasks", "kill", "-s", "SIGKILL", id]);
        await delay(200);
        await d.ctr(["tasks", "rm", "-f", id]);
      }
    } catch {
      // Daemon gone.
    }
    await d.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** A running `ctr events` whose output is collected. */
export interface CtrEvents {
  /** Everything printed so far. */
  text(): string;
  /** Waits until the output matches `re`. */
  waitFor(re: RegExp, what: string, ms?: number): Promise<void>;
  /** Stops it and returns everything it printed. */
  stop(): Promise<string>;
}

/**
 * Starts `ctr events` against the daemon and returns once its subscription is live: a
 * marker namespace is created (and removed) until its event shows up, so no event published
 * afterwards can be missed, however loaded the machine.
 */
export async function ctrEvents(d: TestDaemon): Promise<CtrEvents> {
  const child = new Deno.Command("ctr", {
    args: ["-a", d.address, "events"],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let seen = "";
  const reading = (async () => {
    for await (const c of child.stdout.pipeThrough(new TextDecoderStream())) seen += c;
  })().catch(() => {});
  const marker = `events-ready-${crypto.randomUUID().slice(0, 8)}`;
  const stop = async () => {
    try {
      child.kill();
    } catch { /* gone */ }
    await child.status;
    await reading;
    return seen;
  };
  try {
    const deadline = Date.now() + 20_000;
    for (let i = 0; !seen.includes(marker); i++) {
      if (Date.now() > deadline) throw new Error("ctr events never showed the marker event");
      if (i % 10 === 0) await d.ctr(["namespaces", "create", `${marker}`]);
      await delay(50);
      if (i % 10 === 9) await d.ctr(["namespaces", "rm", marker]);
    }
    await d.ctr(["namespaces", "rm", marker]);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    text: () => seen,
    waitFor: (re, what, ms = 10_000) => waitFor(() => Promise.resolve(re.test(seen)), what, ms),
    stop,
  };
}
