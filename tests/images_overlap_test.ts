/**
 * Pull and unpack overlap: layer i is applied as soon as it is fetched and layers 0..i-1 are
 * committed, while later layers keep downloading; every guarantee of a pull then an unpack
 * holds (diff IDs checked, existing chains reused, a failure leaves no image nor lease).
 */

import assert from "node:assert/strict";
import { Snapshots } from "../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import { contentInfo } from "../client/images_content.ts";
import { getImage } from "../client/images.ts";
import { chainIds } from "../images/image.ts";
import { pull } from "../images/pull.ts";
import type { ProgressEvent } from "../images/registry_options.ts";
import { startRegistry } from "../images/remote/testdata/registry.ts";
import {
  blob,
  buildBusyboxImage,
  canUnpack,
  pushBuiltImage,
  withRegistryImage,
} from "../images/testdata/busybox_image.ts";
import { isKind } from "../plugins/errdefs.ts";
import { withDaemon } from "./harness.ts";

const encoder = new TextEncoder();

Deno.test("pull with unpack applies the first layer while the last one downloads", () =>
  withRegistryImage(({ ref, image }) =>
    withDaemon(async (d) => {
      const c = d.client();
      try {
        if (!(await canUnpack(c))) {
          console.warn("SKIPPED: the daemon has no snapshots/diff plugins");
          return;
        }
        const events: ProgressEvent[] = [];
        const first = image.layers[0].desc.digest;
        const last = image.layers[image.layers.length - 1].desc.digest;
        const r = await pull(c, ref, {
          plainHttp: true,
          unpack: { snapshotter: "overlayfs" },
          onProgress: (e) => events.push(e),
        });
        const at = (status: string, digest: string) =>
          events.findIndex((e) => e.status === status && e.desc?.digest === digest);
        assert.ok(at("unpacking", first) >= 0, "the first layer was applied");
        assert.ok(at("done", last) >= 0, "the last layer was downloaded");
        assert.ok(
          at("unpacking", first) < at("done", last),
          "the first layer's apply started before the last layer finished downloading",
        );
        // Commits stay in chain order (overlayfs applies layers in parallel).
        assert.ok(at("unpacked", first) < at("unpacked", last));

        const chain = chainIds(image.diffIds);
        assert.equal(r.unpacked.length, 1);
        assert.equal(r.unpacked[0].chainId, chain[chain.length - 1]);
        assert.equal(r.unpacked[0].applied, image.layers.length);
        assert.equal(r.unpacked[0].manifest.digest, image.manifest.desc.digest);
        const img = await getImage(c, ref);
        assert.equal(img.target.digest, image.root.desc.digest);
        const sn = c.service(Snapshots);
        const top = await sn.stat({ snapshotter: "overlayfs", key: chain[chain.length - 1] });
        assert.equal(top.info?.parent, chain[chain.length - 2]);
        const config = await contentInfo(c, image.config.desc.digest);
        assert.equal(
          config?.labels["containerd.io/gc.ref.snapshot.overlayfs"],
          chain[chain.length - 1],
        );
        const layer = await contentInfo(c, first);
        assert.equal(layer?.labels["containerd.io/uncompressed"], image.diffIds[0]);
        assert.deepEqual((await c.leases.list({ filters: [] })).leases, [], "the lease is gone");

        // Pulled again under another name: every chain exists and is reused.
        const again = await pull(c, ref, { plainHttp: true, unpack: true, name: "again:1" });
        assert.equal(again.unpacked[0].applied, 0);
        assert.equal(again.unpacked[0].chainId, chain[chain.length - 1]);
      } finally {
        c.close();
      }
    }), { extraBytes: 48 << 20 }));

Deno.test("a layer whose diff ID is wrong fails the pull: no image, no lease, no snapshot", async () => {
  const registry = await startRegistry();
  try {
    const good = await buildBusyboxImage({ single: true, extraBytes: 8 << 20 });
    // The same layers with a config that lies about the second layer's diff ID.
    const diffIds = [good.diffIds[0], `sha256:${"0".repeat(64)}`];
    const cfg = JSON.parse(new TextDecoder().decode(good.config.bytes));
    cfg.rootfs.diff_ids = diffIds;
    const config = blob(good.config.desc.mediaType, encoder.encode(JSON.stringify(cfg)));
    const manifest = blob(
      good.manifest.desc.mediaType,
      encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: good.manifest.desc.mediaType,
        config: config.desc,
        layers: good.layers.map((l) => l.desc),
      })),
    );
    const ref = `${registry.host}/test/bad:1`;
    await pushBuiltImage({
      ...good,
      root: manifest,
      manifest,
      config,
      diffIds,
      blobs: [...good.layers, config, manifest],
    }, ref);
    await withDaemon(async (d) => {
      const c = d.client();
      try {
        if (!(await canUnpack(c))) {
          console.warn("SKIPPED: the daemon has no snapshots/diff plugins");
          return;
        }
        await assert.rejects(
          pull(c, ref, { plainHttp: true, unpack: true }),
          (err) => isKind(err, "FailedPrecondition") && /diff ID/.test(String(err)),
        );
        await assert.rejects(getImage(c, ref), (err) => isKind(err, "NotFound"));
        assert.deepEqual((await c.leases.list({ filters: [] })).leases, [], "the lease is gone");
        // Nothing references what the pull wrote: a collection removes every snapshot.
        await c.leases.create({ id: "gc-now" });
        await c.leases.delete({ id: "gc-now", sync: true });
        const keys: string[] = [];
        for await (const resp of c.service(Snapshots).list({ snapshotter: "overlayfs" })) {
          for (const i of resp.info) keys.push(i.name);
        }
        assert.deepEqual(keys, []);
        // The CLI reports it and writes no image either.
        const r = await d.cli(["images", "pull", "--plain-http", ref]);
        assert.equal(r.code, 1);
        assert.match(r.stderr, /diff ID/);
        await assert.rejects(getImage(c, ref), (err) => isKind(err, "NotFound"));
      } finally {
        c.close();
      }
    });
  } finally {
    await registry.stop();
  }
});
