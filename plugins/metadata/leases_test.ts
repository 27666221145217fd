import assert from "node:assert/strict";
import { join } from "node:path";
import { type ErrorKind, TainerdError } from "../errdefs.ts";
import { digestOf } from "../content/digest.ts";
import { NamespaceStore } from "../namespaces/store.ts";
import { MetadataDB } from "./db.ts";
import { GarbageCollector } from "./gc.ts";
import { LeaseManager, randomLeaseId } from "./leases.ts";

async function withLeases(
  fn: (lm: LeaseManager, db: MetadataDB, namespaces: NamespaceStore) => Promise<void> | void,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-leases-" });
  const db = new MetadataDB(join(dir, "meta.db"));
  try {
    const namespaces = new NamespaceStore(db);
    await fn(
      new LeaseManager(db, new GarbageCollector(db), (ns) => namespaces.ensure(ns)),
      db,
      namespaces,
    );
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

Deno.test("LeaseManager.create() makes leases per namespace, with labels and a creation time", () =>
  withLeases((lm, _db, namespaces) => {
    const before = Date.now();
    const l = lm.create("default", { id: "one", labels: { a: "1", empty: "" } });
    assert.equal(l.id, "one");
    assert.deepEqual(l.labels, { a: "1" });
    assert.ok(l.createdAt.getTime() >= before - 1);
    // The namespace is created on first use.
    assert.deepEqual(namespaces.list().map((n) => n.name), ["default"]);
    assert.throws(
      () => lm.create("default", { id: "one" }),
      kind("AlreadyExists", /Cannot create lease "one" in namespace "default": already exists/),
    );
    // The same id in another namespace is another lease.
    lm.create("other", { id: "one" });
    assert.deepEqual(lm.list("default").map((x) => x.id), ["one"]);
    assert.deepEqual(lm.list("default")[0].labels, { a: "1" });
    assert.throws(() => lm.create("bad name!", { id: "x" }), kind("InvalidArgument"));
  }));

Deno.test("LeaseManager.create() without an id makes a random one, as containerd", () =>
  withLeases((lm) => {
    const a = lm.create("default");
    const b = lm.create("default");
    assert.match(a.id, /^\d+-[A-Za-z0-9_-]{4}$/);
    assert.notEqual(a.id, b.id);
    assert.match(randomLeaseId(), /^\d+-[A-Za-z0-9_-]{4}$/);
  }));

Deno.test("LeaseManager.list() filters on id and labels", () =>
  withLeases((lm) => {
    lm.create("default", { id: "a", labels: { team: "x" } });
    lm.create("default", { id: "b", labels: { team: "y" } });
    lm.create("default", { id: "c" });
    assert.deepEqual(lm.list("default").map((l) => l.id), ["a", "b", "c"]);
    assert.deepEqual(lm.list("default", ["id==b"]).map((l) => l.id), ["b"]);
    assert.deepEqual(lm.list("default", ["labels.team==x", "id==c"]).map((l) => l.id), [
      "a",
      "c",
    ]);
    assert.deepEqual(lm.list("default", ["labels.team"]).map((l) => l.id), ["a", "b"]);
    assert.throws(() => lm.list("default", ["id=="]), kind("InvalidArgument"));
  }));

Deno.test("LeaseManager.delete() removes the lease and its resources; NotFound when absent", () =>
  withLeases(async (lm, db) => {
    lm.create("default", { id: "l" });
    lm.addResource("default", "l", { type: "ingests", id: "ref" });
    await lm.delete("default", "l");
    assert.deepEqual(lm.list("default"), []);
    assert.equal(db.all("SELECT * FROM lease_resources").length, 0);
    await assert.rejects(
      () => lm.delete("default", "l"),
      kind("NotFound", /Cannot delete lease "l" in namespace "default": not found/),
    );
  }));

Deno.test("LeaseManager resources: content, ingests and snapshots/<name>", () =>
  withLeases((lm) => {
    lm.create("default", { id: "l" });
    const digest = digestOf("x");
    lm.addResource("default", "l", { type: "snapshots/overlayfs", id: "layer-1" });
    lm.addResource("default", "l", { type: "ingests", id: "ref-1" });
    lm.addResource("default", "l", { type: "content", id: digest });
    lm.addResource("default", "l", { type: "content", id: digest });
    assert.deepEqual(lm.listResources("default", "l"), [
      { id: digest, type: "content" },
      { id: "ref-1", type: "ingests" },
      { id: "layer-1", type: "snapshots/overlayfs" },
    ]);
    lm.deleteResource("default", "l", { type: "ingests", id: "ref-1" });
    lm.deleteResource("default", "l", { type: "ingests", id: "never-there" });
    assert.deepEqual(lm.listResources("default", "l").map((r) => r.type), [
      "content",
      "snapshots/overlayfs",
    ]);
    assert.throws(
      () => lm.addResource("default", "l", { type: "images", id: "x" }),
      kind("NotImplemented"),
    );
    assert.throws(
      () => lm.addResource("default", "l", { type: "content", id: "not-a-digest" }),
      kind("InvalidArgument", /Invalid content resource id/),
    );
    assert.throws(
      () => lm.addResource("default", "l", { type: "snapshots", id: "x" }),
      kind("InvalidArgument"),
    );
    assert.throws(
      () => lm.addResource("default", "l", { type: "content/extra", id: digest }),
      kind("InvalidArgument"),
    );
    assert.throws(
      () => lm.addResource("default", "nope", { type: "content", id: digest }),
      kind("NotFound"),
    );
    assert.throws(() => lm.listResources("other", "l"), kind("NotFound"));
  }));
