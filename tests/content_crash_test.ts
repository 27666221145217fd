/**
 * Crash safety of ingests: the daemon is SIGKILLed in the middle of a large streamed write,
 * restarted on the same directories, and the ingest resumes from the offset Status reports.
 * No partial blob is ever visible.
 */

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { readContent, RemoteWriter } from "../client/content.ts";
import { TainerdError } from "../plugins/errdefs.ts";
import { TestDaemon } from "./harness.ts";

const MIB = 1 << 20;
const TOTAL = 256 * MIB;
const KILL_POINTS = [40 * MIB, 130 * MIB, 220 * MIB];
const REF = "big-layer";

/** The blob: 256 distinct 1 MiB chunks derived from one random block. */
class BigBlob {
  readonly #base = new Uint8Array(randomBytes(MIB));
  readonly digest: string;

  constructor() {
    const h = createHash("sha256");
    for (let i = 0; i < TOTAL / MIB; i++) h.update(this.chunk(i));
    this.digest = `sha256:${h.digest("hex")}`;
  }

  /** Chunk `i` (a fresh array). */
  chunk(i: number): Uint8Array {
    const c = this.#base.slice();
    new DataView(c.buffer).setUint32(0, i);
    return c;
  }

  /** The bytes from `offset` to the end of its chunk. */
  from(offset: number): Uint8Array {
    return this.chunk(Math.floor(offset / MIB)).subarray(offset % MIB);
  }
}

/** Every blob under blobs/ must hash to its name; returns their digests. */
async function checkBlobs(d: TestDaemon): Promise<string[]> {
  const dir = join(d.root, "io.containerd.content.v1.content", "blobs", "sha256");
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const h = createHash("sha256");
      using f = await Deno.open(join(dir, e.name));
      for await (const c of f.readable) h.update(c);
      assert.equal(h.digest("hex"), e.name, `blob ${e.name} does not match its digest`);
      out.push(`sha256:${e.name}`);
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return out;
}

async function assertNotVisible(d: TestDaemon, digest: string): Promise<void> {
  const c = d.client();
  try {
    await assert.rejects(
      () => c.content.info({ digest }),
      (err) => err instanceof TainerdError && err.kind === "NotFound",
    );
  } finally {
    c.close();
  }
  assert.deepEqual(await checkBlobs(d), [], "no blob may appear before the commit");
}

Deno.test("an ingest survives SIGKILLs of the daemon and resumes from Status's offset", async () => {
  const blob = new BigBlob();
  const dir = await Deno.makeTempDir({ prefix: "tainerd-crash-" });
  const d = new TestDaemon(dir);
  let acked = 0;
  try {
    await d.start({ logLevel: "info" });
    for (const killAt of KILL_POINTS) {
      const c = d.client();
      let offset = 0;
      if (acked > 0) {
        const { status } = await c.content.status({ ref: REF });
        offset = Number(status?.offset);
        // Everything acknowledged is there; at most the write in flight came on top.
        assert.ok(offset >= acked, `offset ${offset} < acknowledged ${acked}`);
        assert.ok(offset <= acked + MIB, `offset ${offset} > acknowledged ${acked} + 1 MiB`);
        assert.equal(status?.total, BigInt(TOTAL));
        assert.equal(status?.expected, blob.digest);
      }
      await assertNotVisible(d, blob.digest);
      const w = await RemoteWriter.open(c, REF, { total: TOTAL, expected: blob.digest });
      assert.equal(w.offset, offset, "the writer resumes where Status said");
      while (w.offset < killAt) acked = await w.write(blob.from(w.offset));
      // Kill with a write in flight.
      const inFlight = w.write(blob.from(w.offset)).catch(() => {});
      await d.kill();
      await inFlight;
      c.close();
      await d.start({ logLevel: "info" });
    }
    // Resume one last time, finish and commit.
    const c = d.client();
    try {
      const { status } = await c.content.status({ ref: REF });
      assert.ok(Number(status?.offset) >= acked);
      await assertNotVisible(d, blob.digest);
      const w = await RemoteWriter.open(c, REF, { total: TOTAL, expected: blob.digest });
      while (w.offset < TOTAL) await w.write(blob.from(w.offset));
      assert.equal(await w.commit(TOTAL, blob.digest), blob.digest);
      const { info } = await c.content.info({ digest: blob.digest });
      assert.equal(info?.size, BigInt(TOTAL));
      const h = createHash("sha256");
      for await (const chunk of readContent(c, blob.digest)) h.update(chunk);
      assert.equal(`sha256:${h.digest("hex")}`, blob.digest);
      assert.deepEqual((await c.content.listStatuses({})).statuses, []);
    } finally {
      c.close();
    }
    assert.deepEqual(await checkBlobs(d), [blob.digest]);
  } catch (err) {
    console.error(`daemon log:\n${(await d.log()).slice(-5000)}`);
    throw err;
  } finally {
    await d.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
