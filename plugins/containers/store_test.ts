import assert from "node:assert/strict";
import { TainerdError } from "../errdefs.ts";
import { MetadataDB } from "../metadata/db.ts";
import { NamespaceStore } from "../namespaces/store.ts";
import { type Container, ContainerStore } from "./store.ts";

const spec = {
  typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
  value: new TextEncoder().encode("{}"),
};

function base(id: string): Omit<Container, "createdAt" | "updatedAt"> {
  return {
    id,
    labels: { app: "web" },
    image: "docker.io/library/busybox:latest",
    runtime: { name: "io.containerd.runc.v2" },
    spec,
    snapshotter: "overlayfs",
    snapshotKey: id,
    extensions: {},
  };
}

async function withStore(fn: (s: ContainerStore, ns: NamespaceStore) => void) {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-ctr-" });
  const db = new MetadataDB(`${dir}/meta.db`);
  try {
    const ns = new NamespaceStore(db);
    fn(new ContainerStore(db, ns), ns);
  } finally {
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const kind = (k: string) => (e: unknown) => e instanceof TainerdError && e.kind === k;

Deno.test("ContainerStore.create() stores every field and creates the namespace", () =>
  withStore((s, ns) => {
    const c = s.create("default", {
      ...base("c1"),
      runtime: {
        name: "io.containerd.runc.v2",
        options: { typeUrl: "x.Options", value: new Uint8Array([1, 2]) },
      },
      extensions: { ext: { typeUrl: "t", value: new Uint8Array([0, 255]) } },
    });
    const got = s.get("default", "c1");
    assert.deepEqual(got, c);
    assert.deepEqual(got.extensions.ext.value, new Uint8Array([0, 255]));
    assert.equal(ns.get("default").name, "default");
    assert.deepEqual(ns.holdings("default"), ["containers"]);
  }));

Deno.test("ContainerStore.create() validates like containerd", () =>
  withStore((s) => {
    s.create("default", base("c1"));
    assert.throws(() => s.create("default", base("c1")), kind("AlreadyExists"));
    assert.throws(() => s.create("default", base("bad id")), kind("InvalidArgument"));
    assert.throws(
      () => s.create("default", { ...base("c2"), runtime: { name: "" } }),
      kind("InvalidArgument"),
    );
    assert.throws(
      () => s.create("default", { ...base("c3"), spec: undefined }),
      kind("InvalidArgument"),
    );
    assert.throws(
      () => s.create("default", { ...base("c4"), snapshotter: "" }),
      kind("InvalidArgument"),
    );
    s.create("other", base("c1"));
    assert.equal(s.list("other").length, 1);
  }));

Deno.test("ContainerStore.update() follows field masks; immutable fields stay", () =>
  withStore((s) => {
    const c = s.create("default", base("c1"));
    let u = s.update("default", { ...c, labels: { app: "db", extra: "1" } }, ["labels.extra"]);
    assert.deepEqual(u.labels, { app: "web", extra: "1" });
    u = s.update("default", { ...c, image: "img2", labels: { only: "x" } }, []);
    assert.equal(u.image, "img2");
    assert.deepEqual(u.labels, { only: "x" });
    assert.throws(
      () => s.update("default", { ...c, snapshotter: "native" }, []),
      kind("InvalidArgument"),
    );
    assert.throws(
      () => s.update("default", { ...c, runtime: { name: "other" } }, []),
      kind("InvalidArgument"),
    );
    assert.throws(() => s.update("default", c, ["runtime"]), kind("InvalidArgument"));
    assert.throws(() => s.update("default", { ...c, id: "nope" }, ["image"]), kind("NotFound"));
    assert.ok(u.updatedAt >= u.createdAt);
    assert.equal(u.createdAt.getTime(), c.createdAt.getTime());
  }));

Deno.test("ContainerStore.delete() removes the record", () =>
  withStore((s) => {
    s.create("default", base("c1"));
    s.delete("default", "c1");
    assert.throws(() => s.get("default", "c1"), kind("NotFound"));
    assert.throws(() => s.delete("default", "c1"), kind("NotFound"));
  }));
