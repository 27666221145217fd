/**
 * Exit statuses of the container processes, which runc leaves as children of the shim (a
 * child subreaper). Only known pids are waited for — the init pid from runc's `--pid-file`,
 * exec pids from theirs — because `waitpid(-1)` would steal the statuses of `Deno.Command`
 * children such as runc itself.
 *
 * Orphans that are not tracked (processes of a container without its own pid namespace,
 * re-parented to the shim when their parent died) are swept as zombies from the shim's
 * `/proc/self/task/<tid>/children` lists, only while no command of the shim is running (see
 * {@linkcode Reaper.hold}), so that no status of a `Deno.Command` child is taken.
 *
 * @module
 */

import type { Logger } from "../log.ts";
import { isErrno, kill, waitpid, waitpidAsync, WNOHANG } from "../sys/libc.ts";

/** How a process ended. */
export interface Exit {
  /** The pid. */
  pid: number;
  /** The exit status as containerd reports it: the exit code, or 128 + the killing signal. */
  status: number;
  /** When the exit was observed. */
  exitedAt: Date;
}

/** The status reported when a process ended but its status could not be collected. */
export const UNKNOWN_EXIT_STATUS = 255;

/** Waits for known pids and sweeps untracked zombie orphans. */
export class Reaper {
  readonly #log: Logger;
  readonly #tracked = new Map<number, Promise<Exit>>();
  #holds = 0;
  #timer: ReturnType<typeof setInterval> | null = null;

  constructor(log: Logger) {
    this.#log = log;
  }

  /**
   * Resolves when `pid` (a child of this process) exits. Watching the same pid twice returns
   * the same promise. When `pid` is not a child (ECHILD), its end is detected by polling and
   * reported with status {@linkcode UNKNOWN_EXIT_STATUS}.
   */
  watch(pid: number): Promise<Exit> {
    const known = this.#tracked.get(pid);
    if (known) return known;
    const p = this.#wait(pid).finally(() => {
      this.#tracked.delete(pid);
      this.sweep();
    });
    this.#tracked.set(pid, p);
    return p;
  }

  async #wait(pid: number): Promise<Exit> {
    try {
      for (;;) {
        const r = await waitpidAsync(pid);
        if (r.exited || r.signaled) return { pid, status: r.exitCode, exitedAt: new Date() };
      }
    } catch (err) {
      if (!isErrno(err, "ECHILD")) throw err;
    }
    this.#log.warn("process is not a child of the shim; polling for its end", { pid });
    for (;;) {
      try {
        kill(pid, 0);
      } catch (err) {
        if (isErrno(err, "ESRCH")) {
          return { pid, status: UNKNOWN_EXIT_STATUS, exitedAt: new Date() };
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  /**
   * Marks a section during which untracked zombies must not be swept: a command of the shim is
   * running, or a process was started and its pid is not watched yet. Call the returned
   * function to end it.
   */
  hold(): () => void {
    this.#holds++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#holds--;
    };
  }

  /** Runs `fn` within a {@linkcode Reaper.hold}. */
  async holding<T>(fn: () => Promise<T>): Promise<T> {
    const release = this.hold();
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Sweeps untracked zombie children now (unless held) and every `intervalMs` from now on. */
  startSweeping(intervalMs = 10_000): void {
    if (this.#timer !== null) return;
    this.#timer = setInterval(() => this.sweep(), intervalMs);
    Deno.unrefTimer(this.#timer);
  }

  /** Stops the periodic sweep. */
  stopSweeping(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Sweeps a few times over the next second, e.g. after killing a container's leftovers. */
  sweepSoon(): void {
    for (const ms of [50, 250, 1000]) {
      const timer = setTimeout(() => this.sweep(), ms);
      Deno.unrefTimer(timer);
    }
  }

  /** Reaps untracked zombie children, unless a hold is active. Returns the reaped pids. */
  sweep(): number[] {
    if (this.#holds > 0) return [];
    const reaped: number[] = [];
    for (const pid of childPids()) {
      if (this.#tracked.has(pid) || !isZombie(pid)) continue;
      try {
        const r = waitpid(pid, WNOHANG);
        if (r.pid === pid) reaped.push(pid);
      } catch {
        // gone or not ours
      }
    }
    if (reaped.length > 0) this.#log.debug("reaped orphaned processes", { pids: reaped.join(",") });
    return reaped;
  }
}

/** The pids of this process's children, from `/proc/self/task/<tid>/children`. */
function childPids(): number[] {
  const pids: number[] = [];
  try {
    for (const task of Deno.readDirSync("/proc/self/task")) {
      try {
        const text = Deno.readTextFileSync(`/proc/self/task/${task.name}/children`);
        for (const s of text.trim().split(/\s+/)) if (s !== "") pids.push(Number(s));
      } catch {
        // thread gone
      }
    }
  } catch {
    // no /proc
  }
  return pids;
}

function isZombie(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z";
  } catch {
    return false;
  }
}
