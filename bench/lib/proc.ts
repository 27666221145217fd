/**
 * Process helpers for the benchmarks: running commands with a wall-clock time, reading
 * `/proc/<pid>/smaps_rollup`, finding the shims of one daemon, waiting for conditions.
 *
 * @module
 */

const decoder = new TextDecoder();

/** The outcome of a command. */
export interface Exec {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall-clock milliseconds from spawn to exit. */
  ms: number;
}

/** Options of {@link exec}. */
export interface ExecOptions {
  stdin?: string | Uint8Array;
  cwd?: string;
  env?: Record<string, string>;
  /** Kill the command (SIGKILL) after this many milliseconds. */
  timeoutMs?: number;
}

/** Runs a command to completion and times it. Never throws for a non-zero exit. */
export async function exec(cmd: string, args: string[], opts: ExecOptions = {}): Promise<Exec> {
  const t0 = performance.now();
  const child = new Deno.Command(cmd, {
    args,
    cwd: opts.cwd,
    env: opts.env,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timer: ReturnType<typeof setTimeout> | undefined;
  if (opts.timeoutMs) {
    timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    }, opts.timeoutMs);
  }
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(
      typeof opts.stdin === "string" ? new TextEncoder().encode(opts.stdin) : opts.stdin,
    );
    await w.close();
  }
  const out = await child.output();
  const ms = performance.now() - t0;
  clearTimeout(timer);
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
    ms,
  };
}

/** The last non-empty line of a command's stderr (or stdout): the reason it failed. */
export function reasonOf(r: Exec): string {
  const lines = (r.stderr.trim() || r.stdout.trim()).split("\n").filter((l) => l.trim());
  const last = lines.at(-1) ?? `exit ${r.code}`;
  return last.replace(/^ctr: /, "").slice(0, 200);
}

/** Runs a command and throws with its reason unless it succeeds. */
export async function mustExec(cmd: string, args: string[], opts: ExecOptions = {}): Promise<Exec> {
  const r = await exec(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${reasonOf(r)}`);
  return r;
}

/** Runs `sh -c script`, throwing on failure. */
export function sh(script: string, opts: ExecOptions = {}): Promise<Exec> {
  return mustExec("sh", ["-c", script], opts);
}

/** Sleeps. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` until it is true; returns the elapsed milliseconds, throws after `timeoutMs`. */
export async function waitFor(
  fn: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 60_000,
  intervalMs = 20,
): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (await fn()) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`Timed out waiting for ${what}`);
    await delay(intervalMs);
  }
}

/** Memory of one process, in KiB (from `/proc/<pid>/smaps_rollup`). */
export interface Memory {
  rssKiB: number;
  pssKiB: number;
}

/** Reads a process's RSS and PSS; undefined when it is gone. */
export function memoryOf(pid: number): Memory | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/smaps_rollup`);
  } catch {
    return undefined;
  }
  const field = (name: string) =>
    Number(text.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0);
  return { rssKiB: field("Rss"), pssKiB: field("Pss") };
}

/** A process's argv; undefined when it is gone. */
export function argvOf(pid: number): string[] | undefined {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0").slice(0, -1);
  } catch {
    return undefined;
  }
}

/** Every pid on the machine. */
export function allPids(): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (/^\d+$/.test(e.name)) pids.push(Number(e.name));
  }
  return pids;
}

/** A process's parent pid; undefined when it is gone. */
export function ppidOf(pid: number): number | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // pid (comm) state ppid …; comm may hold spaces and parentheses.
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return undefined;
  }
}

/**
 * The shims serving one daemon: processes started with `-address <daemon address>` (both
 * containerd's `containerd-shim-runc-v2` and tainerd's `deno … shim` are), excluding the
 * short-lived `start`/`delete` invocations.
 */
export function shimsOf(address: string): number[] {
  const out: number[] = [];
  for (const pid of allPids()) {
    const argv = argvOf(pid);
    if (!argv) continue;
    const i = argv.indexOf("-address");
    if (i < 0 || argv[i + 1] !== address) continue;
    const last = argv.at(-1);
    if (last === "start" || last === "delete") continue;
    out.push(pid);
  }
  return out;
}

/** The children of a process. */
export function childrenOf(pid: number): number[] {
  return allPids().filter((p) => ppidOf(p) === pid);
}

/** Sends a signal, ignoring a process that is already gone. */
export function signal(pid: number, sig: Deno.Signal): void {
  try {
    Deno.kill(pid, sig);
  } catch {
    // Gone.
  }
}

/** Whether a process exists (and is not a zombie). */
export function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}
