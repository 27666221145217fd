import assert from "node:assert/strict";
import { join } from "node:path";
import { type ErrorKind, TainerdError } from "../errdefs.ts";
import { alreadyExists } from "../errdefs.ts";
import { digestOf } from "../content/digest.ts";
import { LocalStore } from "../content/local_store.ts";
import { ContainerStore } from "../containers/store.ts";
import { ImageStore } from "../images/store.ts";
import { NamespaceStore } from "../namespaces/store.ts";
import { MetadataContentStore } from "./content.ts";
import { MetadataDB } from "./db.ts";
import { GarbageCollector } from "./gc.ts";
import { LeaseManager, type Scope } from "./leases.ts";
import { type SnapshotEvent, SnapshotStore } from "./snapshots.ts";
import { NativeSnapshotter } from "../../snapshots/native.ts";
import type { Info, Snapshotter } from "../../snapshots/snapshotter.ts";

interface Fixture {
  dir: string;
  db: MetadataDB;
  gc: GarbageCollector;
  leases: LeaseManager;
  backend: NativeSnapshotter;
  store: SnapshotStore;
  events: SnapshotEvent[];
}

async function withStore(
  fn: (f: Fixture) => Promise<void>,
  wrap: (b: NativeSnapshotter) => Snapshotter = (b) => b,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-msnap-" });
  const db = new MetadataDB(join(dir, "meta.db"));
  const backend = await NativeSnapshotter.open(join(dir, "native"));
  try {
    const gc = new GarbageCollector(db);
    const namespaces = new NamespaceStore(db);
    const ensure = (ns: string) => namespaces.ensure(ns);
    const leases = new LeaseManager(db, gc, ensure);
    const events: SnapshotEvent[] = [];
    const store = new SnapshotStore(db, new Map([["native", wrap(backend)]]), {
      gc,
      leases,
      ensureNamespace: ensure,
      publish: (namespace, e) => events.push({ ...e, key: `${namespace}:${e.key}` }),
    });
    await fn({ dir, db, gc, leases, backend, store, events });
  } finally {
    await backend.close();
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

async function backendInfos(b: Snapshotter): Promise<Info[]> {
  const out: Info[] = [];
  await b.walk((i) => {
    out.push(i);
  });
  return out;
}

async function names(f: Fixture, ns: string, filters: string[] = []): Promise<string[]> {
  const out: string[] = [];
  await f.store.snapshotter("native").walk(ns, (i) => {
    out.push(i.name);
  }, filters);
  return out;
}

Deno.test("SnapshotStore: the same key in two namespaces maps to two backend snapshots", () =>
  withStore(async (f) => {
    const sn = f.store.snapshotter("native");
    await sn.prepare(scope("a"), "k", "");
    await sn.prepare(scope("b"), "k", "");
    await assert.rejects(sn.prepare(scope("a"), "k", ""), kind("AlreadyExists"));
    const keys = (await backendInfos(f.backend)).map((i) => i.name).sort();
    assert.deepEqual(keys, ["a/1/k", "b/1/k"]);
    assert.equal((await sn.stat("a", "k")).name, "k");
    assert.equal((await sn.stat("a", "k")).kind, "active");
    assert.deepEqual(await names(f, "a"), ["k"]);
    assert.deepEqual(await names(f, "c"), []);
    await assert.rejects(sn.stat("c", "k"), kind("NotFound"));
    await sn.remove(scope("a"), "k");
    await assert.rejects(sn.stat("a", "k"), kind("NotFound"));
    assert.equal((await sn.stat("b", "k")).name, "k");
    assert.deepEqual(f.events.map((e) => `${e.topic} ${e.key}`), [
      "/snapshot/prepare a:k",
      "/snapshot/prepare b:k",
      "/snapshot/remove a:k",
    ]);
  }));

Deno.test("SnapshotStore: parents are resolved in the namespace; children pin parents", () =>
  withStore(async (f) => {
    const sn = f.store.snapshotter("native");
    const mounts = await sn.prepare(scope("a"), "base-work", "");
    Deno.writeTextFileSync(join(mounts[0].source, "hello"), "world");
    await sn.commit(scope("a"), "base", "base-work");
    await assert.rejects(sn.stat("a", "base-work"), kind("NotFound"));
    await assert.rejects(sn.prepare(scope("b"), "child", "base"), kind("NotFound"));
    const child = await sn.prepare(scope("a"), "child", "base");
    assert.equal(Deno.readTextFileSync(join(child[0].source, "hello")), "world");
    const info = await sn.stat("a", "child");
    assert.equal(info.parent, "base");
    assert.equal((await sn.stat("a", "base")).kind, "committed");
    // The backend knows the parent by its backend key.
    const backendChild = (await backendInfos(f.backend)).find((i) => i.name.endsWith("/child"));
    assert.equal(backendChild?.parent, "a/2/base");
    await assert.rejects(sn.remove(scope("a"), "base"), kind("FailedPrecondition"));
    await assert.rejects(sn.commit(scope("a"), "x", "nope"), kind("NotFound"));
    await assert.rejects(sn.commit(scope("a"), "base", "child"), kind("AlreadyExists"));
    await sn.commit(scope("a"), "top", "child");
    assert.deepEqual(await names(f, "a"), ["base", "top"]);
    assert.deepEqual(await names(f, "a", ["parent==base"]), ["top"]);
    assert.deepEqual(await names(f, "a", ["kind==committed,name==base"]), ["base"]);
    assert.equal((await sn.usage("a", "top")).inodes, 2, "native copies: the dir and hello");
    await assert.rejects(sn.mounts("a", "top"), kind("FailedPrecondition"));
    assert.deepEqual(
      f.events.filter((e) => e.topic === "/snapshot/commit").map((e) => e.key),
      ["a:base-work", "a:child"],
    );
  }));

Deno.test("SnapshotStore: labels live in the record; only inherited ones reach the backend", () =>
  withStore(async (f) => {
    const sn = f.store.snapshotter("native");
    await sn.prepare(scope("a"), "k", "", {
      labels: { "containerd.io/snapshot/x": "1", "app": "web", "empty": "" },
    });
    let info = await sn.stat("a", "k");
    assert.deepEqual(info.labels, { "containerd.io/snapshot/x": "1", "app": "web" });
    const [b] = await backendInfos(f.backend);
    assert.deepEqual(b.labels, { "containerd.io/snapshot/x": "1" });
    const created = info.created.getTime();
    await new Promise((r) => setTimeout(r, 5));
    info = await sn.update("a", {
      name: "k",
      labels: { app: "db", "containerd.io/snapshot/y": "2" },
    }, [
      "labels.app",
      "labels.containerd.io/snapshot/y",
      "labels.containerd.io/snapshot/x",
    ]);
    assert.deepEqual(info.labels, { "containerd.io/snapshot/y": "2", app: "db" });
    assert.equal(info.created.getTime(), created);
    assert.ok(info.updated.getTime() > created);
    assert.deepEqual((await backendInfos(f.backend))[0].labels, {
      "containerd.io/snapshot/y": "2",
    });
    info = await sn.update("a", { name: "k", labels: { only: "this" } });
    assert.deepEqual(info.labels, { only: "this" });
    assert.deepEqual((await backendInfos(f.backend))[0].labels, {});
    await assert.rejects(
      sn.update("a", { name: "k", labels: {} }, ["kind"]),
      kind("InvalidArgument"),
    );
    await assert.rejects(sn.update("a", { name: "nope" }, ["labels"]), kind("NotFound"));
    await assert.rejects(
      sn.prepare(scope("a"), "bad", "", { labels: { "": "x" } }),
      kind("InvalidArgument"),
    );
    assert.deepEqual(await names(f, "a", ["labels.only==this"]), ["k"]);
    assert.deepEqual(await names(f, "a", ["labels.app"]), []);
  }));

Deno.test("SnapshotStore: containerd.io/snapshot.ref makes prepare fail when the chain exists", () =>
  withStore(async (f) => {
    const sn = f.store.snapshotter("native");
    const ref = { "containerd.io/snapshot.ref": "sha256:chain" };
    await sn.prepare(scope("a"), "extract-1", "", { labels: ref });
    await sn.commit(scope("a"), "sha256:chain", "extract-1");
    await assert.rejects(
      sn.prepare(scope("a"), "extract-2", "", { labels: ref }),
      kind("AlreadyExists"),
    );
    // Another namespace unpacks its own copy: committing the same chain stays separate.
    await sn.prepare(scope("b"), "extract-3", "", { labels: ref });
    await sn.commit(scope("b"), "sha256:chain", "extract-3");
    const committed = (await backendInfos(f.backend)).filter((i) => i.kind === "committed");
    assert.deepEqual(committed.map((i) => i.name).sort(), [
      "a/2/sha256:chain",
      "b/2/sha256:chain",
    ]);
  }));

Deno.test("SnapshotStore: a backend that shares a target makes the namespace record it", () => {
  // A backend that, like remote snapshotters, answers AlreadyExists when a committed snapshot
  // with the same containerd.io/snapshot.ref and parent exists.
  const sharing = (b: NativeSnapshotter): Snapshotter =>
    new Proxy(b, {
      get(target, prop, receiver) {
        if (prop === "prepare") {
          return async (
            key: string,
            parent: string,
            opts?: { labels?: Record<string, string> },
          ) => {
            const ref = opts?.labels?.["containerd.io/snapshot.ref"];
            if (ref) {
              let found = false;
              await target.walk((i) => {
                if (
                  i.kind === "committed" && i.parent === parent &&
                  i.labels["containerd.io/snapshot.ref"] === ref
                ) found = true;
              });
              if (found) throw alreadyExists(`target ${ref} exists`);
            }
            return await target.prepare(key, parent, opts);
          };
        }
        const v = Reflect.get(target, prop, receiver);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
  return withStore(async (f) => {
    const sn = f.store.snapshotter("native");
    const ref = { "containerd.io/snapshot.ref": "sha256:chain" };
    await sn.prepare(scope("a"), "extract-1", "", { labels: ref });
    await sn.commit(scope("a"), "sha256:chain", "extract-1", { labels: ref });
    await assert.rejects(
      sn.prepare(scope("b"), "extract-2", "", { labels: { ...ref, mine: "yes" } }),
      kind("AlreadyExists"),
    );
    const info = await sn.stat("b", "sha256:chain");
    assert.equal(info.kind, "committed");
    assert.equal(info.labels.mine, "yes");
    await assert.rejects(sn.stat("b", "extract-2"), kind("NotFound"));
    // One backend snapshot, recorded by both namespaces: removing one record keeps it.
    assert.equal((await backendInfos(f.backend)).length, 1);
    await sn.remove(scope("a"), "sha256:chain");
    await f.gc.collect();
    assert.equal((await backendInfos(f.backend)).length, 0, "nothing roots it");
  }, sharing);
});

Deno.test("SnapshotStore: snapshots made under a lease are added to it and kept by it", () =>
  withStore(async (f) => {
    const sn = f.store.snapshotter("native");
    f.leases.create("a", { id: "l" });
    await sn.prepare(scope("a", "l"), "work", "");
    assert.deepEqual(f.leases.listResources("a", "l"), [{ id: "work", type: "snapshots/native" }]);
    await sn.commit(scope("a", "l"), "done", "work");
    assert.deepEqual(f.leases.listResources("a", "l"), [{ id: "done", type: "snapshots/native" }]);
    await sn.prepare(scope("a", "l"), "child", "done");
    await f.gc.collect();
    assert.deepEqual(await names(f, "a"), ["child", "done"]);
    await sn.remove(scope("a", "l"), "child");
    assert.deepEqual(f.leases.listResources("a", "l"), [{ id: "done", type: "snapshots/native" }]);
    await assert.rejects(sn.prepare(scope("a", "missing"), "x", ""), kind("NotFound"));
    await assert.rejects(sn.stat("a", "x"), kind("NotFound"));
    await f.leases.delete("a", "l", { sync: true });
    assert.deepEqual(await names(f, "a"), []);
    assert.deepEqual(await backendInfos(f.backend), []);
    assert.deepEqual([...Deno.readDirSync(join(f.dir, "native", "snapshots"))], []);
  }));

Deno.test("SnapshotStore: GC removes orphans, keeps gc.root and what containers use", () =>
  withStore(async (f) => {
    const sn = f.store.snapshotter("native");
    const containers = new ContainerStore(f.db, new NamespaceStore(f.db));
    containers.registerGc(f.gc);
    await sn.prepare(scope("a"), "orphan", "");
    await sn.prepare(scope("a"), "rooted", "", { labels: { "containerd.io/gc.root": "x" } });
    await sn.prepare(scope("a"), "base-work", "");
    await sn.commit(scope("a"), "base", "base-work");
    await sn.prepare(scope("a"), "ctr-rootfs", "base");
    containers.create("a", {
      id: "c1",
      labels: {},
      image: "",
      runtime: { name: "io.containerd.runc.v2" },
      spec: {
        typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
        value: new Uint8Array(),
      },
      snapshotter: "native",
      snapshotKey: "ctr-rootfs",
      extensions: {},
    });
    const stats = await f.gc.collect();
    assert.equal(stats.removed.snapshot, 1);
    assert.deepEqual(await names(f, "a"), ["base", "ctr-rootfs", "rooted"]);
    assert.equal((await backendInfos(f.backend)).length, 3);
    containers.delete("a", "c1");
    await f.gc.collect();
    assert.deepEqual(await names(f, "a"), ["rooted"]);
    assert.deepEqual((await backendInfos(f.backend)).map((i) => i.name), ["a/2/rooted"]);
    // Removal drops the record at once; the backend snapshot goes at the next collection.
    await sn.remove(scope("a"), "rooted");
    assert.equal((await backendInfos(f.backend)).length, 1);
    await f.gc.collect();
    assert.deepEqual(await backendInfos(f.backend), []);
    assert.deepEqual([...Deno.readDirSync(join(f.dir, "native", "snapshots"))], []);
  }));

Deno.test("SnapshotStore: concurrent commits to one name: one wins, the other's data goes", () =>
  withStore(async (f) => {
    const sn = f.store.snapshotter("native");
    const root = { labels: { "containerd.io/gc.root": "x" } };
    await sn.prepare(scope("a"), "w1", "", root);
    await sn.prepare(scope("a"), "w2", "", root);
    const results = await Promise.allSettled([
      sn.commit(scope("a"), "chain", "w1", root),
      sn.commit(scope("a"), "chain", "w2", root),
    ]);
    assert.deepEqual(results.map((r) => r.status).sort(), ["fulfilled", "rejected"]);
    const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    assert.ok(kind("AlreadyExists")(failed.reason));
    // The loser's key is still there (as containerd: the caller removes it).
    const left = (await names(f, "a")).filter((n) => n !== "chain");
    assert.equal(left.length, 1);
    await sn.remove(scope("a"), left[0]);
    await f.gc.collect();
    assert.deepEqual((await backendInfos(f.backend)).map((i) => i.kind), ["committed"]);
  }));

Deno.test("SnapshotStore: an unknown snapshotter is InvalidArgument", () =>
  withStore((f) => {
    assert.throws(() => f.store.snapshotter("zfs"), kind("InvalidArgument"));
    assert.throws(() => f.store.snapshotter(""), kind("InvalidArgument"));
    assert.deepEqual(f.store.names, ["native"]);
    return Promise.resolve();
  }));

Deno.test("GC: an image keeps its content and the snapshot chain its config names", () =>
  withStore(async (f) => {
    const namespaces = new NamespaceStore(f.db);
    const local = await LocalStore.open(join(f.dir, "content"));
    const cs = new MetadataContentStore(f.db, local, {
      gc: f.gc,
      leases: f.leases,
      ensureNamespace: (ns) => namespaces.ensure(ns),
    });
    const images = new ImageStore(f.db, namespaces);
    images.registerGc(f.gc);
    const put = async (text: string, labels: Record<string, string> = {}) => {
      const bytes = new TextEncoder().encode(text);
      const w = await cs.writer(scope("a"), `ref-${digestOf(bytes)}`, { total: bytes.length });
      await w.write(bytes);
      return await w.commit(bytes.length, digestOf(bytes), { labels });
    };
    const sn = f.store.snapshotter("native");
    await sn.prepare(scope("a"), "x", "");
    await sn.commit(scope("a"), "sha256:chain", "x");
    const config = await put("config", {
      "containerd.io/gc.ref.snapshot.native": "sha256:chain",
    });
    const layer = await put("layer");
    const manifest = await put("manifest", {
      "containerd.io/gc.ref.content.config": config,
      "containerd.io/gc.ref.content.l.0": layer,
    });
    await put("stray");
    images.create("a", {
      name: "img",
      labels: {},
      target: {
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        digest: manifest,
        size: 8,
        annotations: {},
      },
    });
    await f.gc.collect();
    assert.deepEqual(cs.list("a").map((i) => i.digest).sort(), [config, layer, manifest].sort());
    assert.deepEqual(await names(f, "a"), ["sha256:chain"]);
    images.delete("a", "img");
    await f.gc.collect();
    assert.deepEqual(cs.list("a"), []);
    assert.deepEqual(await names(f, "a"), []);
    assert.deepEqual(await backendInfos(f.backend), []);
  }));

Deno.test("SnapshotStore: the first collection prunes backend snapshots left without records", () =>
  withStore(async (f) => {
    // As after a crash between the backend's prepare and the record's insert.
    await f.backend.prepare("a/99/ghost", "");
    await f.store.snapshotter("native").prepare(scope("a"), "kept", "", {
      labels: { "containerd.io/gc.root": "x" },
    });
    await f.gc.collect();
    assert.deepEqual((await backendInfos(f.backend)).map((i) => i.name), ["a/1/kept"]);
  }));
