/**
 * Gives memory back once a burst of work is over: a full V8 collection, then glibc's
 * `malloc_trim(0)`, after `delayMs` without activity.
 *
 * Why: V8 grows its heap under load and does not collect while the process merely waits, and
 * glibc keeps freed native memory (Deno's HTTP/2, SQLite, FFI buffers) in its arenas. A daemon
 * measured 178 MiB resident when idle after a pull and some runs, 81 MiB after one reclaim
 * (bench figure 4). Nothing runs while idle: one timer per burst, none after the reclaim.
 *
 * The collection needs V8's `gc` (the `--expose-gc` flag the installed wrapper and the
 * daemon's shims get); without it, only the trim runs, unless `allowFlagChange` lets this module
 * expose it at run time (node:v8 + node:vm, for a daemon run from source).
 *
 * @module
 */

import { libc } from "./libc.ts";

type GcFn = (opts?: { type: string; execution: string; flavor: string }) => void;

let gcFn: GcFn | null | undefined;

async function fullGc(allowFlagChange: boolean): Promise<void> {
  if (gcFn === undefined) {
    const exposed = (globalThis as { gc?: GcFn }).gc;
    if (typeof exposed === "function") {
      gcFn = exposed;
    } else if (allowFlagChange) {
      try {
        const v8 = await import("node:v8");
        const vm = await import("node:vm");
        v8.setFlagsFromString("--expose-gc");
        gcFn = vm.runInNewContext("gc") as GcFn;
      } catch {
        gcFn = null;
      }
    } else {
      gcFn = null;
    }
  }
  // "last-resort": V8's memory-reducing collection, which also hands the freed pages back to
  // the system (a plain full collection keeps them pooled: heap 60 → 20 MiB, resident unchanged).
  gcFn?.({ type: "major", execution: "sync", flavor: "last-resort" });
}

/** Reclaims memory now: a full collection (when possible), then `malloc_trim(0)`. */
export async function reclaimMemory(allowFlagChange = false): Promise<void> {
  await fullGc(allowFlagChange);
  try {
    libc().malloc_trim(0n);
  } catch {
    // No glibc (musl): nothing to trim.
  }
}

/**
 * The quiet time before a reclaim: `TAINERD_IDLE_RECLAIM_MS` (0 turns reclaiming off: a reclaim
 * costs ~40 ms of one thread and the next calls recompile what V8 dropped), else 2000.
 */
export function idleDelayFromEnv(): number {
  const v = Deno.env.get("TAINERD_IDLE_RECLAIM_MS");
  const n = v === undefined || v === "" ? NaN : Number(v);
  return Number.isFinite(n) && n >= 0 ? n : 2000;
}

/** Options of {@linkcode IdleReclaimer}. */
export interface IdleReclaimerOptions {
  /** Quiet time before a reclaim (default {@linkcode idleDelayFromEnv}); 0: never. */
  delayMs?: number;
  /** May expose `gc` through node:v8 when the flag was not given (the daemon: yes). */
  allowFlagChange?: boolean;
  /** Told how long each reclaim took, in milliseconds. */
  onReclaim?: (ms: number) => void;
}

/** Reclaims memory once activity (`touch()`) has stopped for a while. */
export class IdleReclaimer {
  readonly #delayMs: number;
  readonly #allowFlagChange: boolean;
  readonly #onReclaim?: (ms: number) => void;
  #last = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #stopped = false;
  /** Reclaims done (for tests). */
  count = 0;

  constructor(opts: IdleReclaimerOptions = {}) {
    this.#delayMs = opts.delayMs ?? idleDelayFromEnv();
    this.#allowFlagChange = opts.allowFlagChange ?? false;
    this.#onReclaim = opts.onReclaim;
  }

  /** Something happened: reclaim once it has been quiet for the delay. */
  touch(): void {
    this.#last = performance.now();
    if (this.#timer !== undefined || this.#stopped || this.#delayMs <= 0) return;
    this.#arm(this.#delayMs);
  }

  #arm(ms: number): void {
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      const quiet = performance.now() - this.#last;
      if (quiet < this.#delayMs) {
        this.#arm(this.#delayMs - quiet);
        return;
      }
      this.count++;
      const t0 = performance.now();
      reclaimMemory(this.#allowFlagChange).then(
        () => this.#onReclaim?.(performance.now() - t0),
        () => {},
      );
    }, ms);
    // Never the reason the process stays alive.
    Deno.unrefTimer(this.#timer as unknown as number);
  }

  /** No more reclaims. */
  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
