/**
 * Parallel unpack on overlayfs (containerd 2.1's, with the snapshotter's `rebase`): layers
 * whose parents are not committed yet are applied into parentless snapshots (overlay
 * whiteouts in their own upper dirs) and committed onto their parents in chain order. The
 * result is the same tree as the sequential path; a bad layer leaves no active snapshot;
 * committed lower chains are reused; the real `ctr run` runs the image.
 */

import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { join } from "node:path";
import { Kind, Snapshots } from "../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import type { TainerdClient } from "../client/client.ts";
import { withLease } from "../client/images_content.ts";
import { digestOf } from "../plugins/content/digest.ts";
import { chainIds } from "../images/image.ts";
import { pull } from "../images/pull.ts";
import { hostPlatform } from "../images/platforms.ts";
import type { ProgressEvent } from "../images/registry_options.ts";
import {
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_MANIFEST,
} from "../images/remote/media_types.ts";
import { startRegistry } from "../images/remote/testdata/registry.ts";
import {
  blob,
  type BuiltImage,
  canUnpack,
  pseudoRandom,
  pushBuiltImage,
  tarDirectory,
} from "../images/testdata/busybox_image.ts";
import { canRebase, unpack } from "../images/unpack.ts";
import { isKind } from "../plugins/errdefs.ts";
import { describeTree } from "../snapshots/test_helpers.ts";
import { mountinfo } from "../sys/mountinfo.ts";
import { withTempMount } from "../sys/mount.ts";
import { busyboxRootfs } from "./fixtures.ts";
import { delay, type TestDaemon, withDaemon } from "./harness.ts";

const encoder = new TextEncoder();

type Tree = Record<string, string | null>;

/** Writes `tree` under `dir`: a path ending in "/" is a directory, null an empty file. */
async function writeTree(dir: string, tree: Tree): Promise<void> {
  for (const [path, content] of Object.entries(tree)) {
    const p = join(dir, path);
    if (path.endsWith("/")) {
      await Deno.mkdir(p, { recursive: true });
      continue;
    }
    await Deno.mkdir(join(p, ".."), { recursive: true });
    await Deno.writeTextFile(p, content ?? "");
  }
}

/**
 * The layers above busybox: files added, whiteouts (`.wh.<name>`) and opaque directories
 * (`.wh..wh..opq`) across layers, directories re-created after a whiteout.
 */
const UPPER_LAYERS: Tree[] = [
  {
    "data/a/f1": "one\n",
    "data/a/f2": "two\n",
    "data/b/x": "x\n",
    "data/b/sub/y": "y\n",
    "data/c/deep/file": "deep\n",
    "data/keep": "keep\n",
    "etc/motd": "layer 1\n",
  },
  {
    "data/a/.wh.f1": null,
    "data/b/.wh..wh..opq": null,
    "data/b/z": "z after opaque\n",
    "data/c/deep/more": "more\n",
    "etc/motd": "layer 2\n",
  },
  {
    "data/.wh.c": null,
    "data/a/f1": "one again\n",
    "data/new/": null,
    "data/new/n": "n\n",
  },
  {
    "data/a/.wh..wh..opq": null,
    "data/a/g": "g\n",
    "data/c/": null,
    "data/c/recreated": "recreated\n",
    "data/b/.wh.z": null,
    "etc/motd": "parallel\n",
  },
];

interface TestImage extends BuiltImage {
  ref: string;
}

/** Builds busybox + {@link UPPER_LAYERS} (the first `count` layers) and pushes it as `ref`. */
async function buildImage(
  host: string,
  name: string,
  opts: { count?: number; badDiffId?: number } = {},
): Promise<TestImage> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-parallel-" });
  try {
    const tars = [await tarDirectory(await busyboxRootfs(dir))];
    for (const [i, tree] of UPPER_LAYERS.entries()) {
      const d = join(dir, `layer${i + 1}`);
      await Deno.mkdir(d);
      await writeTree(d, tree);
      tars.push(await tarDirectory(d));
    }
    const used = tars.slice(0, opts.count ?? tars.length);
    const layers = used.map((t) => blob(MEDIA_TYPE_OCI_LAYER_GZIP, gzipSync(t, { level: 1 })));
    const diffIds = used.map((t) => digestOf(t));
    const configIds = diffIds.map((d, i) =>
      i === opts.badDiffId ? digestOf(encoder.encode(`not layer ${i}`)) : d
    );
    const platform = hostPlatform();
    const config = blob(
      MEDIA_TYPE_OCI_CONFIG,
      encoder.encode(JSON.stringify({
        architecture: platform.architecture,
        os: platform.os,
        ...(platform.variant ? { variant: platform.variant } : {}),
        config: { Cmd: ["/bin/sh"] },
        rootfs: { type: "layers", diff_ids: configIds },
      })),
    );
    const manifest = blob(
      MEDIA_TYPE_OCI_MANIFEST,
      encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA_TYPE_OCI_MANIFEST,
        config: config.desc,
        layers: layers.map((l) => l.desc),
      })),
    );
    const image: BuiltImage = {
      root: manifest,
      manifest,
      config,
      layers,
      diffIds: configIds,
      blobs: [...layers, config, manifest],
      platforms: [platform],
    };
    const ref = `${host}/test/${name}:1`;
    await pushBuiltImage(image, ref);
    return { ...image, ref };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** The snapshots of a namespace: name → kind, parent. */
async function snapshotsOf(c: TainerdClient) {
  const out = new Map<string, { kind: Kind; parent: string }>();
  for await (
    const r of c.service(Snapshots).list({ snapshotter: "overlayfs", filters: [] })
  ) {
    for (const i of r.info) out.set(i.name, { kind: i.kind, parent: i.parent });
  }
  return out;
}

/** The merged tree of the committed snapshot `name`, through a view mounted here. */
function treeOf(client: TainerdClient, name: string): Promise<string[]> {
  return withLease(client, async (c) => {
    const sn = c.service(Snapshots);
    const key = `view-${crypto.randomUUID()}`;
    const { mounts } = await sn.view({ snapshotter: "overlayfs", key, parent: name });
    try {
      return await withTempMount(
        mounts.map((m) => ({ type: m.type, source: m.source, options: [...m.options] })),
        (root) => describeTree(root),
      );
    } finally {
      await sn.remove({ snapshotter: "overlayfs", key });
    }
  });
}

function mountsUnder(d: TestDaemon): string[] {
  return mountinfo((m) => m.mountpoint.startsWith(d.dir)).map((m) => m.mountpoint);
}

/** Runs `fn` with a registry, a daemon, and a client, skipping where overlayfs cannot unpack. */
async function withSetup(
  fn: (a: { d: TestDaemon; host: string; client: (ns: string) => TainerdClient }) => Promise<void>,
): Promise<void> {
  const registry = await startRegistry();
  try {
    await withDaemon(async (d) => {
      const clients: TainerdClient[] = [];
      const client = (ns: string) => {
        const c = d.client(ns);
        clients.push(c);
        return c;
      };
      try {
        const c = client("default");
        if (!(await canUnpack(c)) || !(await canRebase(c, "overlayfs"))) {
          console.warn("SKIPPED: the daemon cannot unpack into overlayfs");
          return;
        }
        await fn({ d, host: registry.host, client });
      } finally {
        for (const c of clients) c.close();
      }
    });
  } finally {
    await registry.stop();
  }
}

Deno.test("parallel unpack on overlayfs gives the sequential path's tree", () =>
  withSetup(async ({ d, host, client }) => {
    const img = await buildImage(host, "layers");
    assert.equal(img.layers.length, 5);
    const chain = chainIds(img.diffIds);
    const top = chain[chain.length - 1];
    const trees: Record<string, string[]> = {};
    for (const [ns, concurrency] of [["seq", 1], ["par", 3]] as const) {
      const c = client(ns);
      await pull(c, img.ref, { plainHttp: true });
      const events: ProgressEvent[] = [];
      const r = await unpack(c, img.root.desc, {
        concurrency,
        onProgress: (e) => events.push(e),
      });
      assert.equal(r.chainId, top);
      assert.equal(r.applied, 5);
      assert.equal(r.layers, 5);
      const at = (status: string, i: number) =>
        events.findIndex((e) =>
          e.status === status && e.desc?.digest === img.layers[i].desc.digest
        );
      for (let i = 1; i < 5; i++) assert.ok(at("unpacked", i - 1) < at("unpacked", i));
      if (concurrency > 1) {
        // Layers 1 and 2 started before layer 0 was committed: they were rebased.
        assert.ok(at("unpacking", 2) < at("unpacked", 0), "applied in parallel");
      } else {
        assert.ok(at("unpacked", 0) < at("unpacking", 1), "applied one after another");
      }
      // The same chain of committed snapshots, with nothing else left.
      const snaps = await snapshotsOf(c);
      assert.deepEqual([...snaps.keys()].sort(), [...chain].sort());
      for (const [i, id] of chain.entries()) {
        assert.equal(snaps.get(id)?.kind, Kind.COMMITTED);
        assert.equal(snaps.get(id)?.parent, i > 0 ? chain[i - 1] : "");
      }
      trees[ns] = await treeOf(c, top);
    }
    assert.deepEqual(trees.par, trees.seq);
    const motd = trees.par.find((l) => l.startsWith("etc/motd "));
    assert.ok(motd?.includes(`sha=${digestOf(encoder.encode("parallel\n")).slice(7, 19)}`));
    const data = trees.par.filter((l) => l.startsWith("data/")).map((l) => l.split(" ")[0]);
    assert.deepEqual(data, [
      "data/a",
      "data/a/g",
      "data/b",
      "data/c",
      "data/c/recreated",
      "data/keep",
      "data/new",
      "data/new/n",
    ]);
    assert.ok(!trees.par.some((l) => l.includes(".wh.")), "no OCI whiteout is left");
    assert.deepEqual(mountsUnder(d), []);
  }));

Deno.test("parallel unpack: a bad layer in the middle fails clearly and leaves no active snapshot", () =>
  withSetup(async ({ d, host, client }) => {
    const img = await buildImage(host, "bad", { badDiffId: 2 });
    const c = client("bad");
    await pull(c, img.ref, { plainHttp: true });
    const chain = chainIds(img.diffIds);
    const err = await unpack(c, img.root.desc, { concurrency: 3 }).then(
      () => assert.fail("unpack succeeded"),
      (e) => e,
    );
    assert.ok(isKind(err, "FailedPrecondition"), String(err));
    assert.match(
      String(err.message),
      new RegExp(`Cannot unpack layer ${img.layers[2].desc.digest}: its content has diff ID`),
    );
    const snaps = await snapshotsOf(c);
    for (const [name, s] of snaps) {
      assert.equal(s.kind, Kind.COMMITTED, `${name} is not committed`);
    }
    // Only good lower layers (below the bad one) may stay, as after a sequential failure.
    const kept = [...snaps.keys()];
    assert.ok(kept.every((n) => chain.indexOf(n) >= 0 && chain.indexOf(n) < 2), kept.join());
    assert.deepEqual(mountsUnder(d), []);
  }));

Deno.test("parallel unpack reuses the committed lower chain", () =>
  withSetup(async ({ d, host, client }) => {
    const lower = await buildImage(host, "lower", { count: 3 });
    const full = await buildImage(host, "full");
    const c = client("reuse");
    await pull(c, lower.ref, { plainHttp: true, unpack: { concurrency: 3 } });
    const chain = chainIds(full.diffIds);
    const before = await c.service(Snapshots).stat({ snapshotter: "overlayfs", key: chain[2] });
    const r = await pull(c, full.ref, { plainHttp: true, unpack: { concurrency: 3 } });
    assert.equal(r.unpacked[0].applied, 2);
    assert.equal(r.unpacked[0].chainId, chain[4]);
    const after = await c.service(Snapshots).stat({ snapshotter: "overlayfs", key: chain[2] });
    assert.deepEqual(after.info?.createdAt, before.info?.createdAt);
    const snaps = await snapshotsOf(c);
    assert.deepEqual([...snaps.keys()].sort(), [...chain].sort());
    assert.equal(snaps.get(chain[3])?.parent, chain[2]);
    // Unpacking again applies nothing.
    const again = await unpack(c, full.root.desc, { concurrency: 3 });
    assert.equal(again.applied, 0);
    assert.deepEqual(mountsUnder(d), []);
  }));

Deno.test("the real ctr runs an image pulled with a parallel unpack", () =>
  withSetup(async ({ d, host, client }) => {
    const img = await buildImage(host, "run");
    const c = client("default");
    const events: ProgressEvent[] = [];
    const r = await pull(c, img.ref, {
      plainHttp: true,
      unpack: { snapshotter: "overlayfs", concurrency: 3 },
      onProgress: (e) => events.push(e),
    });
    assert.equal(r.unpacked[0].applied, 5);
    let out = await d.ctr(["run", "--rm", img.ref, "p1", "cat", "/etc/motd", "/data/a/g"]);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, "parallel\ng\n");
    out = await d.ctr(["run", "--rm", img.ref, "p2", "sh", "-c", "ls -A /data/a /data/b /data/c"]);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, "/data/a:\ng\n\n/data/b:\n\n/data/c:\nrecreated\n");
    assert.deepEqual(mountsUnder(d), []);
  }));

Deno.test("the daemon answers Version while a large layer is applied (in a worker)", () =>
  withSetup(async ({ host, client }) => {
    // ~10k small files and 64 MiB of data: seconds of decompression, tar parsing and syscalls.
    const dir = await Deno.makeTempDir({ prefix: "tainerd-large-" });
    let img: BuiltImage;
    try {
      for (let i = 0; i < 50; i++) {
        const d = join(dir, "rootfs", `d${i}`);
        await Deno.mkdir(d, { recursive: true });
        for (let j = 0; j < 200; j++) {
          await Deno.writeFile(join(d, `f${j}`), pseudoRandom(1024, i * 1000 + j));
        }
      }
      await Deno.writeFile(join(dir, "rootfs", "big"), pseudoRandom(64 << 20, 3));
      const tar = await tarDirectory(join(dir, "rootfs"));
      img = singleLayerImage(tar);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
    const ref = `${host}/test/large:1`;
    await pushBuiltImage(img, ref);
    const c = client("large");
    await pull(c, ref, { plainHttp: true });
    const started = Promise.withResolvers<void>();
    let finished = false;
    const applying = unpack(c, img.root.desc, {
      onProgress: (e) => e.status === "unpacking" && started.resolve(),
    }).finally(() => finished = true);
    await Promise.race([started.promise, applying]);
    let answered = 0;
    while (!finished) {
      await c.version.version({});
      if (!finished) answered++;
      await delay(20);
    }
    const r = await applying;
    assert.equal(r.applied, 1);
    assert.ok(answered >= 1, "Version answered while the layer was being applied");
    console.log(`Version answered ${answered} times during the apply`);
  }));

/** A one-layer image of `tar` for the host platform. */
function singleLayerImage(tar: Uint8Array): BuiltImage {
  const layer = blob(MEDIA_TYPE_OCI_LAYER_GZIP, gzipSync(tar, { level: 1 }));
  const platform = hostPlatform();
  const config = blob(
    MEDIA_TYPE_OCI_CONFIG,
    encoder.encode(JSON.stringify({
      architecture: platform.architecture,
      os: platform.os,
      rootfs: { type: "layers", diff_ids: [digestOf(tar)] },
    })),
  );
  const manifest = blob(
    MEDIA_TYPE_OCI_MANIFEST,
    encoder.encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_OCI_MANIFEST,
      config: config.desc,
      layers: [layer.desc],
    })),
  );
  return {
    root: manifest,
    manifest,
    config,
    layers: [layer],
    diffIds: [digestOf(tar)],
    blobs: [layer, config, manifest],
    platforms: [platform],
  };
}
