/**
 * Content store throughput: ingest and read a blob (1 GiB by default) through the API of a
 * real daemon, next to `sha256sum` and `cat` of the same file as the floor.
 *
 * ```sh
 * deno run -A bench/content_bench.ts [size-in-MiB]
 * ```
 *
 * Not a test: run it by hand.
 *
 * @module
 */

import { createHash, randomBytes } from "node:crypto";
import { readContent, RemoteWriter } from "../client/content.ts";
import { TestDaemon } from "../tests/harness.ts";

const MIB = 1 << 20;
const sizeMiB = Number(Deno.args[0] ?? 1024);
const size = sizeMiB * MIB;

async function time<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

async function sh(cmd: string): Promise<void> {
  const out = await new Deno.Command("sh", { args: ["-c", cmd], stdout: "null" }).output();
  if (!out.success) throw new Error(`${cmd} failed`);
}

const dir = await Deno.makeTempDir({ prefix: "tainerd-bench-" });
const file = `${dir}/blob`;
const d = new TestDaemon(`${dir}/daemon`);
await Deno.mkdir(d.dir);
try {
  // The source file: random-ish bytes (1 MiB of random data, varied per chunk).
  const base = new Uint8Array(randomBytes(MIB));
  const hash = createHash("sha256");
  {
    using f = await Deno.open(file, { write: true, create: true, truncate: true });
    for (let i = 0; i < sizeMiB; i++) {
      new DataView(base.buffer).setUint32(0, i);
      hash.update(base);
      let done = 0;
      while (done < MIB) done += await f.write(base.subarray(done));
    }
  }
  const digest = `sha256:${hash.digest("hex")}`;
  await sh(`cat ${file} > /dev/null`); // Warm the page cache for a fair floor.

  await d.start({ logLevel: "info" });
  const client = d.client();

  // The real ctr first (then the blob is removed again, so the API ingest starts from nothing).
  const ctr = `ctr -a ${d.address} -n default`;
  const ctrIngest = await time(() =>
    sh(
      `${ctr} content ingest --expected-digest ${digest} --expected-size ${size} ctr-bench ` +
        `< ${file}`,
    )
  );
  await sh(`${ctr} content rm ${digest}`);
  const blobPath = `${d.root}/io.containerd.content.v1.content/blobs/sha256/${digest.slice(7)}`;
  for (let i = 0; i < 200; i++) {
    try {
      await Deno.stat(blobPath);
      await new Promise((r) => setTimeout(r, 50));
    } catch {
      break;
    }
  }

  const ingest = await time(async () => {
    const w = await RemoteWriter.open(client, "bench", { total: size, expected: digest });
    using f = await Deno.open(file, { read: true });
    const buf = new Uint8Array(MIB);
    for (;;) {
      let filled = 0;
      while (filled < MIB) {
        const n = await f.read(buf.subarray(filled));
        if (n === null) break;
        filled += n;
      }
      if (filled === 0) break;
      await w.write(buf.subarray(0, filled));
    }
    return await w.commit(size, digest);
  });
  if (ingest.value !== digest) throw new Error(`digest mismatch: ${ingest.value}`);

  const read = await time(async () => {
    const h = createHash("sha256");
    let n = 0;
    for await (const chunk of readContent(client, digest)) {
      h.update(chunk);
      n += chunk.byteLength;
    }
    if (n !== size) throw new Error(`read ${n} bytes, expected ${size}`);
    return `sha256:${h.digest("hex")}`;
  });
  if (read.value !== digest) throw new Error(`read digest mismatch: ${read.value}`);
  client.close();

  // The real ctr against the same daemon (a Go gRPC client; one Read call per MiB).
  const ctrGet = await time(() => sh(`${ctr} content get ${digest} > /dev/null`));

  const sha = await time(() => sh(`sha256sum ${file}`));
  const cat = await time(() => sh(`cat ${file} > /dev/null`));
  const catTo = await time(() => sh(`cat ${file} > ${dir}/copy && sync ${dir}/copy`));

  const rows: [string, number][] = [
    ["API ingest (write + hash + fsync)", ingest.ms],
    ["API read (1 MiB chunks, hashed)", read.ms],
    ["ctr content ingest < file", ctrIngest.ms],
    ["ctr content get > /dev/null", ctrGet.ms],
    ["sha256sum (floor for ingest hashing)", sha.ms],
    ["cat > file && sync (floor for ingest I/O)", catTo.ms],
    ["cat > /dev/null (floor for read)", cat.ms],
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  console.log(`${sizeMiB} MiB blob\n`);
  console.log(`${"what".padEnd(width)}  ${"seconds".padStart(8)}  ${"MiB/s".padStart(8)}`);
  for (const [name, ms] of rows) {
    console.log(
      `${name.padEnd(width)}  ${(ms / 1000).toFixed(2).padStart(8)}  ${
        (sizeMiB / (ms / 1000)).toFixed(0).padStart(8)
      }`,
    );
  }
} finally {
  await d.stop();
  await Deno.remove(dir, { recursive: true });
}
