import assert from "node:assert/strict";
import { join } from "node:path";
import { type ErrorKind, TainerdError } from "../errdefs.ts";
import { digestOf } from "../content/digest.ts";
import { LocalStore } from "../content/local_store.ts";
import { NamespaceStore } from "../namespaces/store.ts";
import { MetadataContentStore } from "./content.ts";
import { MetadataDB } from "./db.ts";
import { collectorFor, GarbageCollector, type GcNode, GcResource, labelReferences } from "./gc.ts";
import { LeaseManager, type Scope } from "./leases.ts";

interface Fixture {
  db: MetadataDB;
  local: LocalStore;
  gc: GarbageCollector;
  leases: LeaseManager;
  cs: MetadataContentStore;
  deleted: string[];
}

async function withGc(fn: (f: Fixture) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-gc-" });
  const db = new MetadataDB(join(dir, "meta.db"));
  try {
    const local = await LocalStore.open(join(dir, "content"));
    const gc = new GarbageCollector(db);
    const namespaces = new NamespaceStore(db);
    const ensure = (ns: string) => namespaces.ensure(ns);
    const leases = new LeaseManager(db, gc, ensure);
    const deleted: string[] = [];
    const cs = new MetadataContentStore(db, local, {
      gc,
      leases,
      ensureNamespace: ensure,
      publishDelete: (namespace, digest) => deleted.push(`${namespace}/${digest}`),
    });
    await fn({ db, local, gc, leases, cs, deleted });
  } finally {
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
}

function kind(expected: ErrorKind): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, expected, `wrong kind for: ${err.message}`);
    return true;
  };
}

const scope = (namespace: string, lease?: string): Scope => ({ namespace, lease });

async function put(
  cs: MetadataContentStore,
  s: Scope,
  data: Uint8Array | string,
  labels?: Record<string, string>,
): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const w = await cs.writer(s, `ref-${digestOf(bytes)}`, { total: bytes.byteLength });
  await w.write(bytes);
  return await w.commit(bytes.byteLength, digestOf(bytes), { labels });
}

async function blobs(local: LocalStore): Promise<string[]> {
  const out: string[] = [];
  await local.walk((i) => {
    out.push(i.digest);
  });
  return out.sort();
}

Deno.test("GC: unreferenced content is swept, record and blob; /content/delete is published", () =>
  withGc(async ({ cs, gc, local, deleted }) => {
    const kept = await put(cs, scope("default"), "kept", { "containerd.io/gc.root": "1" });
    const gone = await put(cs, scope("default"), "gone");
    const stats = await gc.collect();
    assert.equal(stats.removed.content, 1);
    assert.equal(cs.info("default", kept).digest, kept);
    assert.throws(() => cs.info("default", gone), kind("NotFound"));
    assert.deepEqual(await blobs(local), [kept]);
    assert.deepEqual(deleted, [`default/${gone}`]);
  }));

Deno.test("GC: content held by a lease survives until the lease is deleted", () =>
  withGc(async ({ cs, gc, leases, local }) => {
    leases.create("default", { id: "l" });
    const digest = await put(cs, scope("default", "l"), "leased");
    await gc.collect();
    assert.equal(cs.info("default", digest).size, 6);
    await leases.delete("default", "l", { sync: true });
    assert.throws(() => cs.info("default", digest), kind("NotFound"));
    assert.deepEqual(await blobs(local), []);
  }));

Deno.test("GC: a chain of containerd.io/gc.ref.content labels keeps every link", () =>
  withGc(async ({ cs, gc }) => {
    const leaf = await put(cs, scope("default"), "leaf");
    const other = await put(cs, scope("default"), "other");
    const mid = await put(cs, scope("default"), "mid", {
      "containerd.io/gc.ref.content.l.0": leaf,
      "containerd.io/gc.ref.content/x": other,
      // Not a reference: the name does not continue with "." or "/".
      "containerd.io/gc.ref.contentX": digestOf("nothing"),
    });
    const top = await put(cs, scope("default"), "top", {
      "containerd.io/gc.ref.content": mid,
      "containerd.io/gc.root": "yes",
    });
    const stray = await put(cs, scope("default"), "stray");
    await gc.collect();
    for (const d of [top, mid, leaf, other]) assert.equal(cs.info("default", d).digest, d);
    assert.throws(() => cs.info("default", stray), kind("NotFound"));
    // Break the chain: what hung below the break goes.
    cs.update("default", { digest: mid, labels: {} }, ["labels"]);
    await gc.collect();
    assert.equal(cs.info("default", mid).digest, mid);
    assert.throws(() => cs.info("default", leaf), kind("NotFound"));
    assert.throws(() => cs.info("default", other), kind("NotFound"));
  }));

Deno.test("GC: references stay within their namespace", () =>
  withGc(async ({ cs, gc, local }) => {
    const shared = await put(cs, scope("a"), "shared");
    await put(cs, scope("b"), "root", {
      "containerd.io/gc.root": "1",
      "containerd.io/gc.ref.content": shared,
    });
    await gc.collect();
    // "b" references a digest it does not have: "a"'s record is still unreferenced in "a".
    assert.throws(() => cs.info("a", shared), kind("NotFound"));
    assert.ok(!(await blobs(local)).includes(shared));
  }));

Deno.test("GC: an expired lease releases its content and is removed itself", () =>
  withGc(async ({ cs, gc, leases }) => {
    const past = new Date(Date.now() - 1000).toISOString().replace(/\.\d+Z$/, "Z");
    const future = new Date(Date.now() + 3_600_000).toISOString().replace(/\.\d+Z$/, "Z");
    leases.create("default", { id: "old", labels: { "containerd.io/gc.expire": past } });
    leases.create("default", { id: "new", labels: { "containerd.io/gc.expire": future } });
    leases.create("default", { id: "odd", labels: { "containerd.io/gc.expire": "not a time" } });
    const a = await put(cs, scope("default", "old"), "in old");
    const b = await put(cs, scope("default", "new"), "in new");
    const c = await put(cs, scope("default", "odd"), "in odd");
    const stats = await gc.collect();
    assert.equal(stats.removed.lease, 1);
    assert.deepEqual(leases.list("default").map((l) => l.id), ["new", "odd"]);
    assert.throws(() => cs.info("default", a), kind("NotFound"));
    assert.equal(cs.info("default", b).digest, b);
    assert.equal(cs.info("default", c).digest, c);
  }));

Deno.test("GC: a lease labelled containerd.io/gc.flat keeps its content but not its references", () =>
  withGc(async ({ cs, gc, leases }) => {
    const child = await put(cs, scope("default"), "child");
    leases.create("default", { id: "flat", labels: { "containerd.io/gc.flat": "1" } });
    const parent = await put(cs, scope("default", "flat"), "parent", {
      "containerd.io/gc.ref.content": child,
    });
    await gc.collect();
    assert.equal(cs.info("default", parent).digest, parent);
    assert.throws(() => cs.info("default", child), kind("NotFound"));
    // The same content also reached through a normal lease is followed.
    const child2 = await put(cs, scope("default"), "child2");
    cs.update("default", { digest: parent, labels: { "containerd.io/gc.ref.content": child2 } });
    leases.create("default", { id: "deep" });
    leases.addResource("default", "deep", { type: "content", id: parent });
    await gc.collect();
    assert.equal(cs.info("default", child2).digest, child2);
  }));

Deno.test("GC: ingests expire unless leased; their backend data goes with them", () =>
  withGc(async ({ cs, gc, leases, db, local }) => {
    leases.create("default", { id: "l" });
    const fresh = await cs.writer(scope("default"), "fresh");
    await fresh.write(new Uint8Array(10));
    await fresh.close();
    const stale = await cs.writer(scope("default"), "stale");
    await stale.write(new Uint8Array(10));
    await stale.close();
    const leased = await cs.writer(scope("default", "l"), "leased");
    await leased.write(new Uint8Array(10));
    await leased.close();
    db.run("UPDATE ingests SET expire_at = ? WHERE ref = 'stale'", Date.now() - 1);
    const stats = await gc.collect();
    assert.equal(stats.removed.ingest, 1);
    assert.deepEqual((await cs.listStatuses("default")).map((s) => s.ref), ["fresh", "leased"]);
    assert.equal((await local.listStatuses()).length, 2);
    await leases.delete("default", "l", { sync: true });
    assert.deepEqual((await cs.listStatuses("default")).map((s) => s.ref), ["fresh"]);
    assert.equal((await local.listStatuses()).length, 1);
  }));

Deno.test("GC: a shared ingest keeps the blob it expects, even after its namespace lost it", () =>
  withGc(async ({ cs, gc, local }) => {
    const digest = await put(cs, scope("a"), "blob");
    const w = await cs.writer(scope("b"), "r", { expected: digest });
    cs.delete(scope("a"), digest);
    await gc.collect();
    assert.deepEqual(await blobs(local), [digest]);
    assert.equal(await w.commit(), digest);
    assert.equal(cs.info("b", digest).digest, digest);
  }));

Deno.test("GC: backend blobs and ingests no namespace knows are removed", () =>
  withGc(async ({ gc, local }) => {
    const w = await local.writer("orphan-blob");
    await w.write(new TextEncoder().encode("orphan"));
    await w.commit();
    const i = await local.writer("orphan-ingest");
    await i.write(new Uint8Array(5));
    await i.close();
    gc.markDirty(GcResource.Content);
    await gc.collect();
    assert.deepEqual(await blobs(local), []);
    assert.deepEqual(await local.listStatuses(), []);
  }));

Deno.test("GC: other stores register resource types with roots, references and sweeps", () =>
  withGc(async ({ cs, gc, db }) => {
    const target = await put(cs, scope("default"), "image target");
    const config = await put(cs, scope("default"), "image config");
    // A fake image store: its images are roots holding their target and label references.
    const images = [{
      namespace: "default",
      name: "img",
      target,
      labels: {} as Record<string, string>,
    }];
    images[0].labels["containerd.io/gc.ref.content.config"] = config;
    const unregisterImages = gc.registerResourceType({
      type: GcResource.Image,
      roots(emit) {
        for (const img of images) {
          emit({ type: GcResource.Content, namespace: img.namespace, key: img.target });
          labelReferences(img.namespace, img.labels, emit);
        }
      },
    });
    // A fake snapshotter whose snapshots are swept when unreachable.
    const snapshots = new Set(["overlayfs/a", "overlayfs/b"]);
    const cleaned: GcNode[][] = [];
    gc.registerResourceType({
      type: GcResource.Snapshot,
      scan(emit) {
        for (const key of snapshots) emit({ type: GcResource.Snapshot, namespace: "default", key });
      },
      remove(node) {
        snapshots.delete(node.key);
      },
      cleanup(removed) {
        cleaned.push([...removed]);
        return Promise.resolve();
      },
    });
    cs.update("default", {
      digest: target,
      labels: { "containerd.io/gc.ref.snapshot.overlayfs": "a" },
    });
    assert.throws(() => gc.registerResourceType({ type: GcResource.Image }), /registered twice/);
    await gc.collect();
    assert.equal(cs.info("default", target).digest, target);
    assert.equal(cs.info("default", config).digest, config);
    assert.deepEqual([...snapshots], ["overlayfs/a"]);
    assert.deepEqual(cleaned.map((c) => c.map((n) => n.key)), [["overlayfs/b"]]);
    // Once the image store is gone, nothing holds them.
    unregisterImages();
    await gc.collect();
    assert.throws(() => cs.info("default", target), kind("NotFound"));
    assert.deepEqual([...snapshots], []);
    assert.ok(db.get("SELECT 1 AS x FROM namespaces WHERE name = 'default'"));
  }));

Deno.test("GC: collect() calls made while one runs share the next collection", () =>
  withGc(async ({ gc }) => {
    let runs = 0;
    gc.onCollected(() => runs++);
    const first = gc.collect();
    const second = gc.collect();
    const third = gc.collect();
    assert.equal(second, third);
    await Promise.all([first, second, third]);
    assert.equal(runs, 2);
    assert.equal(gc.busy, false);
  }));

Deno.test("GC: labelReferences() reads content and snapshot reference labels", () => {
  const got: GcNode[] = [];
  labelReferences("ns", {
    "containerd.io/gc.ref.content": "sha256:a",
    "containerd.io/gc.ref.content.m": "sha256:b",
    "containerd.io/gc.ref.content/x": "sha256:c",
    "containerd.io/gc.ref.contentious": "sha256:d",
    "containerd.io/gc.ref.snapshot.overlayfs": "key1",
    "containerd.io/gc.ref.snapshot.native/extra": "key2",
    "unrelated": "x",
  }, (n) => got.push(n));
  assert.deepEqual(got, [
    { type: "content", namespace: "ns", key: "sha256:a" },
    { type: "content", namespace: "ns", key: "sha256:b" },
    { type: "content", namespace: "ns", key: "sha256:c" },
    { type: "snapshot", namespace: "ns", key: "overlayfs/key1" },
    { type: "snapshot", namespace: "ns", key: "native/key2" },
  ]);
});

Deno.test("GC: collectorFor() gives one collector per database", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-gc-" });
  const db = new MetadataDB(join(dir, "meta.db"));
  try {
    assert.equal(collectorFor(db), collectorFor(db));
  } finally {
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
});
