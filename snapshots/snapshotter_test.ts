import assert from "node:assert/strict";
import { isKind } from "../plugins/errdefs.ts";
import { mountOne, unmountAll, withTempMount } from "../sys/mount.ts";
import { mountinfo } from "../sys/mountinfo.ts";
import { NativeSnapshotter } from "./native.ts";
import { checkOverlaySupported, OVERLAY_CHECK_STAMP, OverlaySnapshotter } from "./overlay.ts";
import type { Info, Mount, Snapshotter } from "./snapshotter.ts";
import { MetaStore } from "./storage.ts";
import { withTempDir } from "./test_helpers.ts";

type Opener = (root: string) => Promise<Snapshotter>;

const KINDS: [string, Opener][] = [
  ["OverlaySnapshotter", (root) => OverlaySnapshotter.open(root)],
  ["NativeSnapshotter", (root) => NativeSnapshotter.open(root)],
];

async function rejectsKind(p: Promise<unknown>, kind: string): Promise<void> {
  await assert.rejects(p, (err) => {
    assert.ok(isKind(err, kind as never), `expected ${kind}, got ${err}`);
    return true;
  });
}

/** Mounts `mounts`, runs `fn` on the mount point, unmounts. */
function inMount<T>(mounts: Mount[], fn: (root: string) => T | Promise<T>): Promise<T> {
  return withTempMount(mounts, fn, { tempDir: "/tmp" });
}

function read(path: string): string {
  return Deno.readTextFileSync(path);
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Builds layers 1–3 through the mounts, committing each; returns nothing. */
async function buildChain(sn: Snapshotter): Promise<void> {
  let m = await sn.prepare("a-active", "", { labels: { stage: "1" } });
  await inMount(m, (root) => {
    Deno.mkdirSync(`${root}/etc`);
    Deno.writeTextFileSync(`${root}/etc/one`, "1");
    Deno.writeTextFileSync(`${root}/etc/gone`, "to be deleted");
    Deno.writeTextFileSync(`${root}/top`, "layer1");
  });
  await sn.commit("layer1", "a-active", { labels: { layer: "1" } });

  m = await sn.prepare("b-active", "layer1");
  await inMount(m, (root) => {
    assert.equal(read(`${root}/etc/one`), "1");
    Deno.writeTextFileSync(`${root}/etc/two`, "2");
    Deno.removeSync(`${root}/etc/gone`);
    Deno.writeTextFileSync(`${root}/top`, "layer2");
  });
  await sn.commit("layer2", "b-active");

  m = await sn.prepare("c-active", "layer2");
  await inMount(m, (root) => {
    Deno.writeTextFileSync(`${root}/etc/three`, "3");
    Deno.chmodSync(`${root}/etc/one`, 0o600);
  });
  await sn.commit("layer3", "c-active");
}

for (const [name, open] of KINDS) {
  Deno.test(`${name}: a chain of 3 committed layers mounts as the merged view`, async () => {
    await withTempDir(async (dir) => {
      const sn = await open(`${dir}/root`);
      try {
        await buildChain(sn);
        const mounts = await sn.prepare("d-active", "layer3");
        await inMount(mounts, (root) => {
          assert.equal(read(`${root}/etc/one`), "1");
          assert.equal(Deno.statSync(`${root}/etc/one`).mode! & 0o777, 0o600);
          assert.equal(read(`${root}/etc/two`), "2");
          assert.equal(read(`${root}/etc/three`), "3");
          assert.equal(read(`${root}/top`), "layer2");
          assert.equal(exists(`${root}/etc/gone`), false);
          Deno.writeTextFileSync(`${root}/new`, "rw");
        });
        // Writes stay in the active snapshot.
        await inMount(
          await sn.mounts("d-active"),
          (root) => assert.equal(read(`${root}/new`), "rw"),
        );
        // Each layer still shows its own state.
        await inMount(await sn.view("v1", "layer1"), (root) => {
          assert.equal(read(`${root}/top`), "layer1");
          assert.equal(read(`${root}/etc/gone`), "to be deleted");
          assert.equal(exists(`${root}/etc/two`), false);
        });
        await inMount(await sn.view("v2", "layer2"), (root) => {
          assert.equal(exists(`${root}/etc/gone`), false);
          assert.equal(exists(`${root}/etc/three`), false);
        });
      } finally {
        await sn.close();
      }
    });
  });

  Deno.test(`${name}: views are read-only`, async () => {
    await withTempDir(async (dir) => {
      const sn = await open(`${dir}/root`);
      try {
        await buildChain(sn);
        for (const [key, parent] of [["v-empty", ""], ["v-one", "layer1"], ["v-three", "layer3"]]) {
          const mounts = await sn.view(key, parent);
          assert.ok(mounts.every((m) => m.type === "overlay" || m.options?.includes("ro")));
          await inMount(mounts, (root) => {
            assert.throws(() => Deno.writeTextFileSync(`${root}/x`, "x"), /read-only|EROFS/i);
          });
          assert.deepEqual(await sn.mounts(key), mounts);
          assert.equal((await sn.stat(key)).kind, "view");
        }
        await rejectsKind(sn.commit("nope", "v-one"), "FailedPrecondition");
      } finally {
        await sn.close();
      }
    });
  });

  Deno.test(`${name}: errors for used keys, missing and uncommitted parents, bad keys`, async () => {
    await withTempDir(async (dir) => {
      const sn = await open(`${dir}/root`);
      try {
        await buildChain(sn);
        await sn.prepare("k", "layer1");
        await rejectsKind(sn.prepare("k", ""), "AlreadyExists");
        await rejectsKind(sn.view("k", "layer2"), "AlreadyExists");
        await rejectsKind(sn.prepare("layer1", ""), "AlreadyExists");
        await rejectsKind(sn.commit("layer2", "k"), "AlreadyExists");
        await rejectsKind(sn.commit("x", "missing"), "NotFound");
        await rejectsKind(sn.prepare("k2", "missing"), "NotFound");
        await rejectsKind(sn.prepare("k2", "k"), "InvalidArgument"); // parent is active
        await rejectsKind(sn.prepare("", ""), "InvalidArgument");
        await rejectsKind(sn.prepare("a\0b", ""), "InvalidArgument");
        await rejectsKind(sn.stat("missing"), "NotFound");
        await rejectsKind(sn.mounts("layer1"), "FailedPrecondition");
        await rejectsKind(sn.mounts("missing"), "NotFound");
        await rejectsKind(sn.remove("missing"), "NotFound");
        await rejectsKind(sn.commit("c2", "layer1"), "FailedPrecondition"); // not active
        // A failed creation leaves nothing behind.
        const dirs = [...Deno.readDirSync(`${dir}/root/snapshots`)].map((e) => e.name);
        assert.ok(dirs.every((d) => /^\d+$/.test(d)), `unexpected ${dirs}`);
      } finally {
        await sn.close();
      }
    });
  });

  Deno.test(`${name}: removing a snapshot with children fails; leaves go first`, async () => {
    await withTempDir(async (dir) => {
      const sn = await open(`${dir}/root`);
      try {
        await buildChain(sn);
        await rejectsKind(sn.remove("layer1"), "FailedPrecondition");
        await rejectsKind(sn.remove("layer2"), "FailedPrecondition");
        await sn.view("v", "layer3");
        await rejectsKind(sn.remove("layer3"), "FailedPrecondition");
        await sn.remove("v");
        await sn.remove("layer3");
        await sn.remove("layer2");
        await sn.remove("layer1");
        const names: string[] = [];
        await sn.walk((i) => void names.push(i.name));
        assert.deepEqual(names, []);
        assert.deepEqual([...Deno.readDirSync(`${dir}/root/snapshots`)], []);
        // The key is free again, and ids are never reused.
        await sn.prepare("a-active", "");
        const ids = [...Deno.readDirSync(`${dir}/root/snapshots`)].map((e) => Number(e.name));
        assert.ok(ids[0] > 3, `id ${ids[0]} reused`);
      } finally {
        await sn.close();
      }
    });
  });

  Deno.test(`${name}: stat, update labels, walk with filters`, async () => {
    await withTempDir(async (dir) => {
      const sn = await open(`${dir}/root`);
      try {
        await buildChain(sn);
        const info = await sn.stat("layer1");
        assert.equal(info.kind, "committed");
        assert.equal(info.name, "layer1");
        assert.equal(info.parent, "");
        assert.deepEqual(info.labels, { layer: "1" });
        assert.ok(info.created instanceof Date && info.updated >= info.created);
        assert.equal((await sn.stat("layer3")).parent, "layer2");

        let updated = await sn.update({ name: "layer1", labels: { a: "1", b: "2" } });
        assert.deepEqual(updated.labels, { a: "1", b: "2" });
        updated = await sn.update({ name: "layer1", labels: { b: "3", c: "4" } }, ["labels.b"]);
        assert.deepEqual(updated.labels, { a: "1", b: "3" });
        updated = await sn.update({ name: "layer1", labels: {} }, ["labels.a"]);
        assert.deepEqual(updated.labels, { b: "3" });
        assert.deepEqual((await sn.stat("layer1")).labels, { b: "3" });
        await rejectsKind(
          sn.update({ name: "layer1", parent: "x" }, ["parent"]),
          "InvalidArgument",
        );
        await rejectsKind(sn.update({ name: "missing", labels: {} }), "NotFound");

        await sn.prepare("act", "layer3", { labels: { role: "container" } });
        await sn.view("vw", "layer2", { labels: { role: "view" } });
        const walk = async (...filters: string[]) => {
          const seen: Info[] = [];
          await sn.walk((i) => void seen.push(i), filters);
          return seen.map((i) => i.name);
        };
        assert.deepEqual(await walk(), ["act", "layer1", "layer2", "layer3", "vw"]);
        assert.deepEqual(await walk("kind==committed"), ["layer1", "layer2", "layer3"]);
        assert.deepEqual(await walk("kind==active", "kind==view"), ["act", "vw"]);
        assert.deepEqual(await walk("parent==layer2"), ["layer3", "vw"]);
        assert.deepEqual(await walk("labels.role"), ["act", "vw"]);
        assert.deepEqual(await walk('labels.role~="^cont"'), ["act"]);
        assert.deepEqual(await walk("name==layer1,labels.b==3"), ["layer1"]);
        await assert.rejects(walk("name=="), (e) => isKind(e, "InvalidArgument"));
      } finally {
        await sn.close();
      }
    });
  });

  Deno.test(`${name}: usage is measured for active snapshots and recorded at commit`, async () => {
    await withTempDir(async (dir) => {
      const sn = await open(`${dir}/root`);
      try {
        const m = await sn.prepare("a", "");
        const empty = await sn.usage("a");
        assert.equal(empty.inodes, 1);
        await inMount(m, (root) => {
          Deno.writeFileSync(`${root}/big`, new Uint8Array(1024 * 1024).fill(7));
          Deno.linkSync(`${root}/big`, `${root}/big-link`);
          Deno.mkdirSync(`${root}/d`);
        });
        const active = await sn.usage("a");
        assert.equal(active.inodes, 3); // root, big (once), d
        assert.ok(active.size >= 1024 * 1024, `size ${active.size}`);
        await sn.commit("c", "a");
        assert.deepEqual(await sn.usage("c"), active);
        await sn.prepare("b", "c");
        const child = await sn.usage("b");
        // The overlay child holds only its changes; the native one a full copy.
        if (sn instanceof OverlaySnapshotter) assert.ok(child.size < 1024 * 1024);
        else assert.equal(child.inodes, active.inodes);
      } finally {
        await sn.close();
      }
    });
  });

  Deno.test(`${name}: cleanup() removes orphans left by crashes, and state survives reopening`, async () => {
    await withTempDir(async (dir) => {
      const root = `${dir}/root`;
      let sn = await open(root);
      await buildChain(sn);
      await sn.prepare("act", "layer3");
      await sn.close();
      // Simulated crashes: a half-created temp dir, a dir renamed but never recorded, an
      // interrupted removal, and a record removed whose directory is still there.
      Deno.mkdirSync(`${root}/snapshots/new-123/fs`, { recursive: true });
      Deno.mkdirSync(`${root}/snapshots/999/fs`, { recursive: true });
      Deno.writeTextFileSync(`${root}/snapshots/999/fs/junk`, "x");
      Deno.mkdirSync(`${root}/snapshots/rm-42`);
      const ms = new MetaStore(`${root}/metadata.db`);
      const { id: removedID } = ms.remove("act");
      ms.close();
      assert.ok(exists(`${root}/snapshots/${removedID}`));

      sn = await open(root);
      try {
        await sn.cleanup();
        const left = [...Deno.readDirSync(`${root}/snapshots`)].map((e) => e.name).sort();
        const ms2: string[] = [];
        await sn.walk((i) => void ms2.push(i.name));
        assert.deepEqual(ms2, ["layer1", "layer2", "layer3"]);
        assert.equal(left.length, 3, `left: ${left}`);
        assert.ok(left.every((d) => /^\d+$/.test(d) && d !== removedID && d !== "999"));
        // The chain still works after reopening.
        await inMount(
          await sn.prepare("again", "layer3"),
          (r) => assert.equal(read(`${r}/top`), "layer2"),
        );
        // A new snapshot whose id collides with a stale directory replaces it.
        await sn.prepare("fresh", "");
      } finally {
        await sn.close();
      }
    });
  });

  Deno.test(`${name}: remove() keeps a directory with a mount inside, cleanup() takes it later`, async () => {
    await withTempDir(async (dir) => {
      const root = `${dir}/root`;
      const sn = await open(root);
      try {
        const [m] = await sn.prepare("a", "");
        const inside = `${m.source}/mnt`;
        Deno.mkdirSync(inside);
        await mountOne({ type: "tmpfs", source: "tmpfs", options: ["size=1m"] }, inside);
        try {
          Deno.writeTextFileSync(`${inside}/precious`, "x");
          await sn.remove("a");
          await sn.cleanup();
          assert.equal(read(`${inside}/precious`), "x");
        } finally {
          await unmountAll(inside);
        }
        assert.equal([...Deno.readDirSync(`${root}/snapshots`)].length, 1);
        await sn.cleanup();
        assert.equal([...Deno.readDirSync(`${root}/snapshots`)].length, 0);
      } finally {
        await sn.close();
      }
    });
  });
}

Deno.test("OverlaySnapshotter: mounts are containerd's", async () => {
  await withTempDir(async (dir) => {
    const root = `${dir}/root`;
    const sn = await OverlaySnapshotter.open(root);
    try {
      const s = (id: number) => `${root}/snapshots/${id}`;
      assert.deepEqual(await sn.prepare("a", ""), [
        { type: "bind", source: `${s(1)}/fs`, options: ["rw", "rbind"] },
      ]);
      await sn.commit("c1", "a");
      assert.deepEqual(await sn.view("v0", ""), [
        { type: "bind", source: `${s(2)}/fs`, options: ["ro", "rbind"] },
      ]);
      assert.deepEqual(await sn.view("v1", "c1"), [
        { type: "bind", source: `${s(1)}/fs`, options: ["ro", "rbind"] },
      ]);
      const indexOff = (() => {
        try {
          Deno.statSync("/sys/module/overlay/parameters/index");
          return ["index=off"];
        } catch {
          return [];
        }
      })();
      assert.deepEqual(await sn.prepare("b", "c1"), [{
        type: "overlay",
        source: "overlay",
        options: [
          ...indexOff,
          `workdir=${s(4)}/work`,
          `upperdir=${s(4)}/fs`,
          `lowerdir=${s(1)}/fs`,
        ],
      }]);
      await sn.commit("c2", "b");
      assert.deepEqual(await sn.view("v2", "c2"), [{
        type: "overlay",
        source: "overlay",
        options: [...indexOff, `lowerdir=${s(4)}/fs:${s(1)}/fs`],
      }]);
      // The work dir only exists for active snapshots; the upper dir takes the parent's owner.
      assert.ok(Deno.statSync(`${s(4)}/work`).isDirectory);
      assert.throws(() => Deno.statSync(`${s(5)}/work`));
      assert.equal(mountinfo((m) => m.mountpoint.startsWith(root)).length, 0);
    } finally {
      await sn.close();
    }
  });
});

Deno.test("NativeSnapshotter: mounts are containerd's and copies are exact", async () => {
  await withTempDir(async (dir) => {
    const root = `${dir}/root`;
    const sn = await NativeSnapshotter.open(root);
    try {
      const s = (id: number) => `${root}/snapshots/${id}`;
      assert.deepEqual(await sn.prepare("a", ""), [
        { type: "bind", source: s(1), options: ["rbind", "rw"] },
      ]);
      await sn.commit("c1", "a");
      assert.deepEqual(await sn.view("v1", "c1"), [
        { type: "bind", source: s(1), options: ["rbind", "ro"] },
      ]);
      assert.deepEqual(await sn.prepare("b", "c1"), [
        { type: "bind", source: s(3), options: ["rbind", "rw"] },
      ]);
      assert.equal(exists(s(2)), false); // a view of a parent has no directory
    } finally {
      await sn.close();
    }
  });
});

Deno.test("OverlaySnapshotter.commit() rebases a parentless snapshot onto a parent", async () => {
  await withTempDir(async (dir) => {
    const root = `${dir}/root`;
    const sn = await OverlaySnapshotter.open(root);
    try {
      await sn.prepare("a", "");
      await sn.commit("c1", "a");
      // Prepared before its parent existed: a bind mount of its own upper dir.
      const [m] = await sn.prepare("b", "");
      assert.equal(m.type, "bind");
      Deno.writeTextFileSync(`${m.source}/top`, "top\n");
      await sn.commit("c2", "b", { parent: "c1", labels: { x: "y" } });
      const info = await sn.stat("c2");
      assert.equal(info.parent, "c1");
      assert.deepEqual(info.labels, { x: "y" });
      const [v] = await sn.view("v", "c2");
      assert.equal(v.type, "overlay");
      assert.match(v.options!.join(","), /lowerdir=.*\/snapshots\/\d+\/fs:.*\/snapshots\/1\/fs/);
      await rejectsKind(sn.remove("c1"), "FailedPrecondition");
      // Only a parentless snapshot is rebased, onto a committed one.
      await sn.prepare("d", "c1");
      await rejectsKind(sn.commit("c3", "d", { parent: "c2" }), "InvalidArgument");
      await sn.commit("c3", "d", { parent: "c1" });
      await sn.prepare("e", "");
      await rejectsKind(sn.commit("c4", "e", { parent: "d" }), "NotFound");
      await rejectsKind(sn.commit("c4", "e", { parent: "v" }), "InvalidArgument");
      assert.equal((await sn.stat("e")).kind, "active");
    } finally {
      await sn.close();
    }
  });
});

Deno.test("NativeSnapshotter.commit() cannot rebase", async () => {
  await withTempDir(async (dir) => {
    const sn = await NativeSnapshotter.open(`${dir}/root`);
    try {
      await sn.prepare("a", "");
      await sn.commit("c1", "a");
      await sn.prepare("b", "");
      await rejectsKind(sn.commit("c2", "b", { parent: "c1" }), "NotImplemented");
      await sn.prepare("d", "c1");
      await sn.commit("c3", "d", { parent: "c1" });
      assert.equal((await sn.stat("c3")).parent, "c1");
    } finally {
      await sn.close();
    }
  });
});

Deno.test("checkOverlaySupported() records a pass for this boot, and checks again after", async () => {
  await withTempDir(async (root) => {
    const stamp = `${root}/${OVERLAY_CHECK_STAMP}`;
    const boot = Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
    await checkOverlaySupported(root);
    assert.equal(Deno.readTextFileSync(stamp).trim(), boot);
    // A stamp from another boot: the mount check runs again (and leaves no temp dir).
    Deno.writeTextFileSync(stamp, "another-boot\n");
    await checkOverlaySupported(root);
    assert.equal(Deno.readTextFileSync(stamp).trim(), boot);
    assert.deepEqual(
      [...Deno.readDirSync(root)].map((e) => e.name).filter((n) => n.startsWith("overlay-check")),
      [],
    );
  });
});
