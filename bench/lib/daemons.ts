/**
 * The two daemons under test, each private to the benchmark: containerd with its own config
 * (root, state, gRPC and ttrpc sockets in a temp dir, CRI disabled) and tainerd started from
 * this checkout the same way. Both are spawned detached (Ctrl-C in the terminal reaches the
 * benchmark, which then tears them down in order) with their output in a log file, and both
 * are driven by the real `ctr`.
 *
 * @module
 */

import { delay, type Exec, exec, type ExecOptions, reasonOf, signal } from "./proc.ts";

/** Which daemon. */
export type Kind = "containerd" | "tainerd";

/** The namespace every benchmark works in (pulls use their own, see figure 3). */
export const NAMESPACE = "bench";

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
const MAIN = `${REPO}/main.ts`;
const DENO_JSON = `${REPO}/deno.json`;
/** containerd's binary. */
export const CONTAINERD = "/usr/bin/containerd";

/** A daemon under test, on its own directory. */
export class BenchDaemon {
  readonly kind: Kind;
  readonly dir: string;
  readonly address: string;
  readonly root: string;
  readonly state: string;
  readonly logPath: string;
  readonly configPath: string;
  /** runc's root for containers run through ctr (`--runc-root`): kept inside the temp dir. */
  readonly runcRoot: string;
  /** ctr's `--fifo-dir`, inside the temp dir. */
  readonly fifoDir: string;
  #child?: Deno.ChildProcess;
  #status?: Promise<Deno.CommandStatus>;
  #exited = false;

  readonly #perContainerShims: boolean;
  /** How tainerd is run: the command up to (not including) its own arguments. */
  readonly entry: string[];

  constructor(
    kind: Kind,
    dir: string,
    opts: { perContainerShims?: boolean; bundle?: string } = {},
  ) {
    this.#perContainerShims = opts.perContainerShims ?? false;
    // The bundle through its installed wrapper (`dist/tainerd`, which also sets the V8 flags
    // an installed tainerd runs with), or the source tree through deno.
    this.entry = opts.bundle
      ? [opts.bundle.replace(/\.js$/, "")]
      : [Deno.execPath(), "run", "-A", "--config", DENO_JSON, MAIN];
    this.kind = kind;
    this.dir = dir;
    this.address = `${dir}/${kind === "containerd" ? "c" : "t"}.sock`;
    this.root = `${dir}/root`;
    this.state = `${dir}/state`;
    this.logPath = `${dir}/daemon.log`;
    this.configPath = `${dir}/config.toml`;
    this.runcRoot = `${dir}/runc`;
    this.fifoDir = `${dir}/fifo`;
  }

  /** The daemon's pid (while it runs). */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Whether the daemon process runs. */
  get running(): boolean {
    return this.#child !== undefined && !this.#exited;
  }

  /**
   * If the daemon was started and has exited on its own since (a crash), says so with its exit
   * status and last log lines, and forgets it (so it can be started again); else undefined.
   */
  async crashed(): Promise<string | undefined> {
    if (this.#child === undefined || !this.#exited) return undefined;
    const st = await this.#status!;
    this.#child = undefined;
    const tail = await this.logTail(15);
    return `${this.kind} exited on its own (${
      st.signal ? `signal ${st.signal}` : `code ${st.code}`
    }); ` +
      `last log lines:\n${tail}`;
  }

  /** Writes the config and directories. */
  async prepare(): Promise<void> {
    await Deno.mkdir(this.dir, { recursive: true });
    await Deno.mkdir(this.fifoDir, { recursive: true });
    if (this.kind === "containerd") {
      const q = JSON.stringify;
      await Deno.writeTextFile(
        this.configPath,
        [
          "version = 2",
          `root = ${q(this.root)}`,
          `state = ${q(this.state)}`,
          `disabled_plugins = ["io.containerd.grpc.v1.cri"]`,
          "[grpc]",
          `  address = ${q(this.address)}`,
          "[ttrpc]",
          `  address = ${q(`${this.address}.ttrpc`)}`,
          "[debug]",
          `  level = "info"`,
          `[plugins."io.containerd.internal.v1.opt"]`,
          `  path = ${q(`${this.dir}/opt`)}`,
          "",
        ].join("\n"),
      );
    } else {
      // As containerd's here: no CRI (its plugin is disabled above).
      const lines = ["version = 2", `disabled_plugins = ["io.containerd.grpc.v1.cri"]`];
      if (this.#perContainerShims) {
        lines.push(`[plugins."io.containerd.runtime.v2.task"]`, `  shim_group = ""`);
      }
      await Deno.writeTextFile(this.configPath, lines.join("\n") + "\n");
    }
  }

  /** The daemon's command line. */
  #command(): string[] {
    if (this.kind === "containerd") return [CONTAINERD, "--config", this.configPath];
    return [
      ...this.entry,
      "daemon",
      "--address",
      this.address,
      "--root",
      this.root,
      "--state",
      this.state,
      "--config",
      this.configPath,
      "--log-level",
      "info",
    ];
  }

  /**
   * Starts the daemon and waits until its socket accepts connections and `ctr version`
   * answers. Returns the milliseconds from spawn to the socket accepting connections.
   */
  async start(timeoutMs = 60_000): Promise<number> {
    const t0 = await this.spawn();
    const ms = await this.waitConnectable(t0, timeoutMs);
    const v = await this.ctr(["version"]);
    if (v.code !== 0) throw new Error(`${this.kind} does not answer: ${reasonOf(v)}`);
    return ms;
  }

  /** Spawns the daemon process; returns the `performance.now()` of the spawn. */
  async spawn(): Promise<number> {
    if (this.#child) throw new Error(`${this.kind} already runs`);
    await Deno.remove(this.address).catch(() => {});
    const t0 = performance.now();
    // `exec` keeps the daemon's pid; the redirection keeps its output out of this process.
    const child = new Deno.Command("sh", {
      args: ["-c", 'exec "$@" >>"$0" 2>&1', this.logPath, ...this.#command()],
      stdin: "null",
      stdout: "null",
      stderr: "null",
      detached: true,
    }).spawn();
    this.#child = child;
    this.#exited = false;
    this.#status = child.status.then((s) => {
      this.#exited = true;
      return s;
    });
    return t0;
  }

  /** Polls the socket until it accepts a connection; milliseconds since `t0`. */
  async waitConnectable(t0: number, timeoutMs = 60_000): Promise<number> {
    for (;;) {
      if (this.#exited) {
        this.#child = undefined;
        const tail = await this.logTail();
        throw new Error(`${this.kind} exited at start: ${tail.split("\n").at(-1)}\n${tail}`);
      }
      try {
        const conn = await Deno.connect({ transport: "unix", path: this.address });
        conn.close();
        return performance.now() - t0;
      } catch {
        // Not yet.
      }
      if (performance.now() - t0 > timeoutMs) {
        throw new Error(`${this.kind} did not serve within ${timeoutMs} ms`);
      }
      await delay(5);
    }
  }

  /** Stops the daemon with a signal; SIGKILL after `graceMs`. Shims keep running. */
  async stop(sig: Deno.Signal = "SIGTERM", graceMs = 15_000): Promise<void> {
    const child = this.#child;
    if (!child || !this.#status) return;
    if (this.#exited) {
      this.#child = undefined;
      return;
    }
    signal(child.pid, sig);
    const timer = setTimeout(() => signal(child.pid, "SIGKILL"), graceMs);
    await this.#status;
    clearTimeout(timer);
    this.#child = undefined;
  }

  /** Runs the real ctr against this daemon in a namespace. */
  ctr(args: string[], opts: ExecOptions & { namespace?: string } = {}): Promise<Exec> {
    return exec("ctr", ["-a", this.address, "-n", opts.namespace ?? NAMESPACE, ...args], opts);
  }

  /** Runs ctr and throws with the reason unless it succeeds. */
  async mustCtr(args: string[], opts: ExecOptions & { namespace?: string } = {}): Promise<Exec> {
    const r = await this.ctr(args, opts);
    if (r.code !== 0) throw new Error(`ctr ${args.join(" ")} (${this.kind}): ${reasonOf(r)}`);
    return r;
  }

  /** The `ctr run` flags that keep runc state and fifos inside the benchmark's directory. */
  runFlags(): string[] {
    return ["--runc-root", this.runcRoot, "--fifo-dir", this.fifoDir];
  }

  /** The tasks and their statuses (`ctr tasks ls`). */
  async tasks(namespace = NAMESPACE): Promise<Map<string, string>> {
    const r = await this.ctr(["tasks", "ls"], { namespace });
    const out = new Map<string, string>();
    if (r.code !== 0) return out;
    for (const line of r.stdout.trim().split("\n").slice(1)) {
      const [id, , status] = line.trim().split(/\s+/);
      if (id) out.set(id, status);
    }
    return out;
  }

  /** The last lines of the daemon's log. */
  async logTail(lines = 30): Promise<string> {
    try {
      return (await Deno.readTextFile(this.logPath)).trim().split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }
}
