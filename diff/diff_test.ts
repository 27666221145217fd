import assert from "node:assert/strict";
import { gunzipSync, zstdDecompressSync } from "node:zlib";
import { readTar } from "../archive/tar/mod.ts";
import { withTempMount } from "../sys/mount.ts";
import { NativeSnapshotter } from "../snapshots/native.ts";
import { OverlaySnapshotter } from "../snapshots/overlay.ts";
import type { Snapshotter } from "../snapshots/snapshotter.ts";
import {
  bash,
  collector,
  describeTree,
  makeRichTree,
  sh,
  sha256sum,
  streamOf,
  withTempDir,
} from "../snapshots/test_helpers.ts";
import { applyLayer } from "./apply.ts";
import { compareNames } from "./changes.ts";
import {
  diffDirs,
  diffMounts,
  type DiffOptions,
  type DiffResult,
  overlayUpperOver,
} from "./diff.ts";

/** Changes made in the child: edits, deletions, additions, type changes, an opaque dir. */
const MODIFY = `
  touch /tmp/.tainerd-diff-stamp-$$
  printf 'changed' > d/file
  rm d/big
  rm -rf 'sp ace'
  mkdir -p new/dir && printf 'added' > new/dir/file && ln new/dir/file new/hl
  ln d/empty new/hl-to-lower
  chmod 0755 sticky
  rm chr && printf 'was a device' > chr
  rm deep/a/b/c/leaf && mkdir deep/a/b/c/leaf && printf x > deep/a/b/c/leaf/inner
  rm -rf d/sub && mkdir d/sub && printf 'new' > d/sub/new
  # (layers cannot remove a directory's xattrs: a re-created one keeps the old ones, as in
  # containerd, so give it the same)
  setfattr -n user.text -v hello d/sub
  ln -sf other-target d/sym
  mkfifo new/fifo
  printf 'cap' > new/cap
  setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 new/cap
  setfattr -n user.added -v 0x00ff new/dir/file
  find . -cnewer /tmp/.tainerd-diff-stamp-$$ -exec touch -h -d @1700000000 {} +
  rm /tmp/.tainerd-diff-stamp-$$
`;

async function gnuTar(src: string, out: string): Promise<Uint8Array> {
  await sh("tar", [
    "--xattrs",
    "--xattrs-include=*",
    "--format=posix",
    "--numeric-owner",
    "-C",
    src,
    "-cf",
    out,
    ".",
  ]);
  return Deno.readFileSync(out);
}

/** Entry names of a (gzip or plain) layer, in order. */
async function entryNames(blob: Uint8Array): Promise<string[]> {
  const tar = blob[0] === 0x1f
    ? gunzipSync(blob)
    : blob[0] === 0x28
    ? zstdDecompressSync(blob)
    : blob;
  const names: string[] = [];
  for await (const { header } of readTar(streamOf(new Uint8Array(tar)))) names.push(header.name);
  return names;
}

/**
 * containerd's walk order: component-wise, a directory before its contents; a whiteout sorts
 * as the path it deletes, an opaque marker right after its directory.
 */
function walkOrder(a: string, b: string): number {
  const key = (n: string) => {
    const parts = n.replace(/\/$/, "").split("/");
    const base = parts[parts.length - 1];
    if (base === ".wh..wh..opq") parts[parts.length - 1] = "";
    else if (base.startsWith(".wh.")) parts[parts.length - 1] = base.slice(4);
    return parts;
  };
  const pa = key(a);
  const pb = key(b);
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const c = compareNames(pa[i], pb[i]);
    if (c !== 0) return c;
  }
  return pa.length - pb.length;
}

async function checkDigests(r: DiffResult, blob: Uint8Array): Promise<void> {
  assert.equal(r.digest, await sha256sum(blob));
  assert.equal(r.size, blob.length);
  const tar = r.compression === "gzip"
    ? new Uint8Array(gunzipSync(blob))
    : r.compression === "zstd"
    ? new Uint8Array(zstdDecompressSync(blob))
    : blob;
  assert.equal(r.diffID, await sha256sum(tar));
  assert.equal(r.uncompressedSize, tar.length);
}

/**
 * Applies the rich tree as a layer, makes the MODIFY changes in a child, diffs, and applies
 * the diff onto a fresh copy of the parent: the result must equal the child.
 */
async function roundTrip(
  dir: string,
  sn: Snapshotter,
  options: DiffOptions,
): Promise<{ names: string[]; result: DiffResult }> {
  Deno.mkdirSync(`${dir}/src`);
  await makeRichTree(`${dir}/src`);
  // Layers carry whole seconds: parents of changes come back with truncated times, so the
  // base directories get whole seconds (files keep their nanoseconds).
  await bash(`find src -type d -exec touch -d @1488603967 {} +`, dir);
  const base = await gnuTar(`${dir}/src`, `${dir}/base.tar`);
  await applyLayer(streamOf(base), await sn.prepare("extract", ""));
  await sn.commit("base", "extract");
  const child = await sn.prepare("child", "base");
  let expected: string[] = [];
  await withTempMount(child, async (m) => {
    await bash(MODIFY, m);
    expected = await describeTree(m);
  });
  const lower = await sn.view("base-view", "base");
  const sink = collector();
  const result = await diffMounts(lower, child, sink.stream, options);
  const blob = sink.bytes();
  await checkDigests(result, blob);

  Deno.mkdirSync(`${dir}/fresh`);
  await applyLayer(streamOf(base), `${dir}/fresh`);
  const applied = await applyLayer(streamOf(blob), `${dir}/fresh`);
  assert.equal(applied.diffID, result.diffID);
  assert.deepEqual(await describeTree(`${dir}/fresh`), expected);
  // The child itself is unchanged by the diff.
  await withTempMount(child, async (m) => assert.deepEqual(await describeTree(m), expected));
  return { names: await entryNames(blob), result };
}

function assertWalkOrder(names: string[]): void {
  // Hard links to a file written later are appended right after it; everything else is in
  // walk order.
  const ordered = names.filter((n) => n !== "new/hl-to-lower" && n !== "d/empty");
  assert.deepEqual(ordered, [...ordered].sort(walkOrder));
}

Deno.test("diffMounts() on overlay (upper dir fast path) round-trips through applyLayer", async () => {
  await withTempDir(async (dir) => {
    const sn = await OverlaySnapshotter.open(`${dir}/sn`);
    try {
      const child = await sn.prepare("probe", "");
      assert.equal(overlayUpperOver([], child), null);
      await sn.remove("probe");
      const { names, result } = await roundTrip(dir, sn, { xattrs: "all" });
      assert.equal(result.mediaType, "application/vnd.oci.image.layer.v1.tar+gzip");
      assert.ok(overlayUpperOver(await sn.mounts("base-view"), await sn.mounts("child")));
      assertWalkOrder(names);
      for (const n of [".wh.sp ace", "d/.wh.big", "d/sub/", "d/sub/.wh..wh..opq", "d/sub/new"]) {
        assert.ok(names.includes(n), `${n} missing from ${names}`);
      }
      assert.ok(!names.includes("d/big"));
    } finally {
      await sn.close();
    }
  });
});

Deno.test("diffMounts() on overlay with the double walk round-trips too", async () => {
  await withTempDir(async (dir) => {
    const sn = await OverlaySnapshotter.open(`${dir}/sn`);
    try {
      const { names } = await roundTrip(dir, sn, {
        xattrs: "all",
        overlayFastPath: false,
        compression: "zstd",
      });
      assertWalkOrder(names);
      // Without the upper dir there are no opaque markers (the re-created d/sub was empty).
      assert.ok(!names.includes("d/sub/.wh..wh..opq"));
      // Parents of changes are included.
      assert.ok(names.includes("deep/a/b/c/"));
      for (const n of [".wh.sp ace", "d/.wh.big", "d/file", "new/", "new/fifo", "chr"]) {
        assert.ok(names.includes(n), `${n} missing from ${names}`);
      }
      // Unchanged entries are not in the layer.
      for (const n of ["d/hard", "blk", "abs-sym", "fifo", "big-uid"]) {
        assert.ok(!names.includes(n), `${n} unexpectedly in ${names}`);
      }
    } finally {
      await sn.close();
    }
  });
});

Deno.test("diffMounts() on native snapshots (bind mounts, double walk) round-trips", async () => {
  await withTempDir(async (dir) => {
    const sn = await NativeSnapshotter.open(`${dir}/sn`);
    try {
      const { names, result } = await roundTrip(dir, sn, { xattrs: "all", compression: "none" });
      assert.equal(result.digest, result.diffID);
      assertWalkOrder(names);
    } finally {
      await sn.close();
    }
  });
});

Deno.test("diffMounts() writes only security.capability xattrs by default, as containerd", async () => {
  await withTempDir(async (dir) => {
    const sn = await OverlaySnapshotter.open(`${dir}/sn`);
    try {
      const m = await sn.prepare("a", "");
      await withTempMount(m, (root) =>
        bash(
          `
        printf x > cap && setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 cap
        printf y > user && setfattr -n user.x -v 1 user
      `,
          root,
        ));
      const sink = collector();
      await diffMounts([], m, sink.stream, { compression: "none" });
      const xattrs = new Map<string, string[]>();
      for await (const { header } of readTar(streamOf(sink.bytes()))) {
        xattrs.set(header.name, [...header.xattrs.keys()]);
      }
      assert.deepEqual(xattrs, new Map([["cap", ["security.capability"]], ["user", []]]));
    } finally {
      await sn.close();
    }
  });
});

Deno.test("diffDirs() is deterministic and a first layer diff is the whole tree", async () => {
  await withTempDir(async (dir) => {
    Deno.mkdirSync(`${dir}/empty`);
    Deno.mkdirSync(`${dir}/tree`);
    await makeRichTree(`${dir}/tree`);
    await bash(`mkdir lower && printf gone > lower/gone`, dir);
    const run = async (lower: string) => {
      const sink = collector();
      const r = await diffDirs(lower, `${dir}/tree`, sink.stream, {
        whiteoutTime: new Date(0),
        xattrs: "all",
      });
      return { r, blob: sink.bytes() };
    };
    const a = await run(`${dir}/lower`);
    const b = await run(`${dir}/lower`);
    assert.equal(a.r.digest, b.r.digest);
    assert.equal(a.r.diffID, b.r.diffID);
    assert.ok((await entryNames(a.blob)).includes(".wh.gone"));
    // Applied onto an empty directory, a first-layer diff recreates the tree (times of
    // non-directories whole seconds in layers, so compare without them).
    const first = await run(`${dir}/empty`);
    Deno.mkdirSync(`${dir}/out`);
    await applyLayer(streamOf(first.blob), `${dir}/out`);
    assert.deepEqual(
      await describeTree(`${dir}/out`, { mtimes: false, dirMtimes: false }),
      await describeTree(`${dir}/tree`, { mtimes: false, dirMtimes: false }),
    );
  });
});
