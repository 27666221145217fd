/**
 * Test helper: a small two-platform OCI image built from scratch — gzip layers made with
 * `tar` and node:zlib, configs, manifests and an index — as descriptors plus bytes.
 *
 * @module
 */

import { gzipSync } from "node:zlib";
import { join } from "node:path";
import { digestOf } from "../../../plugins/content/digest.ts";
import type { Descriptor } from "../descriptor.ts";
import {
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_MANIFEST,
} from "../media_types.ts";

/** A blob and its descriptor. */
export interface TestBlob {
  desc: Descriptor;
  bytes: Uint8Array;
}

/** The image, in push order (children before parents) in `blobs`. */
export interface TestImage {
  index: TestBlob;
  manifests: TestBlob[];
  configs: TestBlob[];
  layers: TestBlob[];
  /** Every blob, leaves first, the index last. */
  blobs: TestBlob[];
}

const encoder = new TextEncoder();

/** A blob with its descriptor. */
export function blob(
  mediaType: string,
  data: Uint8Array,
  extra: Partial<Descriptor> = {},
): TestBlob {
  // A plain Uint8Array (node:zlib hands out Buffers, which compare differently).
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { desc: { mediaType, digest: digestOf(bytes), size: bytes.byteLength, ...extra }, bytes };
}

/** Deterministic pseudo-random bytes. */
export function pseudoRandom(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Tars a directory reproducibly with GNU tar (sorted, root-owned, mtime 0). */
export async function tarDirectory(dir: string): Promise<Uint8Array> {
  const out = await new Deno.Command("tar", {
    args: [
      "--sort=name",
      "--owner=0",
      "--group=0",
      "--numeric-owner",
      "--mtime=@0",
      "-C",
      dir,
      "-cf",
      "-",
      ".",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`tar failed: ${new TextDecoder().decode(out.stderr)}`);
  return out.stdout;
}

/** Builds the image (linux/amd64 and linux/arm64, one layer each, ~200 KiB of data each). */
export async function buildTestImage(): Promise<TestImage> {
  const platforms = [
    { os: "linux", architecture: "amd64" },
    { os: "linux", architecture: "arm64", variant: "v8" },
  ];
  const layers: TestBlob[] = [];
  const configs: TestBlob[] = [];
  const manifests: TestBlob[] = [];
  for (const [i, platform] of platforms.entries()) {
    const dir = await Deno.makeTempDir({ prefix: "tainerd-layer-" });
    try {
      await Deno.writeTextFile(join(dir, "hello.txt"), `hello from ${platform.architecture}\n`);
      await Deno.mkdir(join(dir, "bin"));
      await Deno.writeFile(join(dir, "bin", "data"), pseudoRandom(200 * 1024, i + 7));
      const tar = await tarDirectory(dir);
      const layer = blob(MEDIA_TYPE_OCI_LAYER_GZIP, gzipSync(tar));
      const config = blob(
        MEDIA_TYPE_OCI_CONFIG,
        encoder.encode(JSON.stringify({
          architecture: platform.architecture,
          os: platform.os,
          ...(platform.variant ? { variant: platform.variant } : {}),
          config: { Cmd: ["/bin/sh"] },
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
        { platform },
      );
      layers.push(layer);
      configs.push(config);
      manifests.push(manifest);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  const index = blob(
    MEDIA_TYPE_OCI_INDEX,
    encoder.encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_OCI_INDEX,
      manifests: manifests.map((m) => m.desc),
    })),
  );
  // Manifest descriptors pushed on their own carry no platform.
  const bare = manifests.map((m) => {
    const { platform: _platform, ...desc } = m.desc;
    return { ...m, desc };
  });
  return {
    index,
    manifests: bare,
    configs,
    layers,
    blobs: [...layers, ...configs, ...bare, index],
  };
}

/** Reads a whole stream. */
export async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of stream) {
    chunks.push(chunk);
    size += chunk.byteLength;
  }
  const out = new Uint8Array(size);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}
