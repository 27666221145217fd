import assert from "node:assert/strict";
import type { GcStats } from "../metadata/gc.ts";
import {
  type Collectable,
  defaultSchedulerConfig,
  GcScheduler,
  parseGoDuration,
  type SchedulerConfig,
} from "./scheduler.ts";

/** A collector that counts collections and lets the test report mutations. */
class FakeCollector implements Collectable {
  runs = 0;
  #mutation = new Set<(deletion: boolean) => void>();
  #collected = new Set<(stats: GcStats) => void>();

  collect(): Promise<GcStats> {
    this.runs++;
    const stats: GcStats = { metadataMs: 0.1, cleanupMs: 0, marked: 0, removed: {} };
    for (const cb of this.#collected) cb(stats);
    return Promise.resolve(stats);
  }
  onMutation(cb: (deletion: boolean) => void): () => void {
    this.#mutation.add(cb);
    return () => this.#mutation.delete(cb);
  }
  onCollected(cb: (stats: GcStats) => void): () => void {
    this.#collected.add(cb);
    return () => this.#collected.delete(cb);
  }
  mutated(deletion = false): void {
    for (const cb of this.#mutation) cb(deletion);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function withScheduler(
  config: Partial<SchedulerConfig>,
  fn: (s: GcScheduler, c: FakeCollector) => Promise<void>,
): Promise<void> {
  const c = new FakeCollector();
  const s = new GcScheduler(c, { ...defaultSchedulerConfig(), ...config });
  s.start();
  try {
    await fn(s, c);
  } finally {
    await s.close();
  }
}

Deno.test("parseGoDuration() reads Go durations", () => {
  assert.equal(parseGoDuration("0"), 0);
  assert.equal(parseGoDuration("0s"), 0);
  assert.equal(parseGoDuration("100ms"), 100);
  assert.equal(parseGoDuration("1.5s"), 1500);
  assert.equal(parseGoDuration("2h45m"), 9_900_000);
  assert.equal(parseGoDuration("24h"), 86_400_000);
  assert.equal(parseGoDuration("500us"), 0.5);
  assert.equal(parseGoDuration("-1m"), -60_000);
  for (const bad of ["", "1", "ms", "1d", "1 s", "abc"]) {
    assert.throws(() => parseGoDuration(bad), /Invalid duration/, bad);
  }
});

Deno.test("GcScheduler runs a first collection after the startup delay", () =>
  withScheduler({ startup_delay: "20ms" }, async (_s, c) => {
    assert.equal(c.runs, 0);
    await sleep(300);
    assert.equal(c.runs, 1);
  }));

Deno.test("GcScheduler collects soon after a deletion, not after mere mutations", () =>
  withScheduler({ startup_delay: "10ms", mutation_threshold: 5 }, async (_s, c) => {
    await sleep(120);
    assert.equal(c.runs, 1);
    c.mutated();
    c.mutated();
    await sleep(120);
    assert.equal(c.runs, 1, "two mutations are below the threshold");
    c.mutated(true);
    // Collected at the next tick (interval = avg/pause_threshold - avg ≈ 5ms here).
    await sleep(300);
    assert.equal(c.runs, 2);
    for (let i = 0; i < 5; i++) c.mutated();
    await sleep(300);
    assert.equal(c.runs, 3, "the mutation threshold makes the next tick collect");
  }));

Deno.test("GcScheduler.scheduleAndWait() triggers a collection and waits for it", () =>
  withScheduler({ startup_delay: "0s" }, async (s, c) => {
    assert.equal(c.runs, 0);
    const stats = await s.scheduleAndWait();
    assert.equal(c.runs, 1);
    assert.equal(stats.metadataMs, 0.1);
  }));

Deno.test("GcScheduler with a deletion threshold waits for enough deletions", () =>
  withScheduler(
    { startup_delay: "0s", deletion_threshold: 3, schedule_delay: "5ms", pause_threshold: 0 },
    async (_s, c) => {
      c.mutated(true);
      c.mutated(true);
      await sleep(40);
      assert.equal(c.runs, 0);
      c.mutated(true);
      await sleep(150);
      assert.equal(c.runs, 1);
    },
  ));

Deno.test("GcScheduler's periodic interval collects even when nothing changed", () =>
  withScheduler(
    { startup_delay: "5ms", periodic_interval: "30ms", pause_threshold: 0.5 },
    async (_s, c) => {
      await sleep(500);
      assert.ok(c.runs >= 3, `ran ${c.runs} times`);
    },
  ));

Deno.test("GcScheduler clamps its config as containerd", async () => {
  const s = new GcScheduler(new FakeCollector(), {
    ...defaultSchedulerConfig(),
    pause_threshold: 2,
    mutation_threshold: -1,
    schedule_delay: "-5s",
  });
  assert.equal(s.pauseThreshold, 0.5);
  assert.equal(s.mutationThreshold, 0);
  assert.equal(s.scheduleDelayMs, 0);
  await s.close();
});

Deno.test("GcScheduler waits until plugins finished their init before collecting", async () => {
  const c = new FakeCollector();
  let ready = false;
  const s = new GcScheduler(
    c,
    { ...defaultSchedulerConfig(), startup_delay: "5ms" },
    undefined,
    () => ready,
  );
  s.start();
  try {
    await sleep(150);
    assert.equal(c.runs, 0);
    ready = true;
    await sleep(200);
    assert.equal(c.runs, 1);
    // collect() and deleted() are there for other plugins.
    await s.collect();
    assert.equal(c.runs, 2);
    s.deleted();
  } finally {
    await s.close();
  }
});

Deno.test("GcScheduler does not lose a deletion made while a collection runs", async () => {
  /** A collector whose collections take a while and report themselves busy meanwhile. */
  class SlowCollector extends FakeCollector {
    busy = false;
    override async collect(): Promise<GcStats> {
      this.busy = true;
      await sleep(40);
      this.busy = false;
      return super.collect();
    }
  }
  const c = new SlowCollector();
  const s = new GcScheduler(c, {
    ...defaultSchedulerConfig(),
    startup_delay: "1ms",
    schedule_delay: "5ms",
    periodic_interval: "0s",
  });
  s.start();
  try {
    const start = Date.now() + 2000;
    while (!c.busy && Date.now() < start) await sleep(1);
    assert.ok(c.busy, "the startup collection is running");
    c.mutated(true); // after its mark-and-sweep: only a next collection can see it
    const deadline = Date.now() + 2000;
    while (c.runs < 2 && Date.now() < deadline) await sleep(10);
    assert.equal(c.runs, 2, "a second collection followed the late deletion");
  } finally {
    await s.close();
  }
});
