import assert from "node:assert/strict";
import { idleDelayFromEnv, IdleReclaimer, reclaimMemory } from "./reclaim.ts";

Deno.test("reclaim: a full collection frees garbage (gc exposed at run time when allowed)", async () => {
  let garbage: unknown[] | null = Array.from({ length: 300_000 }, (_, i) => ({ i, s: `x${i}` }));
  const before = Deno.memoryUsage().heapUsed;
  garbage = null;
  await reclaimMemory(true);
  const after = Deno.memoryUsage().heapUsed;
  assert.equal(garbage, null);
  assert.ok(after < before - 10_000_000, `heap ${before} → ${after}`);
});

Deno.test("reclaim: one reclaim per quiet spell, none while calls keep coming", async () => {
  const r = new IdleReclaimer({ delayMs: 60 });
  try {
    for (let i = 0; i < 6; i++) {
      r.touch();
      await new Promise((res) => setTimeout(res, 20));
    }
    assert.equal(r.count, 0, "no reclaim while busy");
    await new Promise((res) => setTimeout(res, 150));
    assert.equal(r.count, 1);
    await new Promise((res) => setTimeout(res, 150));
    assert.equal(r.count, 1, "nothing more while idle");
    r.touch();
    await new Promise((res) => setTimeout(res, 150));
    assert.equal(r.count, 2);
  } finally {
    r.stop();
  }
});

Deno.test("reclaim: TAINERD_IDLE_RECLAIM_MS sets the quiet time; 0 turns reclaiming off", async () => {
  const before = Deno.env.get("TAINERD_IDLE_RECLAIM_MS");
  try {
    Deno.env.set("TAINERD_IDLE_RECLAIM_MS", "0");
    assert.equal(idleDelayFromEnv(), 0);
    const off = new IdleReclaimer();
    off.touch();
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(off.count, 0);
    off.stop();
    Deno.env.set("TAINERD_IDLE_RECLAIM_MS", "500");
    assert.equal(idleDelayFromEnv(), 500);
    Deno.env.set("TAINERD_IDLE_RECLAIM_MS", "soon");
    assert.equal(idleDelayFromEnv(), 2000, "not a number: the default");
  } finally {
    if (before === undefined) Deno.env.delete("TAINERD_IDLE_RECLAIM_MS");
    else Deno.env.set("TAINERD_IDLE_RECLAIM_MS", before);
  }
});
