/**
 * The small gaps of the images issue: `tainerd pull` as the short form of `tainerd images pull`,
 * `tainerd images ls --format json`, hostile archives on import (nothing left behind), and
 * `ctr images export` read back by umoci and skopeo.
 */

import assert from "node:assert/strict";
import { importArchive } from "../images/archive/importer.ts";
import { buildBusyboxImage, type BuiltImage } from "../images/testdata/busybox_image.ts";
import { withRegistryImage } from "../images/testdata/busybox_image.ts";
import { type TarWriterEntry, writeTar } from "../archive/tar/mod.ts";
import { isKind } from "../plugins/errdefs.ts";
import { have, run, type TestDaemon, withDaemon } from "./harness.ts";

const encoder = new TextEncoder();
const NAME = "example.com/gaps/busybox:1";

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function indexJson(img: BuiltImage, digest = img.root.desc.digest): Uint8Array {
  const { platform: _p, ...desc } = img.root.desc;
  return encoder.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [{
      ...desc,
      digest,
      annotations: {
        "io.containerd.image.name": NAME,
        "org.opencontainers.image.ref.name": "1",
      },
    }],
  }));
}

/** An OCI layout tarball of `img`, with `edit` changing its entries first. */
async function layoutTar(
  img: BuiltImage,
  edit: (entries: { name: string; data: Uint8Array }[]) => void = () => {},
): Promise<Uint8Array> {
  const entries = [
    { name: "oci-layout", data: encoder.encode('{"imageLayoutVersion":"1.0.0"}') },
    ...img.blobs.map((b) => ({ name: `blobs/sha256/${b.desc.digest.slice(7)}`, data: b.bytes })),
    { name: "index.json", data: indexJson(img) },
  ];
  edit(entries);
  const tar: TarWriterEntry[] = entries.map((e) => ({
    header: { name: e.name, size: e.data.byteLength, mode: 0o644 },
    body: e.data,
  }));
  return await collect(writeTar(tar));
}

async function assertNothingLeft(d: TestDaemon, ns: string): Promise<void> {
  let r = await d.cli(["-n", ns, "images", "ls", "-q"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "", "no image");
  r = await d.ctr(["leases", "ls", "-q"], { namespace: ns });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "", "no lease left");
  // A lease deleted with sync runs a garbage collection.
  r = await d.ctr(["leases", "create", "--id", "gc-now"], { namespace: ns });
  assert.equal(r.code, 0, r.stderr);
  r = await d.ctr(["leases", "rm", "--sync", "gc-now"], { namespace: ns });
  assert.equal(r.code, 0, r.stderr);
  r = await d.ctr(["content", "ls", "-q"], { namespace: ns });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "", "GC swept the partial import");
  r = await d.ctr(["content", "active"], { namespace: ns });
  assert.equal(r.stdout.trim().split("\n").length, 1, `no ingest left: ${r.stdout}`);
}

Deno.test("tainerd pull is images pull; images ls --format json", () =>
  withRegistryImage(({ ref, image }) =>
    withDaemon(async (d) => {
      let r = await d.cli(["pull", "--help"]);
      const short = r.stdout.replace(/tainerd pull/g, "X");
      r = await d.cli(["images", "pull", "--help"]);
      assert.equal(short, r.stdout.replace(/tainerd images pull/g, "X"), "the same options");

      r = await d.cli(["pull", "--plain-http", "--no-unpack", ref]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`layer-${image.layers[0].desc.digest}:\\s+done`));

      r = await d.cli(["images", "ls", "--format", "json"]);
      assert.equal(r.code, 0, r.stderr);
      const list = JSON.parse(r.stdout);
      assert.equal(list.length, 1);
      const [img] = list;
      assert.equal(img.name, ref);
      assert.deepEqual(img.target, {
        mediaType: image.root.desc.mediaType,
        digest: image.root.desc.digest,
        size: image.root.desc.size,
      });
      assert.deepEqual(img.labels, {});
      assert.deepEqual(img.platforms, ["linux/amd64", "linux/arm64/v8"]);
      const hostSize = [image.root, image.manifest, image.config, ...image.layers]
        .reduce((n, b) => n + b.desc.size, 0);
      assert.equal(img.size, hostSize);
      assert.ok(!isNaN(Date.parse(img.createdAt)) && !isNaN(Date.parse(img.updatedAt)));
      assert.deepEqual(Object.keys(img).sort(), [
        "createdAt",
        "labels",
        "name",
        "platforms",
        "size",
        "target",
        "updatedAt",
      ]);
      // The table is still the default.
      r = await d.cli(["images", "ls"]);
      assert.match(r.stdout, /^REF\s+TYPE\s+DIGEST\s+SIZE\s+PLATFORMS\s+LABELS\s*\n/);
      r = await d.cli(["-n", "empty", "images", "ls", "--format", "json"]);
      assert.equal(r.stdout, "[]\n");
      r = await d.cli(["images", "ls", "--format", "yaml"]);
      assert.equal(r.code, 1);
    })
  ));

Deno.test("hostile archives fail clearly on import and leave nothing behind", async () => {
  const img = await buildBusyboxImage();
  const layerName = `blobs/sha256/${img.layers[0].desc.digest.slice(7)}`;
  const good = await layoutTar(img);
  const cases: { name: string; tar: Uint8Array; kind: string; message: RegExp }[] = [
    {
      name: "dotdot",
      tar: await layoutTar(img, (e) => {
        e.find((x) => x.name === layerName)!.name = `../${layerName}`;
      }),
      kind: "InvalidArgument",
      message: /unsafe path "\.\.\/blobs\/sha256\//,
    },
    {
      name: "dotdot-inside",
      tar: await layoutTar(img, (e) => {
        e.find((x) => x.name === layerName)!.name = `blobs/../../${layerName}`;
      }),
      kind: "InvalidArgument",
      message: /unsafe path/,
    },
    {
      name: "absolute",
      tar: await layoutTar(img, (e) => {
        e.find((x) => x.name === "index.json")!.name = "/index.json";
      }),
      kind: "InvalidArgument",
      message: /unsafe path "\/index\.json"/,
    },
    {
      name: "mismatch",
      tar: await layoutTar(img, (e) => {
        const blob = e.find((x) => x.name === layerName)!;
        blob.data = blob.data.slice();
        blob.data[blob.data.length - 10] ^= 0xff;
      }),
      kind: "InvalidArgument",
      message: /digest/,
    },
    {
      name: "mismatch-size",
      tar: await layoutTar(img, (e) => {
        const blob = e.find((x) => x.name === layerName)!;
        blob.data = encoder.encode("something else entirely");
      }),
      kind: "InvalidArgument",
      message: /digest|size/,
    },
    {
      name: "missing-layer",
      tar: await layoutTar(img, (e) => {
        e.splice(e.findIndex((x) => x.name === layerName), 1);
      }),
      kind: "NotFound",
      message: new RegExp(`${img.layers[0].desc.digest}.*not in the archive`),
    },
    {
      name: "missing-root",
      tar: await layoutTar(img, (e) => {
        e.find((x) => x.name === "index.json")!.data = indexJson(img, `sha256:${"0".repeat(64)}`);
      }),
      kind: "NotFound",
      message: /not in the archive/,
    },
    {
      name: "truncated",
      tar: good.slice(0, Math.floor(good.byteLength / 2)),
      kind: "InvalidArgument",
      message: /unexpected end of data/,
    },
  ];
  await withDaemon(async (d) => {
    for (const tc of cases) {
      const file = `${d.dir}/${tc.name}.tar`;
      await Deno.writeFile(file, tc.tar);
      const r = await d.cli(["-n", tc.name, "images", "import", "--no-unpack", file]);
      assert.equal(r.code, 1, `${tc.name}: ${r.stdout}${r.stderr}`);
      assert.match(
        r.stderr,
        /^tainerd: Cannot import|^tainerd: Invalid tar/,
        `${tc.name}: ${r.stderr}`,
      );
      assert.match(r.stderr, tc.message, `${tc.name}: ${r.stderr}`);
      await assertNothingLeft(d, tc.name);
      // Through the library: the error's kind.
      const c = d.client(`${tc.name}-lib`);
      try {
        await assert.rejects(
          importArchive(c, ReadableStream.from([tc.tar])),
          (err) => isKind(err, tc.kind as "NotFound"),
          tc.name,
        );
      } finally {
        c.close();
      }
      await assertNothingLeft(d, `${tc.name}-lib`);
    }
    // The intact archive imports.
    await Deno.writeFile(`${d.dir}/good.tar`, good);
    const r = await d.cli(["images", "import", "--no-unpack", `${d.dir}/good.tar`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await d.cli(["images", "ls", "-q"])).stdout, `${NAME}\n`);
  });
});

Deno.test({
  name: "ctr images export of an imported image reads back with umoci and skopeo",
  ignore: !have("umoci") || !have("skopeo"),
  fn: async () => {
    // A multi-platform index, and a single manifest (which umoci can also stat).
    const images = [await buildBusyboxImage(), await buildBusyboxImage({ single: true })];
    const tmp = await Deno.makeTempDir({ prefix: "tainerd-gaps-" });
    try {
      await withDaemon(async (d) => {
        for (const [i, img] of images.entries()) {
          const ns = `export${i}`;
          await Deno.writeFile(`${tmp}/in${i}.tar`, await layoutTar(img));
          let r = await d.cli(["-n", ns, "images", "import", "--no-unpack", `${tmp}/in${i}.tar`]);
          assert.equal(r.code, 0, r.stderr);
          const out = `${tmp}/out${i}.tar`;
          r = await d.ctr(["images", "export", out, NAME], { namespace: ns });
          assert.equal(r.code, 0, r.stderr);

          const layout = `${tmp}/layout${i}`;
          await Deno.mkdir(layout);
          r = await run("tar", ["-C", layout, "-xf", out]);
          assert.equal(r.code, 0, r.stderr);
          r = await run("umoci", ["ls", "--layout", layout]);
          assert.equal(r.code, 0, r.stderr);
          assert.equal(r.stdout, "1\n");
          // The tag umoci lists names the imported root.
          const index = JSON.parse(await Deno.readTextFile(`${layout}/index.json`));
          assert.equal(index.manifests.length, 1);
          assert.equal(index.manifests[0].annotations["org.opencontainers.image.ref.name"], "1");
          assert.equal(index.manifests[0].digest, img.root.desc.digest);
          if (img.root === img.manifest) {
            r = await run("umoci", ["stat", "--json", "--image", `${layout}:1`]);
            assert.equal(r.code, 0, r.stderr);
            assert.ok("history" in JSON.parse(r.stdout), r.stdout); // our config has none
          }

          const env = { HOME: tmp };
          r = await run("skopeo", ["inspect", "--raw", `oci-archive:${out}`], { env });
          assert.equal(r.code, 0, r.stderr);
          assert.deepEqual(encoder.encode(r.stdout), img.root.bytes);
          r = await run("skopeo", ["inspect", `oci-archive:${out}`], { env });
          assert.equal(r.code, 0, r.stderr);
          const inspected = JSON.parse(r.stdout);
          assert.equal(inspected.Digest, img.root.desc.digest);
          assert.deepEqual(inspected.Layers, img.layers.map((l) => l.desc.digest));
        }
      });
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
