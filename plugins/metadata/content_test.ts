import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join, relative } from "node:path";
import { type ErrorKind, TainerdError } from "../errdefs.ts";
import { digestOf } from "../content/digest.ts";
import { LocalStore } from "../content/local_store.ts";
import { NamespaceStore } from "../namespaces/store.ts";
import { MetadataContentStore } from "./content.ts";
import { MetadataDB } from "./db.ts";
import { GarbageCollector } from "./gc.ts";
import { LeaseManager, type Scope } from "./leases.ts";

interface Fixture {
  db: MetadataDB;
  local: LocalStore;
  gc: GarbageCollector;
  leases: LeaseManager;
  cs: MetadataContentStore;
  dir: string;
  deleted: { namespace: string; digest: string }[];
}

async function withStore(fn: (f: Fixture) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-mdcontent-" });
  const db = new MetadataDB(join(dir, "meta.db"));
  try {
    const local = await LocalStore.open(join(dir, "content"));
    const gc = new GarbageCollector(db);
    const namespaces = new NamespaceStore(db);
    const ensure = (ns: string) => namespaces.ensure(ns);
    const leases = new LeaseManager(db, gc, ensure);
    const deleted: { namespace: string; digest: string }[] = [];
    const cs = new MetadataContentStore(db, local, {
      gc,
      leases,
      ensureNamespace: ensure,
      publishDelete: (namespace, digest) => deleted.push({ namespace, digest }),
    });
    await fn({ db, local, gc, leases, cs, dir, deleted });
  } finally {
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
}

function kind(expected: ErrorKind, message?: RegExp): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, expected, `wrong kind for: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  };
}

const ns = (namespace: string, lease?: string): Scope => ({ namespace, lease });

async function put(
  cs: MetadataContentStore,
  scope: Scope,
  ref: string,
  data: Uint8Array,
  labels?: Record<string, string>,
): Promise<string> {
  const w = await cs.writer(scope, ref, { total: data.byteLength, expected: digestOf(data) });
  try {
    await w.write(data);
    return await w.commit(data.byteLength, digestOf(data), { labels });
  } finally {
    await w.close();
  }
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

Deno.test("MetadataContentStore: a blob is visible only in the namespace it was committed in", () =>
  withStore(async ({ cs, local }) => {
    const data = randomBytes(4096);
    const digest = await put(cs, ns("one"), "ref", data, { a: "1" });
    assert.equal(digest, digestOf(data));
    const info = cs.info("one", digest);
    assert.equal(info.size, 4096);
    assert.deepEqual(info.labels, { a: "1" });
    assert.throws(
      () => cs.info("two", digest),
      kind("NotFound", /^Cannot get content "sha256:[0-9a-f]{64}" in namespace "two": not found$/),
    );
    assert.deepEqual(cs.list("two"), []);
    await assert.rejects(() => cs.read("two", digest), kind("NotFound"));
    assert.deepEqual(await readAll(await cs.read("one", digest)), new Uint8Array(data));
    assert.equal((await local.info(digest)).size, 4096);
  }));

Deno.test("MetadataContentStore: committing a blob the shared store has is instant in another namespace", () =>
  withStore(async ({ cs }) => {
    const data = randomBytes(10_000);
    const digest = await put(cs, ns("one"), "ref", data);
    const w = await cs.writer(ns("two"), "other", { expected: digest });
    // Nothing to write: the status shows the whole blob.
    const st = w.status();
    assert.equal(st.offset, 10_000);
    assert.equal(st.total, 10_000);
    assert.equal(w.digest(), digest);
    assert.equal(await w.commit(0, digest, { labels: { x: "y" } }), digest);
    assert.deepEqual(cs.info("two", digest).labels, { x: "y" });
    assert.deepEqual(cs.info("one", digest).labels, {});
    // Now present in "two": a writer with that digest is AlreadyExists.
    await assert.rejects(
      () => cs.writer(ns("two"), "again", { expected: digest }),
      kind("AlreadyExists"),
    );
  }));

Deno.test("MetadataContentStore: a shared ingest that is written to copies the blob first", () =>
  withStore(async ({ cs }) => {
    const data = randomBytes(5000);
    const digest = await put(cs, ns("one"), "ref", data);
    const w = await cs.writer(ns("two"), "ref", { expected: digest });
    // Start over at 0 and write the same bytes, as a client that ignores the offset would.
    await w.truncate(0);
    assert.equal(w.status().offset, 0);
    await w.write(data);
    assert.equal(await w.commit(5000, digest), digest);
    assert.equal(cs.info("two", digest).size, 5000);
  }));

Deno.test("MetadataContentStore: two namespaces may use the same ingest ref", () =>
  withStore(async ({ cs }) => {
    const a = await cs.writer(ns("one"), "same-ref");
    const b = await cs.writer(ns("two"), "same-ref");
    await a.write(new TextEncoder().encode("aaaa"));
    await b.write(new TextEncoder().encode("bb"));
    assert.equal((await cs.status("one", "same-ref")).offset, 4);
    assert.equal((await cs.status("two", "same-ref")).offset, 2);
    assert.equal((await cs.status("two", "same-ref")).ref, "same-ref");
    await a.close();
    await b.close();
    assert.deepEqual((await cs.listStatuses("one")).map((s) => s.ref), ["same-ref"]);
    await assert.rejects(() => cs.status("three", "same-ref"), kind("NotFound"));
    await cs.abort(ns("one"), "same-ref");
    await assert.rejects(() => cs.status("one", "same-ref"), kind("NotFound"));
    assert.equal((await cs.status("two", "same-ref")).offset, 2);
  }));

Deno.test("MetadataContentStore: a second writer on a ref is Unavailable; a closed one resumes", () =>
  withStore(async ({ cs }) => {
    const w = await cs.writer(ns("default"), "r");
    await w.write(new Uint8Array(100));
    await assert.rejects(() => cs.writer(ns("default"), "r"), kind("Unavailable"));
    await w.close();
    const again = await cs.writer(ns("default"), "r");
    assert.equal(again.status().offset, 100);
    await again.close();
  }));

Deno.test("MetadataContentStore.update() follows containerd's field masks", () =>
  withStore(async ({ cs }) => {
    const digest = await put(cs, ns("default"), "r", randomBytes(10), { a: "1", b: "2" });
    // labels.<key>: set one, an empty or missing value removes it.
    let info = cs.update("default", { digest, labels: { c: "3", a: "" } }, [
      "labels.c",
      "labels.a",
      "labels.zz",
    ]);
    assert.deepEqual(info.labels, { b: "2", c: "3" });
    // labels: replace all.
    info = cs.update("default", { digest, labels: { only: "x" } }, ["labels"]);
    assert.deepEqual(info.labels, { only: "x" });
    // No paths: replace all as well.
    info = cs.update("default", { digest, labels: { p: "q" } });
    assert.deepEqual(cs.info("default", digest).labels, { p: "q" });
    assert.ok(info.updatedAt.getTime() >= info.createdAt.getTime());
    assert.throws(
      () => cs.update("default", { digest, labels: {} }, ["size"]),
      kind("InvalidArgument", /cannot update field "size"/),
    );
    assert.throws(
      () => cs.update("other", { digest, labels: {} }, ["labels"]),
      kind("NotFound"),
    );
    assert.throws(
      () => cs.update("default", { digest: "sha256:nope", labels: {} }),
      kind("InvalidArgument"),
    );
  }));

Deno.test("MetadataContentStore.list() filters on digest and labels", () =>
  withStore(async ({ cs }) => {
    const a = await put(cs, ns("default"), "a", randomBytes(10), { kind: "layer", n: "1" });
    const b = await put(cs, ns("default"), "b", randomBytes(20), { kind: "config" });
    const c = await put(cs, ns("default"), "c", randomBytes(30));
    const all = cs.list("default").map((i) => i.digest);
    assert.deepEqual(all, [a, b, c].sort());
    assert.deepEqual(cs.list("default", ["labels.kind==layer"]).map((i) => i.digest), [a]);
    assert.deepEqual(
      cs.list("default", ["labels.kind==layer", "labels.kind==config"]).map((i) => i.digest)
        .sort(),
      [a, b].sort(),
    );
    assert.deepEqual(cs.list("default", [`digest==${c}`]).map((i) => i.digest), [c]);
    assert.deepEqual(cs.list("default", ["labels.kind"]).length, 2);
    assert.deepEqual(cs.list("default", ["labels.kind~=^con"]).map((i) => i.digest), [b]);
    assert.throws(() => cs.list("default", ["=="]), kind("InvalidArgument"));
  }));

Deno.test("MetadataContentStore.commit() rejects a wrong size or digest; nothing becomes visible", () =>
  withStore(async ({ cs, local }) => {
    const data = randomBytes(1000);
    const wrong = digestOf("something else");
    const w = await cs.writer(ns("default"), "bad");
    await w.write(data);
    await assert.rejects(
      () => w.commit(1000, wrong),
      kind("FailedPrecondition", /ingest "bad" in namespace "default": expected digest/),
    );
    assert.throws(() => cs.info("default", wrong), kind("NotFound"));
    assert.throws(() => cs.info("default", digestOf(data)), kind("NotFound"));
    // The ingest stays, to be resumed.
    assert.equal((await cs.status("default", "bad")).offset, 1000);
    const w2 = await cs.writer(ns("default"), "bad");
    await assert.rejects(
      () => w2.commit(999),
      kind("FailedPrecondition", /expected size 999 but got 1000/),
    );
    const w3 = await cs.writer(ns("default"), "bad");
    assert.equal(await w3.commit(1000, digestOf(data)), digestOf(data));
    await assert.rejects(() => cs.status("default", "bad"), kind("NotFound"));
    const blobs: string[] = [];
    await local.walk((i) => {
      blobs.push(i.digest);
    });
    assert.deepEqual(blobs, [digestOf(data)]);
  }));

Deno.test("MetadataContentStore: committing content the namespace has is AlreadyExists, ingest gone", () =>
  withStore(async ({ cs }) => {
    const data = randomBytes(64);
    await put(cs, ns("default"), "first", data);
    const w = await cs.writer(ns("default"), "second");
    await w.write(data);
    await assert.rejects(() => w.commit(64), kind("AlreadyExists"));
    await assert.rejects(() => cs.status("default", "second"), kind("NotFound"));
  }));

Deno.test("MetadataContentStore: writes under a lease add the ingest, then the content, to it", () =>
  withStore(async ({ cs, leases }) => {
    leases.create("default", { id: "l1" });
    const data = randomBytes(32);
    const w = await cs.writer(ns("default", "l1"), "leased");
    await w.write(data);
    assert.deepEqual(leases.listResources("default", "l1"), [{ id: "leased", type: "ingests" }]);
    const digest = await w.commit();
    assert.deepEqual(leases.listResources("default", "l1"), [{ id: digest, type: "content" }]);
    // An unknown lease is NotFound and creates nothing.
    await assert.rejects(
      () => cs.writer(ns("default", "nope"), "x"),
      kind("NotFound", /Lease "nope" does not exist/),
    );
    await assert.rejects(() => cs.status("default", "x"), kind("NotFound"));
    // Deleting under the lease drops it from the lease.
    cs.delete(ns("default", "l1"), digest);
    assert.deepEqual(leases.listResources("default", "l1"), []);
  }));

Deno.test("MetadataContentStore.delete() removes the record; the blob goes with the GC", () =>
  withStore(async ({ cs, local, gc, deleted }) => {
    const data = randomBytes(128);
    const digest = await put(cs, ns("one"), "r", data);
    await cs.writer(ns("two"), "r", { expected: digest }).then((w) => w.commit());
    cs.delete(ns("one"), digest);
    assert.deepEqual(deleted, [{ namespace: "one", digest }]);
    assert.throws(() => cs.info("one", digest), kind("NotFound"));
    assert.throws(() => cs.delete(ns("one"), digest), kind("NotFound"));
    // Still recorded in "two" (as a root there), so the blob stays.
    cs.update("two", { digest, labels: { "containerd.io/gc.root": "yes" } });
    await gc.collect();
    assert.equal((await local.info(digest)).size, 128);
    cs.delete(ns("two"), digest);
    await gc.collect();
    await assert.rejects(() => local.info(digest), kind("NotFound"));
  }));

Deno.test("MetadataContentStore: bad digests and refs are InvalidArgument; refs never become paths", () =>
  withStore(async ({ cs, dir }) => {
    for (const bad of ["", "sha256:../../etc/passwd", "md5:abc", "sha256:" + "A".repeat(64)]) {
      assert.throws(() => cs.info("default", bad), kind("InvalidArgument"), bad);
    }
    await assert.rejects(() => cs.writer(ns("default"), ""), kind("InvalidArgument"));
    await assert.rejects(
      () => cs.writer(ns("default"), "r", { expected: "sha1:abcd" }),
      kind("InvalidArgument"),
    );
    const before = await listTree(dir);
    const w = await cs.writer(ns("default"), "../../../../tmp/evil\u0000/x");
    await w.write(new Uint8Array(3));
    await w.close();
    const after = await listTree(dir);
    for (const p of after) {
      assert.ok(!p.startsWith(".."), p);
      if (!before.includes(p)) {
        assert.match(p, /^(content\/ingest(\/[0-9a-f]{64}(\/[a-z]+)?)?|meta\.db.*)$/, p);
      }
    }
  }));

async function listTree(dir: string): Promise<string[]> {
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
