import assert from "node:assert/strict";
import { TainerdError } from "../errdefs.ts";
import { MetadataDB } from "../metadata/db.ts";
import { type Namespace, NamespaceStore } from "./store.ts";

async function withStore(
  fn: (s: NamespaceStore, db: MetadataDB, events: [string, Namespace][]) => void | Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-ns-" });
  const db = new MetadataDB(`${dir}/meta.db`);
  const events: [string, Namespace][] = [];
  try {
    await fn(new NamespaceStore(db, (t, ns) => events.push([t, ns])), db, events);
  } finally {
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const kind = (k: string) => (e: unknown) => e instanceof TainerdError && e.kind === k;

Deno.test("NamespaceStore.create() then get() and list() round-trip labels", () =>
  withStore((s, _db, events) => {
    s.create("web", { team: "a", tier: "front" });
    s.create("batch");
    assert.deepEqual(s.get("web"), { name: "web", labels: { team: "a", tier: "front" } });
    assert.deepEqual(s.list().map((n) => n.name), ["batch", "web"]);
    assert.deepEqual(events.map((e) => e[0]), ["/namespaces/create", "/namespaces/create"]);
  }));

Deno.test("NamespaceStore.create() rejects duplicates and invalid names", () =>
  withStore((s) => {
    s.create("web");
    assert.throws(() => s.create("web"), kind("AlreadyExists"));
    for (const bad of ["", "a b", "-x", "x-", "a..b", "../etc", "x".repeat(77), "é"]) {
      assert.throws(() => s.create(bad), kind("InvalidArgument"), bad);
    }
    s.create("a.b-c_d9");
    s.create("x".repeat(76));
  }));

Deno.test("NamespaceStore.update() applies field masks as containerd does", () =>
  withStore((s) => {
    s.create("web", { a: "1", b: "2" });
    s.update({ name: "web", labels: { a: "9", c: "3" } }, ["labels.a", "labels.c"]);
    assert.deepEqual(s.get("web").labels, { a: "9", b: "2", c: "3" });
    s.update({ name: "web", labels: {} }, ["labels.b"]);
    assert.deepEqual(s.get("web").labels, { a: "9", c: "3" });
    s.update({ name: "web", labels: { only: "x" } }, ["labels"]);
    assert.deepEqual(s.get("web").labels, { only: "x" });
    s.update({ name: "web", labels: { z: "1" } });
    assert.deepEqual(s.get("web").labels, { z: "1" });
    assert.throws(() => s.update({ name: "web", labels: {} }, ["name"]), kind("InvalidArgument"));
    assert.throws(() => s.update({ name: "nope", labels: {} }), kind("NotFound"));
  }));

Deno.test("NamespaceStore rejects labels over 4096 bytes", () =>
  withStore((s) => {
    assert.throws(() => s.create("web", { k: "v".repeat(4096) }), kind("InvalidArgument"));
    s.create("web", { k: "v".repeat(4095) });
  }));

Deno.test("NamespaceStore.delete() refuses a namespace that still holds objects", () =>
  withStore((s, db) => {
    s.create("web");
    db.run(
      `INSERT INTO images(namespace, name, labels, media_type, digest, size, annotations,
        created_at, updated_at) VALUES ('web', 'busybox', '{}', 'm', 'sha256:x', 1, '{}', 0, 0)`,
    );
    assert.throws(
      () => s.delete("web"),
      (e: unknown) =>
        e instanceof TainerdError && e.kind === "FailedPrecondition" &&
        e.message === `Namespace "web" must be empty, but it still has images`,
    );
    db.run("DELETE FROM images");
    s.delete("web");
    assert.throws(() => s.get("web"), kind("NotFound"));
    assert.throws(() => s.delete("web"), kind("NotFound"));
  }));

Deno.test("NamespaceStore keeps its data across a reopen of the database", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-ns-" });
  try {
    let db = new MetadataDB(`${dir}/meta.db`);
    new NamespaceStore(db).create("keep", { x: "y" });
    db.close();
    db = new MetadataDB(`${dir}/meta.db`);
    assert.deepEqual(new NamespaceStore(db).get("keep"), { name: "keep", labels: { x: "y" } });
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
