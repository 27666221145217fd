import assert from "node:assert/strict";
import { IdleReclaimer, reclaimMemory } from "./reclaim.ts";

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
