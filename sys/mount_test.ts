import assert from "node:assert/strict";
import {
  isErrno,
  MNT_DETACH,
  mount,
  MS_BIND,
  MS_NOSUID,
  MS_PRIVATE,
  MS_RDONLY,
  MS_REC,
  MS_REMOUNT,
  MS_SHARED,
  SysError,
  umount2,
} from "./libc.ts";
import {
  type Mount,
  mountAll,
  mountOne,
  parseMountOptions,
  readonlyMounts,
  unmount,
  unmountAll,
  withReadonlyTempMount,
  withTempMount,
} from "./mount.ts";
import { isMountpoint, lookupMount, mountinfo } from "./mountinfo.ts";

/** Detaches every mount at or below `dir`, deepest first, then removes `dir` recursively. */
function cleanup(dir: string): void {
  const real = Deno.realPathSync(dir);
  const below = mountinfo((m) => m.mountpoint === real || m.mountpoint.startsWith(real + "/"))
    .sort((a, b) => b.mountpoint.length - a.mountpoint.length);
  for (const m of below) {
    try {
      umount2(m.mountpoint, MNT_DETACH);
    } catch {
      // already gone
    }
  }
  assert.equal(mountinfo((m) => m.mountpoint.startsWith(real + "/")).length, 0);
  Deno.removeSync(dir, { recursive: true });
}

async function withDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-sys-test" });
  try {
    await fn(dir);
  } finally {
    cleanup(dir);
  }
}

function mountsAt(path: string) {
  const real = Deno.realPathSync(path);
  return mountinfo((m) => m.mountpoint === real);
}

Deno.test("parseMountOptions() splits flags from data as containerd does", () => {
  assert.deepEqual(parseMountOptions(["rbind", "ro"]), {
    flags: MS_BIND | MS_REC | MS_RDONLY,
    data: "",
    losetup: false,
  });
  assert.equal(parseMountOptions(["ro", "rw"]).flags, 0);
  assert.equal(parseMountOptions(["rw", "ro"]).flags, MS_RDONLY);
  assert.deepEqual(
    parseMountOptions(["nosuid", "lowerdir=/a:/b", "upperdir=/u", "workdir=/w"]),
    { flags: MS_NOSUID, data: "lowerdir=/a:/b,upperdir=/u,workdir=/w", losetup: false },
  );
  // `defaults` has flag 0, so containerd passes it on as data.
  assert.equal(parseMountOptions(["defaults", "size=1m"]).data, "defaults,size=1m");
  assert.equal(parseMountOptions(["loop", "ro"]).losetup, true);
  assert.equal(parseMountOptions(["bind", "rprivate"]).flags, MS_BIND | MS_PRIVATE | MS_REC);
  assert.equal(parseMountOptions(["shared"]).flags, MS_SHARED);
  assert.equal(parseMountOptions(["remount", "suid", "nosuid"]).flags, MS_REMOUNT | MS_NOSUID);
});

Deno.test("readonlyMounts() folds the overlay upperdir into lowerdir and adds ro elsewhere", () => {
  const input: Mount[] = [
    {
      type: "overlay",
      source: "overlay",
      options: ["lowerdir=/l1:/l2", "upperdir=/u", "workdir=/w"],
    },
    { type: "bind", source: "/s", options: ["rbind", "rw"] },
  ];
  assert.deepEqual(readonlyMounts(input), [
    { type: "overlay", source: "overlay", options: ["lowerdir=/u:/l1:/l2"] },
    { type: "bind", source: "/s", options: ["rbind", "ro"] },
  ]);
  assert.deepEqual(input[1].options, ["rbind", "rw"]);
});

Deno.test("mount() and umount2() mount a tmpfs and unmount it", async () => {
  await withDir((dir) => {
    const target = `${dir}/t`;
    Deno.mkdirSync(target);
    mount("tmpfs", target, "tmpfs", MS_NOSUID, "size=1m,mode=0750");
    const [info] = mountsAt(target);
    assert.equal(info.fstype, "tmpfs");
    assert.match(info.options, /nosuid/);
    assert.match(info.vfsOptions, /size=1024k/);
    assert.ok(isMountpoint(target));
    assert.equal(lookupMount(`${target}`).id, info.id);
    Deno.writeTextFileSync(`${target}/f`, "x");
    umount2(target);
    assert.equal(mountsAt(target).length, 0);
    assert.ok(!isMountpoint(target));
    assert.throws(() => Deno.statSync(`${target}/f`), Deno.errors.NotFound);
  });
});

Deno.test("mountOne() makes a read-only recursive bind mount", async () => {
  await withDir(async (dir) => {
    Deno.mkdirSync(`${dir}/src`);
    Deno.mkdirSync(`${dir}/dst`);
    Deno.writeTextFileSync(`${dir}/src/hello`, "world");
    await mountOne({ type: "bind", source: `${dir}/src`, options: ["rbind", "ro"] }, `${dir}/dst`);
    assert.equal(Deno.readTextFileSync(`${dir}/dst/hello`), "world");
    const [info] = mountsAt(`${dir}/dst`);
    assert.ok(info.options.split(",").includes("ro"), info.options);
    assert.throws(() => Deno.writeTextFileSync(`${dir}/dst/new`, "x"));
    await unmount(`${dir}/dst`);
    assert.equal(mountsAt(`${dir}/dst`).length, 0);
    await unmount(`${dir}/dst`); // EINVAL (not mounted) is ignored
  });
});

Deno.test("mountOne() mounts an overlay of two lowers, an upper and a workdir", async () => {
  await withDir(async (dir) => {
    for (const d of ["l1", "l2", "upper", "work", "merged"]) Deno.mkdirSync(`${dir}/${d}`);
    Deno.writeTextFileSync(`${dir}/l1/top`, "from l1");
    Deno.writeTextFileSync(`${dir}/l2/bottom`, "from l2");
    Deno.writeTextFileSync(`${dir}/l2/top`, "hidden");
    await mountOne({
      type: "overlay",
      source: "overlay",
      options: [
        `lowerdir=${dir}/l1:${dir}/l2`,
        `upperdir=${dir}/upper`,
        `workdir=${dir}/work`,
      ],
    }, `${dir}/merged`);
    assert.equal(mountsAt(`${dir}/merged`)[0].fstype, "overlay");
    assert.equal(Deno.readTextFileSync(`${dir}/merged/top`), "from l1");
    assert.equal(Deno.readTextFileSync(`${dir}/merged/bottom`), "from l2");
    Deno.writeTextFileSync(`${dir}/merged/new`, "written");
    assert.equal(Deno.readTextFileSync(`${dir}/upper/new`), "written");
    await unmountAll(`${dir}/merged`);
    assert.equal(mountsAt(`${dir}/merged`).length, 0);
  });
});

/** Makes `n` snapshot-like layers `<base>/<i>/fs` holding `layer-<i>` and a shared file. */
function makeLayers(base: string, n: number): string[] {
  const dirs: string[] = [];
  for (let i = 1; i <= n; i++) {
    const fs = `${base}/${i}/fs`;
    Deno.mkdirSync(fs, { recursive: true });
    Deno.writeTextFileSync(`${fs}/layer-${i}`, String(i));
    Deno.writeTextFileSync(`${fs}/shared`, String(i));
    dirs.push(fs);
  }
  return dirs.reverse(); // topmost first, as containerd lists them
}

Deno.test("mountOne() mounts an overlay of 60 lowerdirs longer than a page in-process", async () => {
  await withDir(async (dir) => {
    const base = `${dir}/${
      "long-directory-name-".repeat(3)
    }/io.containerd.snapshotter.v1.overlayfs/snapshots`;
    const lowers = makeLayers(base, 60);
    const lowerdir = `lowerdir=${lowers.join(":")}`;
    assert.ok(lowerdir.length > 4096, `lowerdir is ${lowerdir.length} bytes`);
    Deno.mkdirSync(`${dir}/merged`);
    await mountOne({ type: "overlay", source: "overlay", options: [lowerdir] }, `${dir}/merged`);
    const [info] = mountsAt(`${dir}/merged`);
    assert.equal(info.fstype, "overlay");
    assert.match(info.vfsOptions, /lowerdir=\/proc\/self\/fd\/\d+\/60\/fs:/);
    assert.equal(Deno.readTextFileSync(`${dir}/merged/layer-1`), "1");
    assert.equal(Deno.readTextFileSync(`${dir}/merged/layer-60`), "60");
    assert.equal(Deno.readTextFileSync(`${dir}/merged/shared`), "60");
    await unmount(`${dir}/merged`);
    assert.equal(mountsAt(`${dir}/merged`).length, 0);
  });
});

Deno.test("mountOne() mounts an overlay of 300 lowerdirs through mount(8) in their parent", async () => {
  await withDir(async (dir) => {
    const base = `${dir}/snapshots`;
    const lowers = makeLayers(base, 300);
    Deno.mkdirSync(`${dir}/upper`);
    Deno.mkdirSync(`${dir}/work`);
    Deno.mkdirSync(`${dir}/merged`);
    await mountOne({
      type: "overlay",
      source: "overlay",
      options: [
        "nosuid",
        `lowerdir=${lowers.join(":")}`,
        `upperdir=${dir}/upper`,
        `workdir=${dir}/work`,
        "rprivate",
      ],
    }, `${dir}/merged`);
    const [info] = mountsAt(`${dir}/merged`);
    assert.equal(info.fstype, "overlay");
    assert.match(info.vfsOptions, /lowerdir=300\/fs:299\/fs:/);
    assert.ok(info.options.split(",").includes("nosuid"), info.options);
    assert.equal(info.optional, ""); // private
    assert.equal(Deno.readTextFileSync(`${dir}/merged/layer-1`), "1");
    assert.equal(Deno.readTextFileSync(`${dir}/merged/shared`), "300");
    Deno.writeTextFileSync(`${dir}/merged/new`, "x");
    assert.equal(Deno.readTextFileSync(`${dir}/upper/new`), "x");
    await unmount(`${dir}/merged`);
    assert.equal(mountsAt(`${dir}/merged`).length, 0);
  });
});

Deno.test("mount() failures are SysErrors with the errno's code", async () => {
  await withDir((dir) => {
    const missing = `${dir}/missing`;
    assert.throws(() => mount("tmpfs", missing, "tmpfs", 0), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.code, "ENOENT");
      assert.equal(e.errno, 2);
      assert.equal(e.syscall, "mount");
      assert.equal(e.kind, "NotFound");
      assert.equal(
        e.message,
        `mount("tmpfs", ${JSON.stringify(missing)}, "tmpfs"): ENOENT (No such file or directory)`,
      );
      return true;
    });
    Deno.mkdirSync(`${dir}/t`);
    assert.throws(
      () => mount("tmpfs", `${dir}/t`, "tmpfs", 0, "no_such_option=1"),
      (e: unknown) => isErrno(e, "EINVAL") && e.kind === "InvalidArgument",
    );
    assert.throws(
      () => mount("x", `${dir}/t`, "no-such-filesystem", 0),
      (e: unknown) => isErrno(e, "ENODEV"),
    );
    assert.throws(() => umount2(`${dir}/t`), (e: unknown) => isErrno(e, "EINVAL"));
    assert.equal(mountsAt(`${dir}/t`).length, 0);
  });
});

Deno.test("unmountAll() removes stacked mounts", async () => {
  await withDir(async (dir) => {
    const t = `${dir}/t`;
    Deno.mkdirSync(t);
    await mountAll([
      { type: "tmpfs", source: "tmpfs", options: ["size=1m"] },
      { type: "tmpfs", source: "tmpfs", options: ["size=2m"] },
    ], t);
    assert.equal(mountsAt(t).length, 2);
    await unmountAll(t);
    assert.equal(mountsAt(t).length, 0);
    await unmountAll(`${dir}/missing`);
    await unmountAll("");
  });
});

Deno.test("withTempMount() mounts for the callback, then unmounts and removes the directory", async () => {
  await withDir(async (dir) => {
    let seen = "";
    const result = await withTempMount(
      [{ type: "tmpfs", source: "tmpfs", options: ["size=1m"] }],
      (root) => {
        seen = root;
        assert.ok(isMountpoint(root));
        Deno.writeTextFileSync(`${root}/f`, "x");
        return 42;
      },
      { tempDir: dir },
    );
    assert.equal(result, 42);
    assert.ok(seen.startsWith(dir));
    assert.throws(() => Deno.statSync(seen), Deno.errors.NotFound);
    assert.equal(mountsAt(dir).length, 0);
  });
});

Deno.test("withTempMount() unmounts and removes the directory when the callback throws", async () => {
  await withDir(async (dir) => {
    let seen = "";
    const boom = new Error("boom");
    await assert.rejects(
      withTempMount(
        [
          { type: "tmpfs", source: "tmpfs", options: [] },
          { type: "tmpfs", source: "tmpfs", options: [] },
        ],
        async (root) => {
          seen = root;
          await Promise.resolve();
          throw boom;
        },
        { tempDir: dir },
      ),
      (e: unknown) => e === boom,
    );
    assert.notEqual(seen, "");
    assert.equal(mountinfo((m) => m.mountpoint === seen).length, 0);
    assert.throws(() => Deno.statSync(seen), Deno.errors.NotFound);
  });
});

Deno.test("withTempMount() cleans up when a later mount fails", async () => {
  await withDir(async (dir) => {
    await assert.rejects(
      withTempMount(
        [
          { type: "tmpfs", source: "tmpfs", options: [] },
          { type: "tmpfs", source: "tmpfs", options: ["no_such_option"] },
        ],
        () => assert.fail("the callback must not run"),
        { tempDir: dir },
      ),
      (e: unknown) => isErrno(e, "EINVAL"),
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    assert.equal(mountinfo((m) => m.mountpoint.startsWith(Deno.realPathSync(dir))).length, 0);
  });
});

Deno.test("withReadonlyTempMount() gives a read-only view", async () => {
  await withDir(async (dir) => {
    Deno.mkdirSync(`${dir}/src`);
    Deno.writeTextFileSync(`${dir}/src/f`, "data");
    const tmp = `${dir}/tmp`;
    Deno.mkdirSync(tmp);
    await withReadonlyTempMount(
      [{ type: "bind", source: `${dir}/src`, options: ["rbind", "rw"] }],
      (root) => {
        assert.equal(Deno.readTextFileSync(`${root}/f`), "data");
        assert.throws(() => Deno.writeTextFileSync(`${root}/g`, "x"));
      },
      { tempDir: tmp },
    );
    assert.deepEqual([...Deno.readDirSync(tmp)], []);
  });
});
