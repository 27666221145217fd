/**
 * The garbage collection scheduler, as containerd's `gc/scheduler`: decides when the
 * collector runs, from the changes the stores report.
 *
 * - After startup (`startup_delay`), a first collection sets the pace.
 * - A deletion (a lease, content…) makes a collection due: at once (`schedule_delay`) when
 *   none is scheduled, else at the next scheduled time; `deletion_threshold` deletions force
 *   one within `schedule_delay`.
 * - `mutation_threshold` changes make the next scheduled time collect even without deletions.
 * - Between collections the scheduler ticks every `interval`, computed so collections take
 *   at most `pause_threshold` of the time (but at least 100ms apart); ticks with nothing to
 *   do are skipped.
 * - tainerd addition: `periodic_interval` (0 disables) collects at a tick when the last
 *   collection is older than that, so expired leases and stale ingests go even when idle.
 * - {@link GcScheduler.scheduleAndWait} triggers a collection and waits for it;
 *   {@link GcScheduler.collect} runs one at once.
 * - No scheduled collection runs before every plugin finished its init: a store that
 *   registers its GC roots late (images, containers) must not find its content swept.
 *
 * @module
 */

import { invalidArgument } from "../errdefs.ts";
import type { GcStats } from "../metadata/gc.ts";
import type { Logger } from "../../log.ts";

/** The scheduler's config section, with containerd's keys (durations as Go strings). */
export interface SchedulerConfig {
  /** Largest share of time collections may take (0–0.5). Default 0.02. */
  pause_threshold: number;
  /** Deletions that force a collection within `schedule_delay`; 0: any deletion schedules. */
  deletion_threshold: number;
  /** Changes that make the next scheduled time collect; 0: never. Default 100. */
  mutation_threshold: number;
  /** Delay of a triggered collection. Default "0ms". */
  schedule_delay: string;
  /** Delay of the first collection after startup. Default "100ms". */
  startup_delay: string;
  /** tainerd: collect at least this often ("0s": only when changes call for it). */
  periodic_interval: string;
}

/** The defaults, as containerd's. */
export function defaultSchedulerConfig(): SchedulerConfig {
  return {
    pause_threshold: 0.02,
    deletion_threshold: 0,
    mutation_threshold: 100,
    schedule_delay: "0ms",
    startup_delay: "100ms",
    periodic_interval: "1h",
  };
}

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "µs": 1e-3,
  "μs": 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/**
 * Parses a Go duration (`"300ms"`, `"1.5h"`, `"2h45m"`, `"0"`) into milliseconds.
 *
 * @throws {TainerdError} InvalidArgument when the text is not a duration.
 */
export function parseGoDuration(text: string): number {
  const s = text.trim();
  if (s === "0" || s === "+0" || s === "-0") return 0;
  const m = /^([+-]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$/.exec(s);
  if (!m) throw invalidArgument(`Invalid duration ${JSON.stringify(text)}`);
  let total = 0;
  for (const part of s.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g)) {
    total += Number(part[1]) * UNIT_MS[part[2]];
  }
  return m[1] === "-" ? -total : total;
}

/** How soon to look again when plugins are still initialising. */
const NOT_READY_RETRY_MS = 50;

/** The shortest time between two scheduler ticks. */
const MIN_INTERVAL_MS = 100;

/** What the scheduler drives: the metadata collector. */
export interface Collectable {
  collect(): Promise<GcStats>;
  onMutation(cb: (deletion: boolean) => void): () => void;
  onCollected(cb: (stats: GcStats) => void): () => void;
  /** Whether a collection is running (its mark-and-sweep has already happened). */
  readonly busy?: boolean;
}

/** The scheduler, parsed config in milliseconds. */
export class GcScheduler {
  readonly pauseThreshold: number;
  readonly deletionThreshold: number;
  readonly mutationThreshold: number;
  readonly scheduleDelayMs: number;
  readonly startupDelayMs: number;
  readonly periodicMs: number;
  readonly #collector: Collectable;
  readonly #log?: Logger;
  readonly #unsubscribe: (() => void)[] = [];
  #timer?: ReturnType<typeof setTimeout>;
  #next?: number;
  #last?: number;
  #interval = 1000;
  #gcTime = 0;
  #collections = 0;
  #triggered = false;
  #deletions = 0;
  #mutations = 0;
  /** Changes made while a collection ran: its mark-and-sweep did not see them. */
  #lateDeletions = 0;
  #lateMutations = 0;
  #running?: Promise<unknown>;
  #closed = false;
  #waiters: { resolve: (s: GcStats) => void; reject: (e: unknown) => void }[] = [];

  readonly #ready: () => boolean;

  /**
   * `ready` tells whether collections may run yet: the plugin passes "every plugin has
   * finished its init", so no collection runs before every store registered its roots.
   */
  constructor(
    collector: Collectable,
    config: SchedulerConfig,
    log?: Logger,
    ready: () => boolean = () => true,
  ) {
    this.#collector = collector;
    this.#log = log;
    this.#ready = ready;
    this.pauseThreshold = Math.min(0.5, Math.max(0, config.pause_threshold));
    this.deletionThreshold = Math.max(0, Math.floor(config.deletion_threshold));
    this.mutationThreshold = Math.max(0, Math.floor(config.mutation_threshold));
    this.scheduleDelayMs = Math.max(0, parseGoDuration(config.schedule_delay));
    this.startupDelayMs = Math.max(0, parseGoDuration(config.startup_delay));
    this.periodicMs = Math.max(0, parseGoDuration(config.periodic_interval));
  }

  /** Starts listening for changes and schedules the startup collection. */
  start(): void {
    this.#unsubscribe.push(this.#collector.onMutation((deletion) => this.#onMutation(deletion)));
    this.#unsubscribe.push(this.#collector.onCollected((stats) => this.#onCollected(stats)));
    if (this.startupDelayMs > 0) this.#schedule(this.startupDelayMs);
  }

  /** Triggers a collection (after `schedule_delay`) and waits for it. */
  scheduleAndWait(): Promise<GcStats> {
    const done = new Promise<GcStats>((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
    });
    this.#triggered = true;
    this.#maybeSchedule();
    return done;
  }

  /** Runs a collection now (after a running one) and waits for it. */
  collect(): Promise<GcStats> {
    return this.#collector.collect();
  }

  /** Notes a deletion made outside the metadata stores: a collection becomes due. */
  deleted(): void {
    this.#onMutation(true);
  }

  /** When the next collection is due (epoch ms), if scheduled. */
  get nextCollection(): number | undefined {
    return this.#next;
  }

  #onMutation(deletion: boolean): void {
    if (deletion) this.#deletions++;
    this.#mutations++;
    if (this.#collector.busy) {
      if (deletion) this.#lateDeletions++;
      this.#lateMutations++;
    }
    this.#maybeSchedule();
  }

  #maybeSchedule(): void {
    if (this.#closed) return;
    const due = this.#triggered ||
      (this.deletionThreshold > 0 && this.#deletions >= this.deletionThreshold) ||
      (this.#next === undefined &&
        ((this.deletionThreshold === 0 && this.#deletions > 0) ||
          (this.mutationThreshold > 0 && this.#mutations >= this.mutationThreshold)));
    if (!due) return;
    if (this.#next === undefined || this.#next > Date.now() + this.scheduleDelayMs) {
      this.#schedule(this.scheduleDelayMs);
    }
  }

  #schedule(ms: number): void {
    if (this.#closed) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#next = Date.now() + ms;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#tick();
    }, ms);
  }

  #tick(): void {
    if (this.#closed) return;
    if (this.#running) {
      // A collection outside the scheduler (a synchronous delete) is running: look again soon.
      this.#schedule(this.#interval);
      return;
    }
    if (!this.#ready()) {
      // Plugins are still initialising: some stores may not have registered their roots.
      this.#schedule(NOT_READY_RETRY_MS);
      return;
    }
    const now = Date.now();
    const periodicDue = this.periodicMs > 0 && this.#last !== undefined &&
      now - this.#last >= this.periodicMs;
    if (
      !this.#triggered && this.#last !== undefined && this.#deletions === 0 &&
      (this.mutationThreshold === 0 || this.#mutations < this.mutationThreshold) && !periodicDue
    ) {
      this.#schedule(this.#interval);
      return;
    }
    this.#next = undefined;
    const run = this.#collector.collect().then(
      () => {},
      (err) => {
        this.#log?.error("garbage collection failed", {
          error: err instanceof Error ? err.message : String(err),
        });
        this.#last = Date.now();
        const waiters = this.#waiters.splice(0);
        for (const w of waiters) w.reject(err);
        this.#schedule(this.#interval + 1000);
      },
    );
    this.#running = run.finally(() => {
      this.#running = undefined;
    });
  }

  /** After any collection (scheduled or not): reset the counters and set the pace. */
  #onCollected(stats: GcStats): void {
    this.#gcTime += stats.metadataMs;
    this.#collections++;
    this.#triggered = false;
    // What changed while this collection ran counts toward the next one.
    this.#deletions = this.#lateDeletions;
    this.#mutations = this.#lateMutations;
    this.#lateDeletions = 0;
    this.#lateMutations = 0;
    if (this.pauseThreshold > 0) {
      const avg = this.#gcTime / this.#collections;
      // containerd's pace, with a floor so an idle daemon does not wake up every few ms.
      this.#interval = Math.max(MIN_INTERVAL_MS, avg / this.pauseThreshold - avg);
    }
    this.#last = Date.now();
    const waiters = this.#waiters.splice(0);
    for (const w of waiters) w.resolve(stats);
    this.#schedule(this.#interval);
    this.#maybeSchedule();
  }

  /** Stops scheduling and waits for a running collection. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const u of this.#unsubscribe.splice(0)) u();
    await this.#running;
    const waiters = this.#waiters.splice(0);
    for (const w of waiters) w.reject(new Error("The garbage collector is shutting down"));
  }
}
