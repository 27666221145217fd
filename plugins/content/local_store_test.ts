import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join, relative } from "node:path";
import { type ErrorKind, TainerdError } from "../errdefs.ts";
import { Digester, digestOf } from "./digest.ts";
import { type Info, LocalStore, READ_CHUNK_SIZE } from "./local_store.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Runs `fn` with a store in a fresh temporary directory (inside `parent`), then removes it. */
async function withStore(
  fn: (store: LocalStore, root: string, parent: string) => Promise<void>,
): Promise<void> {
  const parent = await Deno.makeTempDir({ prefix: "tainerd-content-" });
  try {
    const root = join(parent, "store");
    await fn(await LocalStore.open(root), root, parent);
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
}

function kind(expected: ErrorKind): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, expected, `wrong kind for: ${err.message}`);
    return true;
  };
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** Every path under `dir`, relative to it. */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function visit(d: string) {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      out.push(relative(dir, p));
      if (e.isDirectory) await visit(p);
    }
  }
  await visit(dir);
  return out.sort();
}

async function writeBlob(store: LocalStore, ref: string, data: Uint8Array): Promise<string> {
  const w = await store.writer(ref, { total: data.byteLength, expected: digestOf(data) });
  await w.write(data);
  return await w.commit(data.byteLength, digestOf(data));
}

Deno.test("LocalStore writes, commits and reads back a blob, whole and in ranges", async () => {
  await withStore(async (store, root) => {
    const data = randomBytes(3 * READ_CHUNK_SIZE + 12345);
    const digest = digestOf(data);
    const w = await store.writer("ref1");
    for (let i = 0; i < data.byteLength; i += 100_000) {
      assert.equal(
        await w.write(data.subarray(i, i + 100_000)),
        Math.min(100_000, data.length - i),
      );
    }
    assert.equal(w.digest(), digest);
    assert.equal(await w.commit(data.byteLength, digest), digest);
    assert.equal(w.digest(), digest);

    const blobPath = join(root, "blobs", "sha256", digest.slice(7));
    assert.equal(store.blobPath(digest), blobPath);
    assert.equal((await Deno.stat(blobPath)).mode! & 0o777, 0o444);
    assert.deepEqual(await tree(join(root, "ingest")), []);

    const info = await store.info(digest);
    assert.equal(info.digest, digest);
    assert.equal(info.size, data.byteLength);
    assert.ok(info.createdAt instanceof Date);
    assert.ok(info.updatedAt instanceof Date);

    assert.deepEqual(await collect(await store.read(digest)), new Uint8Array(data));
    assert.deepEqual(await store.readBlob(digest), new Uint8Array(data));
    const range = (offset: number, size?: number) =>
      store.read(digest, { offset, size }).then(collect);
    assert.deepEqual(await range(10, 20), new Uint8Array(data.subarray(10, 30)));
    assert.deepEqual(
      await range(READ_CHUNK_SIZE - 5, READ_CHUNK_SIZE + 10),
      new Uint8Array(data.subarray(READ_CHUNK_SIZE - 5, 2 * READ_CHUNK_SIZE + 5)),
    );
    assert.deepEqual(await range(data.length - 7), new Uint8Array(data.subarray(data.length - 7)));
    assert.deepEqual(await range(data.length - 7, 1000), new Uint8Array(data.subarray(-7)));
    assert.deepEqual(await range(-3, 4), new Uint8Array(data.subarray(0, 4)));
    assert.equal((await range(data.length)).byteLength, 0);

    const chunks: number[] = [];
    for await (const c of await store.read(digest)) chunks.push(c.byteLength);
    assert.deepEqual(chunks, [READ_CHUNK_SIZE, READ_CHUNK_SIZE, READ_CHUNK_SIZE, 12345]);

    const ra = await store.readerAt(digest);
    try {
      assert.equal(ra.size, data.byteLength);
      const a = new Uint8Array(100);
      const b = new Uint8Array(50);
      const [na, nb] = await Promise.all([ra.readAt(a, 5000), ra.readAt(b, data.length - 20)]);
      assert.equal(na, 100);
      assert.equal(nb, 20);
      assert.deepEqual(a, new Uint8Array(data.subarray(5000, 5100)));
      assert.deepEqual(b.subarray(0, 20), new Uint8Array(data.subarray(-20)));
      assert.equal(await ra.readAt(a, data.length + 10), 0);
    } finally {
      await ra.close();
    }
  });
});

Deno.test("LocalStore.read() rejects an offset past the end with OutOfRange", async () => {
  await withStore(async (store) => {
    const digest = await writeBlob(store, "r", enc.encode("hello"));
    await assert.rejects(store.read(digest, { offset: 6 }), kind("OutOfRange"));
    await assert.rejects(store.read(digest, { offset: 1.5 }), kind("InvalidArgument"));
    const missing = digestOf("missing");
    await assert.rejects(store.read(missing), kind("NotFound"));
    await assert.rejects(store.readerAt(missing), kind("NotFound"));
    await assert.rejects(store.readBlob(missing), kind("NotFound"));
    await assert.rejects(store.info(missing), kind("NotFound"));
  });
});

Deno.test("LocalStore.readSmallSync() reads ranges at once, declines large ones", async () => {
  await withStore(async (store) => {
    const digest = await writeBlob(store, "s", enc.encode("hello world"));
    assert.equal(dec.decode(store.readSmallSync(digest, {}, 64)!), "hello world");
    assert.equal(dec.decode(store.readSmallSync(digest, { offset: 6, size: 3 }, 64)!), "wor");
    assert.equal(dec.decode(store.readSmallSync(digest, { offset: 6, size: 99 }, 64)!), "world");
    assert.equal(store.readSmallSync(digest, { offset: 11 }, 64)!.length, 0);
    assert.equal(store.readSmallSync(digest, {}, 10), null, "11 bytes over a 10-byte limit");
    assert.throws(() => store.readSmallSync(digest, { offset: 12 }, 64), kind("OutOfRange"));
    assert.throws(() => store.readSmallSync(digestOf("missing"), {}, 64), kind("NotFound"));
  });
});

Deno.test("ContentWriter.commit() rejects a size mismatch and keeps the ingest", async () => {
  await withStore(async (store, root) => {
    const data = enc.encode("some bytes");
    const w = await store.writer("ref-size");
    await w.write(data);
    await assert.rejects(
      w.commit(data.length + 1, digestOf(data)),
      (err: unknown) =>
        kind("FailedPrecondition")(err) &&
        /Cannot commit ingest "ref-size": expected size 11 but got 10/.test(String(err)),
    );
    assert.equal(await exists(store.blobPath(digestOf(data))), false);
    assert.equal((await store.status("ref-size")).offset, data.length);
    // The lock is released and the ingest resumes where it was.
    const again = await store.writer("ref-size");
    assert.equal(again.status().offset, data.length);
    assert.equal(await again.commit(data.length, digestOf(data)), digestOf(data));
    assert.deepEqual(await tree(join(root, "ingest")), []);
  });
});

Deno.test("ContentWriter.commit() checks the total given at open when no size is given", async () => {
  await withStore(async (store) => {
    const w = await store.writer("ref-total", { total: 4 });
    await w.write(enc.encode("abc"));
    await assert.rejects(w.commit(), kind("FailedPrecondition"));
    await store.abort("ref-total");
  });
});

Deno.test("ContentWriter.commit() rejects a digest mismatch and leaves no blob", async () => {
  await withStore(async (store, root) => {
    const data = enc.encode("the real bytes");
    const wrong = digestOf("other bytes");
    const w = await store.writer("ref-digest");
    await w.write(data);
    await assert.rejects(
      w.commit(0, wrong),
      (err: unknown) =>
        kind("FailedPrecondition")(err) &&
        String(err).includes(
          `Cannot commit ingest "ref-digest": expected digest ${wrong} but got ${digestOf(data)}`,
        ),
    );
    assert.deepEqual(await tree(join(root, "blobs")), []);
    assert.equal((await store.status("ref-digest")).offset, data.length);
    // The writer is finished after a commit, whatever its outcome.
    await assert.rejects(w.write(data), kind("FailedPrecondition"));
    await store.abort("ref-digest");
    assert.deepEqual(await tree(join(root, "ingest")), []);
  });
});

Deno.test("ContentWriter.commit() checks the digest expected at open", async () => {
  await withStore(async (store, root) => {
    const w = await store.writer("ref-exp", { expected: digestOf("xyz") });
    await w.write(enc.encode("xy"));
    await assert.rejects(w.commit(), kind("FailedPrecondition"));
    assert.deepEqual(await tree(join(root, "blobs")), []);
  });
});

Deno.test("ContentWriter.commit() of existing content is AlreadyExists and removes the ingest", async () => {
  await withStore(async (store, root) => {
    const data = enc.encode("duplicate");
    const digest = await writeBlob(store, "first", data);
    // Opening with the expected digest of a committed blob fails up front, without locking.
    await assert.rejects(store.writer("second", { expected: digest }), kind("AlreadyExists"));
    assert.equal(store.isLocked("second"), false);
    // Without an expected digest the duplicate is only found at commit.
    const w = await store.writer("second");
    await w.write(data);
    await assert.rejects(w.commit(data.length), kind("AlreadyExists"));
    assert.deepEqual(await tree(join(root, "ingest")), []);
    assert.equal(store.isLocked("second"), false);
    assert.deepEqual(await store.readBlob(digest), data);
  });
});

Deno.test("LocalStore.writer() allows one writer per ref (Unavailable)", async () => {
  await withStore(async (store) => {
    const w = await store.writer("locked");
    await assert.rejects(
      store.writer("locked"),
      (err: unknown) => kind("Unavailable")(err) && /ref "locked" is locked/.test(String(err)),
    );
    // Another ref is independent.
    const other = await store.writer("other");
    await other.close();
    await w.close();
    await w.close(); // idempotent
    const again = await store.writer("locked");
    await again.write(enc.encode("x"));
    await again.commit();
    const third = await store.writer("locked");
    assert.equal(third.status().offset, 0);
    await third.close();
    // Concurrent opens: exactly one wins.
    const results = await Promise.allSettled([store.writer("race"), store.writer("race")]);
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    for (const r of results) if (r.status === "fulfilled") await r.value.close();
  });
});

Deno.test("LocalStore.writer() resumes an ingest after close", async () => {
  await withStore(async (store) => {
    const data = randomBytes(2 * READ_CHUNK_SIZE + 77);
    const digest = digestOf(data);
    const w1 = await store.writer("resume", { total: data.length });
    await w1.write(data.subarray(0, READ_CHUNK_SIZE + 5));
    const started = w1.status().startedAt;
    await w1.close();

    const w2 = await store.writer("resume");
    const st = w2.status();
    assert.equal(st.offset, READ_CHUNK_SIZE + 5);
    assert.equal(st.total, data.length);
    assert.equal(st.startedAt.getTime(), started.getTime());
    assert.equal(w2.digest(), digestOf(data.subarray(0, READ_CHUNK_SIZE + 5)));
    await w2.write(data.subarray(READ_CHUNK_SIZE + 5));
    assert.equal(await w2.commit(0, digest), digest);
    assert.deepEqual(await store.readBlob(digest), new Uint8Array(data));
  });
});

Deno.test("LocalStore.writer() resumes after a crash (new store, old writer never closed)", async () => {
  await withStore(async (store, root) => {
    const data = randomBytes(500_000);
    const digest = digestOf(data);
    const crashed = await store.writer("crash", { expected: digest });
    await crashed.write(data.subarray(0, 300_000));

    const restarted = await LocalStore.open(root);
    const w = await restarted.writer("crash");
    assert.equal(w.status().offset, 300_000);
    assert.equal(w.status().expected, digest);
    await w.write(data.subarray(300_000));
    assert.equal(await w.commit(), digest);
    assert.deepEqual(await restarted.readBlob(digest), new Uint8Array(data));
    // The stale writer's commit now fails cleanly: its ingest is gone.
    await assert.rejects(crashed.commit(), kind("NotFound"));
    assert.equal(store.isLocked("crash"), false);
  });
});

Deno.test("LocalStore.writer() starts over when the recorded total differs", async () => {
  await withStore(async (store) => {
    const w = await store.writer("conflict", { total: 10 });
    await w.write(enc.encode("12345"));
    await w.close();
    const w2 = await store.writer("conflict", { total: 20 });
    assert.equal(w2.status().offset, 0);
    assert.equal(w2.status().total, 20);
    await w2.close();
    assert.equal((await store.status("conflict")).offset, 0);
  });
});

Deno.test("LocalStore.status() and listStatuses() report ingest offsets", async () => {
  await withStore(async (store) => {
    const expected = digestOf("abcdef");
    const a = await store.writer("a", { total: 6, expected });
    const b = await store.writer("b");
    await a.write(enc.encode("abc"));
    await b.write(enc.encode("12345"));

    const sa = a.status();
    assert.equal(sa.ref, "a");
    assert.equal(sa.offset, 3);
    assert.equal(sa.total, 6);
    assert.equal(sa.expected, expected);
    assert.ok(sa.updatedAt >= sa.startedAt);

    const disk = await store.status("a");
    assert.equal(disk.offset, 3);
    assert.equal(disk.total, 6);
    assert.equal(disk.expected, expected);
    assert.equal((await store.status("b")).offset, 5);
    assert.equal((await store.status("b")).total, 0);
    assert.equal((await store.status("b")).expected, "");

    const all = await store.listStatuses();
    assert.deepEqual(all.map((s) => [s.ref, s.offset]).sort(), [["a", 3], ["b", 5]]);
    const filtered = await store.listStatuses((s) => s.ref === "b");
    assert.deepEqual(filtered.map((s) => s.ref), ["b"]);

    await assert.rejects(store.status("nope"), kind("NotFound"));
    await a.close();
    await b.close();
  });
});

Deno.test("LocalStore.abort() removes an ingest; NotFound when absent", async () => {
  await withStore(async (store, root) => {
    const w = await store.writer("gone");
    await w.write(enc.encode("data"));
    await w.close();
    await store.abort("gone");
    await assert.rejects(store.status("gone"), kind("NotFound"));
    await assert.rejects(store.abort("gone"), kind("NotFound"));
    assert.deepEqual(await tree(join(root, "ingest")), []);
    const w2 = await store.writer("gone");
    assert.equal(w2.status().offset, 0);
    await w2.close();
  });
});

Deno.test("LocalStore never touches paths outside its root for hostile refs", async () => {
  await withStore(async (store, root, parent) => {
    const refs = [
      "../../etc/passwd",
      "/abs",
      "/etc/passwd",
      "..",
      ".",
      "a/b/../../../c",
      "x\u0000y",
      "ingest/../blobs/sha256/" + "a".repeat(64),
      "é".repeat(300),
    ];
    for (const ref of refs) {
      const w = await store.writer(ref);
      await w.write(enc.encode(ref));
      await w.close();
      assert.equal((await store.status(ref)).ref, ref);
    }
    const listed = (await store.listStatuses()).map((s) => s.ref).sort();
    assert.deepEqual(listed, [...refs].sort());
    for (const ref of refs.slice(0, 3)) {
      const w = await store.writer(ref);
      await w.commit();
    }
    for (const ref of refs.slice(3)) await store.abort(ref);

    for (const path of await tree(parent)) {
      assert.ok(path === "store" || path.startsWith("store/"), `escaped root: ${path}`);
    }
    for (const entry of await tree(join(root, "ingest"))) {
      assert.match(entry, /^[0-9a-f]{64}$/);
    }
    for (const entry of await tree(join(root, "blobs"))) {
      assert.match(entry, /^sha256(\/[0-9a-f]{64})?$/);
    }
    await assert.rejects(store.writer(""), kind("InvalidArgument"));
  });
});

Deno.test("LocalStore rejects hostile digests with InvalidArgument", async () => {
  await withStore(async (store, root, parent) => {
    const hostile = [
      "sha256:../../x",
      "sha256:../../" + "a".repeat(58),
      `sha256:${"a".repeat(63)}`,
      `sha256:${"A".repeat(64)}`,
      `md5:${"a".repeat(32)}`,
      `../sha256:${"a".repeat(64)}`,
      "",
    ];
    for (const d of hostile) {
      await assert.rejects(store.info(d), kind("InvalidArgument"));
      await assert.rejects(store.read(d), kind("InvalidArgument"));
      await assert.rejects(store.readerAt(d), kind("InvalidArgument"));
      await assert.rejects(store.readBlob(d), kind("InvalidArgument"));
      await assert.rejects(store.delete(d), kind("InvalidArgument"));
      assert.throws(() => store.blobPath(d), kind("InvalidArgument"));
      await assert.rejects(store.writer("w", { expected: d || "x" }), kind("InvalidArgument"));
    }
    assert.equal(store.isLocked("w"), false);
    const w = await store.writer("w");
    await w.write(enc.encode("data"));
    await assert.rejects(w.commit(0, "sha256:../../x"), kind("InvalidArgument"));
    // A rejected argument leaves the writer usable.
    assert.equal(await w.commit(0, digestOf("data")), digestOf("data"));
    await assert.rejects(store.writer("t", { total: -1 }), kind("InvalidArgument"));
    for (const path of await tree(parent)) assert.ok(path.startsWith("store"), path);
    assert.deepEqual(await tree(join(root, "blobs")), [
      "sha256",
      `sha256/${digestOf("data").slice(7)}`,
    ]);
  });
});

Deno.test("LocalStore stores sha512 content", async () => {
  await withStore(async (store, root) => {
    const data = randomBytes(70_000);
    const d512 = digestOf(data, "sha512");
    const w = await store.writer("s512", { expected: d512 });
    await w.write(data);
    assert.equal(w.digest(), d512);
    assert.equal(await w.commit(data.length), d512);
    assert.ok(await exists(join(root, "blobs", "sha512", d512.slice(7))));
    assert.deepEqual(await store.readBlob(d512), new Uint8Array(data));
    assert.equal((await store.info(d512)).size, data.length);

    // A writer opened without an expected digest can still commit under sha512 (re-hashed).
    const other = randomBytes(1000);
    const w2 = await store.writer("late-512");
    await w2.write(other);
    assert.equal(await w2.commit(0, digestOf(other, "sha512")), digestOf(other, "sha512"));
    const all: string[] = [];
    await store.walk((i) => {
      all.push(i.digest);
    });
    assert.deepEqual(all.sort(), [d512, digestOf(other, "sha512")].sort());
  });
});

Deno.test("LocalStore.delete() and walk() manage committed blobs", async () => {
  await withStore(async (store, root) => {
    const digests = [];
    for (let i = 0; i < 5; i++) {
      digests.push(await writeBlob(store, `blob${i}`, enc.encode(`b${i}`)));
    }
    // Junk under blobs/ is ignored by walk.
    await Deno.mkdir(join(root, "blobs", "md5"));
    await Deno.writeTextFile(join(root, "blobs", "md5", "a".repeat(32)), "x");
    await Deno.writeTextFile(join(root, "blobs", "sha256", "not-a-digest"), "x");
    await Deno.mkdir(join(root, "blobs", "sha256", "b".repeat(64)));

    const seen: Info[] = [];
    await store.walk(async (info) => {
      await Promise.resolve();
      seen.push(info);
    });
    assert.deepEqual(seen.map((i) => i.digest).sort(), [...digests].sort());
    assert.ok(seen.every((i) => i.size === 2));

    await store.delete(digests[0]);
    await assert.rejects(store.info(digests[0]), kind("NotFound"));
    await assert.rejects(store.delete(digests[0]), kind("NotFound"));
    const after: string[] = [];
    await store.walk((i) => {
      after.push(i.digest);
    });
    assert.deepEqual(after.sort(), digests.slice(1).sort());

    await assert.rejects(
      store.walk(() => {
        throw new Error("stop");
      }),
      /stop/,
    );
  });
});

Deno.test("ContentWriter.truncate() rewinds the data and the digest", async () => {
  await withStore(async (store) => {
    const w = await store.writer("trunc");
    await w.write(enc.encode("hello world"));
    await w.truncate(5);
    assert.equal(w.status().offset, 5);
    assert.equal(w.digest(), digestOf("hello"));
    await w.write(enc.encode(" there"));
    await assert.rejects(w.truncate(100), kind("OutOfRange"));
    await w.truncate(0);
    assert.equal(w.digest(), digestOf(""));
    await w.write(enc.encode("fresh"));
    assert.equal(await w.commit(5, digestOf("fresh")), digestOf("fresh"));
    assert.deepEqual(await store.readBlob(digestOf("fresh")), enc.encode("fresh"));
  });
});

Deno.test("ContentWriter runs un-awaited operations in call order", async () => {
  await withStore(async (store) => {
    const w = await store.writer("order");
    const parts = ["a", "b", "c", "d", "e"].map((s) => enc.encode(s.repeat(1000)));
    const writes = parts.map((p) => w.write(p));
    const committed = w.commit(5000);
    await Promise.all(writes);
    const digest = await committed;
    const joined = new Uint8Array(5000);
    parts.forEach((p, i) => joined.set(p, i * 1000));
    assert.equal(digest, digestOf(joined));
  });
});

Deno.test("ContentWriter refuses work after close or commit", async () => {
  await withStore(async (store) => {
    const w = await store.writer("closed");
    await w.close();
    await assert.rejects(w.write(enc.encode("x")), kind("FailedPrecondition"));
    await assert.rejects(w.commit(), kind("FailedPrecondition"));
    await assert.rejects(w.truncate(0), kind("FailedPrecondition"));
  });
});

Deno.test("LocalStore.expireIngests() removes stale, unlocked ingests", async () => {
  await withStore(async (store, root) => {
    const old = await store.writer("old");
    await old.write(enc.encode("x"));
    await old.close();
    const busy = await store.writer("busy");
    await busy.write(enc.encode("y"));
    const broken = join(root, "ingest", "c".repeat(64));
    await Deno.mkdir(broken);

    assert.deepEqual(await store.expireIngests(new Date(Date.now() - 3_600_000)), []);
    assert.equal((await store.listStatuses()).length, 2);
    assert.ok(await exists(broken));

    const removed = await store.expireIngests(new Date(Date.now() + 60_000));
    assert.deepEqual(removed, ["old"]);
    assert.equal(await exists(broken), false);
    assert.deepEqual((await store.listStatuses()).map((s) => s.ref), ["busy"]);
    await busy.commit();
  });
});

Deno.test("LocalStore streams a 64 MiB blob in and out", async () => {
  await withStore(async (store) => {
    const chunk = randomBytes(1 << 20);
    const chunks = 64;
    const expected = new Digester();
    for (let i = 0; i < chunks; i++) {
      chunk[0] = i;
      expected.update(chunk);
    }
    const digest = expected.digest();
    const w = await store.writer("big", { total: chunks << 20, expected: digest });
    for (let i = 0; i < chunks; i++) {
      chunk[0] = i;
      await w.write(chunk);
    }
    assert.equal(w.status().offset, chunks << 20);
    assert.equal(await w.commit(chunks << 20, digest), digest);

    const back = new Digester();
    let n = 0;
    for await (const c of await store.read(digest)) {
      assert.ok(c.byteLength <= READ_CHUNK_SIZE);
      back.update(c);
      n += c.byteLength;
    }
    assert.equal(n, chunks << 20);
    assert.equal(back.digest(), digest);
  });
});

Deno.test("LocalStore.read() releases the file when the stream is cancelled", async () => {
  await withStore(async (store) => {
    const digest = await writeBlob(store, "cancel", randomBytes(3 * READ_CHUNK_SIZE));
    const reader = (await store.read(digest)).getReader();
    const first = await reader.read();
    assert.equal(first.value?.byteLength, READ_CHUNK_SIZE);
    await reader.cancel();
    // The test sanitizer fails the test if the blob's file were left open.
  });
});
