import assert from "node:assert/strict";
import { writeTar } from "../archive/tar/mod.ts";
import type { TarWriterEntry } from "../archive/tar/mod.ts";
import { isKind } from "../plugins/errdefs.ts";
import { lgetxattr } from "../sys/libc.ts";
import { withTempMount } from "../sys/mount.ts";
import { NativeSnapshotter } from "../snapshots/native.ts";
import { OverlaySnapshotter } from "../snapshots/overlay.ts";
import type { Snapshotter } from "../snapshots/snapshotter.ts";
import { lstatx } from "../snapshots/statx.ts";
import {
  bash,
  describeTree,
  makeRichTree,
  readAll,
  sh,
  sha256sum,
  streamOf,
  withTempDir,
} from "../snapshots/test_helpers.ts";
import {
  applyLayer,
  applyLayerFile,
  applyLayerInWorker,
  applyTarToMounts,
  directTarget,
  WORKER_MIN_BYTES,
} from "./apply.ts";
import { MediaType } from "./compression.ts";

const enc = new TextEncoder();

/** A GNU tar (posix format, all xattrs, numeric owners) of the tree at `src`. */
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

async function compress(bytes: Uint8Array, how: "none" | "gzip" | "zstd"): Promise<Uint8Array> {
  if (how === "none") return bytes;
  const args = how === "gzip" ? ["-c", "-6"] : ["-c", "-q", "-3"];
  const child = new Deno.Command(how, { args, stdin: "piped", stdout: "piped" }).spawn();
  const writing = (async () => {
    const w = child.stdin.getWriter();
    await w.write(bytes);
    await w.close();
  })();
  const out = await child.output();
  await writing;
  assert.ok(out.success);
  return out.stdout;
}

for (const how of ["none", "gzip", "zstd"] as const) {
  Deno.test(`applyLayer() applies a GNU tar layer (${how}) with every entry type exactly`, async () => {
    await withTempDir(async (dir) => {
      Deno.mkdirSync(`${dir}/src`);
      Deno.mkdirSync(`${dir}/dst`);
      await makeRichTree(`${dir}/src`);
      const tar = await gnuTar(`${dir}/src`, `${dir}/layer.tar`);
      const blob = await compress(tar, how);
      const result = await applyLayer(streamOf(blob, 7919), `${dir}/dst`, {
        mediaType: how === "zstd"
          ? MediaType.OciLayerZstd
          : how === "gzip"
          ? MediaType.DockerLayerGzip
          : MediaType.OciLayer,
      });
      assert.equal(result.diffID, await sha256sum(tar));
      assert.equal(result.size, tar.length);
      assert.equal(result.compression, how);
      assert.deepEqual(await describeTree(`${dir}/dst`), await describeTree(`${dir}/src`));
      // Spot checks independent of describeTree.
      const file = lstatx(`${dir}/dst/d/file`);
      assert.equal(file.mode & 0o7777, 0o4755);
      assert.deepEqual(file.mtime, { sec: 1612325106, nsec: 123456789 });
      assert.equal(file.nlink, 3);
      assert.deepEqual(
        lgetxattr(`${dir}/dst/d/file`, "user.bin"),
        new Uint8Array([0, 255, 0, 255, 0x41]),
      );
      assert.deepEqual(lstatx(`${dir}/dst/d/sym`).mtime, { sec: 1577836800, nsec: 500000000 });
      assert.equal(lstatx(`${dir}/dst/big-uid`).uid, 4000000000);
      assert.equal(lstatx(`${dir}/dst/sticky`).mode & 0o7777, 0o1777);
      assert.equal(lstatx(`${dir}/dst/d/sub`).mode & 0o7777, 0o2755);
      const chr = lstatx(`${dir}/dst/chr`);
      assert.deepEqual([chr.mode & 0o170000, chr.rdevMajor, chr.rdevMinor], [0o020000, 1, 3]);
      assert.deepEqual(lstatx(`${dir}/dst/d`).mtime, { sec: 1488603967, nsec: 750000000 });
    });
  });
}

Deno.test("applyLayer() applies a TarWriter layer: sub-second times, ids, xattrs, devices", async () => {
  await withTempDir(async (dir) => {
    const t = (sec: number, nsec = 0) => ({ sec, nsec });
    const entries: TarWriterEntry[] = [
      { header: { name: "dir/", type: "5", mode: 0o3775, uid: 7, gid: 8, mtime: t(1000, 1) } },
      {
        header: {
          name: "dir/file",
          mode: 0o6711,
          uid: 2 ** 31 + 5,
          gid: 99999999,
          mtime: t(1234567890, 987654321),
          xattrs: new Map([["user.bin", new Uint8Array([0, 0xff, 0x0a, 0x3d, 0])], [
            "trusted.evil",
            enc.encode("ignored"),
          ]]),
        },
        body: enc.encode("content"),
      },
      // As containerd, a hard link's header sets the owner, mode and times of the inode again.
      {
        header: {
          name: "dir/link",
          type: "1",
          linkname: "dir/file",
          mode: 0o6711,
          uid: 2 ** 31 + 5,
          gid: 99999999,
          mtime: t(1234567890, 987654321),
        },
      },
      {
        header: { name: "dir/sym", type: "2", linkname: "file", mtime: t(555, 123), uid: 3 },
      },
      { header: { name: "dev/null", type: "3", devmajor: 1, devminor: 3, mode: 0o666 } },
      { header: { name: "dev/loop", type: "4", devmajor: 7, devminor: 300, mode: 0o660 } },
      { header: { name: "dev/pipe", type: "6", mode: 0o620, mtime: t(42, 42) } },
      { header: { name: "./a/../implicit/parents/f", mode: 0o644 }, body: enc.encode("p") },
      {
        header: { name: "old-time", mtime: t(-100), atime: t(5000) },
        body: enc.encode("o"),
      },
    ];
    const tar = await readAll(writeTar(entries, { subsecondTimes: true }));
    const root = `${dir}/root`;
    Deno.mkdirSync(root);
    const r = await applyLayer(streamOf(tar), root);
    assert.equal(r.diffID, await sha256sum(tar));
    const d = lstatx(`${root}/dir`);
    assert.deepEqual([d.mode & 0o7777, d.uid, d.gid, d.mtime], [0o3775, 7, 8, t(1000, 1)]);
    const f = lstatx(`${root}/dir/file`);
    assert.deepEqual(
      [f.mode & 0o7777, f.uid, f.gid, f.mtime, f.nlink],
      [0o6711, 2 ** 31 + 5, 99999999, t(1234567890, 987654321), 2],
    );
    assert.equal(lstatx(`${root}/dir/link`).ino, f.ino);
    assert.deepEqual(
      lgetxattr(`${root}/dir/file`, "user.bin"),
      new Uint8Array([0, 255, 10, 61, 0]),
    );
    assert.equal(lgetxattr(`${root}/dir/file`, "trusted.evil"), null);
    const s = lstatx(`${root}/dir/sym`);
    assert.deepEqual([s.uid, s.mtime, Deno.readLinkSync(`${root}/dir/sym`)], [
      3,
      t(555, 123),
      "file",
    ]);
    const loop = lstatx(`${root}/dev/loop`);
    assert.deepEqual([loop.mode, loop.rdevMajor, loop.rdevMinor], [0o060660, 7, 300]);
    assert.equal(lstatx(`${root}/dev/null`).mode, 0o020666);
    assert.deepEqual([lstatx(`${root}/dev/pipe`).mode, lstatx(`${root}/dev/pipe`).mtime], [
      0o010620,
      t(42, 42),
    ]);
    assert.equal(Deno.readTextFileSync(`${root}/implicit/parents/f`), "p");
    assert.equal(lstatx(`${root}/implicit/parents`).mode & 0o7777, 0o755);
    // Times before the epoch become the epoch, as containerd's boundTime; atime is the later.
    assert.deepEqual(lstatx(`${root}/old-time`).mtime, t(0));
    assert.deepEqual(lstatx(`${root}/old-time`).atime, t(5000));
  });
});

Deno.test("applyLayer() detects compression from magic bytes and refuses what it cannot read", async () => {
  await withTempDir(async (dir) => {
    const tar = await readAll(writeTar([{ header: { name: "f" }, body: enc.encode("x") }]));
    const gz = await compress(tar, "gzip");
    Deno.mkdirSync(`${dir}/a`);
    // A gzip blob labelled uncompressed, and a plain tar labelled gzip, are both read.
    let r = await applyLayer(streamOf(gz), `${dir}/a`, { mediaType: MediaType.OciLayer });
    assert.equal(r.compression, "gzip");
    assert.equal(r.diffID, await sha256sum(tar));
    r = await applyLayer(streamOf(tar), `${dir}/a`, { mediaType: MediaType.OciLayerGzip });
    assert.equal(r.compression, "none");
    await assert.rejects(
      applyLayer(streamOf(tar), `${dir}/a`, {
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
      }),
      (e) => isKind(e, "NotImplemented"),
    );
    const bz = enc.encode("BZh91AY&SY");
    await assert.rejects(applyLayer(streamOf(bz), `${dir}/a`), (e) => isKind(e, "NotImplemented"));
    const corrupt = gz.slice();
    corrupt.fill(0x55, 20, 40);
    await assert.rejects(
      applyLayer(streamOf(corrupt), `${dir}/a`),
      (e) => isKind(e, "InvalidArgument"),
    );
    await assert.rejects(
      applyLayer(streamOf(tar.slice(0, 700)), `${dir}/a`),
      (e) => isKind(e, "InvalidArgument"),
    );
  });
});

/** Three layers: a base, one with a whiteout and an opaque directory, one on top. */
async function threeLayers(dir: string): Promise<Uint8Array[]> {
  await bash(
    `
    mkdir -p l1/etc/conf.d l1/opq/sub l1/keep l2/etc l2/opq l3/opq
    cd l1
    echo base > etc/passwd; echo gone > etc/gone; echo c > etc/conf.d/c
    echo 1 > opq/one; echo 2 > opq/sub/two; echo k > keep/k; ln -s etc/passwd link
    touch -d @1600000000 etc/passwd etc/gone etc/conf.d/c opq/one opq/sub/two keep/k
    touch -d @1600000000 etc/conf.d etc opq/sub opq keep .
    touch -h -d @1600000000 link
  `,
    dir,
  );
  const l1 = await gnuTar(`${dir}/l1`, `${dir}/l1.tar`);
  const entries: TarWriterEntry[] = [
    { header: { name: "etc/", type: "5", mtime: { sec: 1600000100, nsec: 0 } } },
    { header: { name: "etc/.wh.gone", mtime: { sec: 1600000100, nsec: 0 } } },
    { header: { name: "etc/.wh.conf.d", mtime: { sec: 1600000100, nsec: 0 } } },
    {
      header: { name: "etc/passwd", mode: 0o600, mtime: { sec: 1600000100, nsec: 0 } },
      body: enc.encode("v2"),
    },
    { header: { name: "opq/", type: "5", mode: 0o700, mtime: { sec: 1600000100, nsec: 0 } } },
    { header: { name: "opq/.wh..wh..opq", mtime: { sec: 1600000100, nsec: 0 } } },
    { header: { name: "opq/new", mtime: { sec: 1600000100, nsec: 0 } }, body: enc.encode("n") },
    { header: { name: ".wh.link", mtime: { sec: 1600000100, nsec: 0 } } },
  ];
  const l2 = await readAll(writeTar(entries));
  const l3 = await readAll(writeTar([
    { header: { name: "opq/", type: "5", mode: 0o750, mtime: { sec: 1600000200, nsec: 0 } } },
    { header: { name: "opq/sub/", type: "5", mtime: { sec: 1600000200, nsec: 0 } } },
    {
      header: { name: "opq/sub/three", mtime: { sec: 1600000200, nsec: 0 } },
      body: enc.encode("3"),
    },
    { header: { name: "etc/", type: "5", mtime: { sec: 1600000200, nsec: 0 } } },
    { header: { name: "etc/conf.d/", type: "5", mtime: { sec: 1600000200, nsec: 0 } } },
    {
      header: { name: "link", type: "2", linkname: "keep/k", mtime: { sec: 1600000200, nsec: 0 } },
    },
  ]));
  return [l1, l2, l3];
}

const EXPECTED_MERGED = [
  "etc d 755 0:0 mtime=1600000200.0000000000",
  "etc/conf.d d 755 0:0 mtime=1600000200.0000000000",
  "etc/passwd f 600 0:0 size=2 sha=fb04dcb6970e mtime=1600000100.0000000000",
  "keep d 755 0:0 mtime=1600000000.0000000000",
  "keep/k f 644 0:0 size=2 sha=19732980d68f mtime=1600000000.0000000000",
  "link l 777 0:0 mtime=1600000200.0000000000 -> keep/k",
  "opq d 750 0:0 mtime=1600000200.0000000000",
  "opq/new f 644 0:0 size=1 sha=1b16b1df538b mtime=1600000100.0000000000",
  "opq/sub d 755 0:0 mtime=1600000200.0000000000",
  "opq/sub/three f 644 0:0 size=1 sha=4e07408562be mtime=1600000200.0000000000",
];

Deno.test("applyLayer() applies whiteouts and opaque directories onto a plain directory", async () => {
  await withTempDir(async (dir) => {
    const layers = await threeLayers(dir);
    Deno.mkdirSync(`${dir}/plain`);
    for (const l of layers) await applyLayer(streamOf(l), `${dir}/plain`);
    assert.deepEqual(await describeTree(`${dir}/plain`), EXPECTED_MERGED);
  });
});

async function stack(sn: Snapshotter, layers: Uint8Array[]): Promise<void> {
  let parent = "";
  for (const [i, l] of layers.entries()) {
    const mounts = await sn.prepare(`extract-${i}`, parent);
    const r = await applyLayer(streamOf(l), mounts, { mediaType: MediaType.OciLayer });
    assert.equal(r.diffID, await sha256sum(l));
    await sn.commit(`layer-${i}`, `extract-${i}`);
    parent = `layer-${i}`;
  }
}

Deno.test("applyLayer() onto overlay snapshots writes overlay whiteouts and gives the merged view", async () => {
  await withTempDir(async (dir) => {
    const layers = await threeLayers(dir);
    const root = `${dir}/overlay`;
    const sn = await OverlaySnapshotter.open(root);
    try {
      await stack(sn, layers);
      // The second layer went straight into its upper dir, as overlay whiteouts.
      const upper2 = `${root}/snapshots/2/fs`;
      const wh = lstatx(`${upper2}/etc/gone`);
      assert.deepEqual([wh.mode & 0o170000, wh.rdevMajor, wh.rdevMinor], [0o020000, 0, 0]);
      assert.deepEqual(lgetxattr(`${upper2}/opq`, "trusted.overlay.opaque"), enc.encode("y"));
      await withTempMount(await sn.view("merged", "layer-2"), async (m) => {
        assert.deepEqual(await describeTree(m), EXPECTED_MERGED);
      });
    } finally {
      await sn.close();
    }
  });
});

Deno.test("applyLayer() as overlay upper dirs of parentless snapshots, rebased, gives the merged view", async () => {
  await withTempDir(async (dir) => {
    const layers = await threeLayers(dir);
    const root = `${dir}/overlay`;
    const sn = await OverlaySnapshotter.open(root);
    try {
      // Every layer into a snapshot of its own (in reverse, as parallel unpack may), then
      // committed onto its parent in chain order.
      for (let i = layers.length - 1; i >= 0; i--) {
        const mounts = await sn.prepare(`extract-${i}`, "");
        const r = await applyLayer(streamOf(layers[i]), mounts, { overlayUpper: i > 0 });
        assert.equal(r.diffID, await sha256sum(layers[i]));
      }
      for (let i = 0; i < layers.length; i++) {
        await sn.commit(`layer-${i}`, `extract-${i}`, i > 0 ? { parent: `layer-${i - 1}` } : {});
      }
      await withTempMount(await sn.view("merged", "layer-2"), async (m) => {
        assert.deepEqual(await describeTree(m), EXPECTED_MERGED);
      });
      await assert.rejects(
        applyLayer(streamOf(layers[1]), await sn.view("ro", "layer-2"), { overlayUpper: true }),
        (e) => isKind(e, "InvalidArgument"),
      );
    } finally {
      await sn.close();
    }
  });
});

Deno.test("applyLayer() onto native snapshots applies into the bind source", async () => {
  await withTempDir(async (dir) => {
    const layers = await threeLayers(dir);
    const sn = await NativeSnapshotter.open(`${dir}/native`);
    try {
      await stack(sn, layers);
      await withTempMount(await sn.view("merged", "layer-2"), async (m) => {
        assert.deepEqual(await describeTree(m), EXPECTED_MERGED);
      });
    } finally {
      await sn.close();
    }
  });
});

Deno.test("applyTarToMounts() mounts what it cannot write directly", async () => {
  await withTempDir(async (dir) => {
    Deno.mkdirSync(`${dir}/a`);
    Deno.mkdirSync(`${dir}/b`);
    const mounts = [
      { type: "bind", source: `${dir}/a`, options: ["rbind", "rw"] },
      { type: "bind", source: `${dir}/b`, options: ["rbind", "rw"] },
    ];
    assert.equal(directTarget(mounts), null);
    const tar = await readAll(writeTar([{ header: { name: "x/y" }, body: enc.encode("z") }]));
    await applyTarToMounts(mounts, streamOf(tar));
    assert.equal(Deno.readTextFileSync(`${dir}/b/x/y`), "z");
    assert.deepEqual([...Deno.readDirSync(`${dir}/a`)], []);
    assert.deepEqual(
      directTarget([{ type: "overlay", source: "overlay", options: ["lowerdir=/l"] }]),
      null,
    );
    assert.deepEqual(
      directTarget([{
        type: "overlay",
        source: "overlay",
        options: ["upperdir=/u", "lowerdir=/a:/b"],
      }]),
      { root: "/u", options: { whiteouts: "overlay", parents: ["/a", "/b"] } },
    );
  });
});

Deno.test("applyLayer() handles a layer of 3000 small files and a 20 MB file", async () => {
  await withTempDir(async (dir) => {
    await bash(
      `
      mkdir -p src && cd src
      for d in $(seq 30); do mkdir d$d; for f in $(seq 100); do echo "$d $f" > d$d/f$f; done; done
      head -c 20000000 /dev/urandom > big
    `,
      dir,
    );
    const tar = await gnuTar(`${dir}/src`, `${dir}/l.tar`);
    const gz = await compress(tar, "gzip");
    Deno.mkdirSync(`${dir}/dst`);
    const file = await Deno.open(`${dir}/l.tar`);
    const r1 = await applyLayer(file.readable, `${dir}/dst`);
    assert.equal(r1.size, tar.length);
    assert.deepEqual(await describeTree(`${dir}/dst`), await describeTree(`${dir}/src`));
    Deno.removeSync(`${dir}/dst`, { recursive: true });
    Deno.mkdirSync(`${dir}/dst`);
    const r2 = await applyLayer(streamOf(gz, 100_000), `${dir}/dst`);
    assert.equal(r2.diffID, r1.diffID);
    assert.deepEqual(await describeTree(`${dir}/dst`), await describeTree(`${dir}/src`));
  });
});

Deno.test("applyLayerInWorker() applies a large blob in a worker as applyLayerFile() does", async () => {
  await withTempDir(async (dir) => {
    Deno.mkdirSync(`${dir}/src/sub`, { recursive: true });
    Deno.writeFileSync(`${dir}/src/big`, crypto.getRandomValues(new Uint8Array(65536)));
    const big = Deno.openSync(`${dir}/src/big`, { append: true });
    for (let i = 0; i < 80; i++) big.writeSync(crypto.getRandomValues(new Uint8Array(65536)));
    big.close();
    Deno.writeTextFileSync(`${dir}/src/sub/small`, "small\n");
    const tar = await gnuTar(`${dir}/src`, `${dir}/layer.tar`);
    assert.ok(tar.length > WORKER_MIN_BYTES);
    Deno.mkdirSync(`${dir}/a`);
    Deno.mkdirSync(`${dir}/b`);
    const inWorker = await applyLayerInWorker(`${dir}/layer.tar`, `${dir}/a`);
    const inThread = await applyLayerFile(`${dir}/layer.tar`, `${dir}/b`);
    assert.deepEqual(inWorker, inThread);
    assert.equal(inWorker.diffID, await sha256sum(tar));
    assert.deepEqual(await describeTree(`${dir}/a`), await describeTree(`${dir}/b`));
    // Errors keep their kind across the worker boundary.
    const bad = tar.slice();
    bad.set(enc.encode("garbage header!!"), 0);
    Deno.writeFileSync(`${dir}/bad.tar`, bad);
    Deno.mkdirSync(`${dir}/c`);
    await assert.rejects(
      applyLayerInWorker(`${dir}/bad.tar`, `${dir}/c`),
      (e) => isKind(e, "InvalidArgument"),
    );
    await assert.rejects(
      applyLayerInWorker(`${dir}/missing.tar`, `${dir}/c`),
      (e) => isKind(e, "NotFound"),
    );
  });
});
