/**
 * The offline sandbox ("pause") image: a single-platform OCI image built in memory from
 * Debian's busybox-static, so a pod sandbox starts with no registry. It is tainerd's own image
 * under a name of its own ({@linkcode DEFAULT_SANDBOX_IMAGE}), never posing as upstream's.
 *
 * Its entrypoint behaves like Kubernetes' pause: busybox `sh` as PID 1 traps TERM and INT and
 * exits 0 on them (PID 1 ignores signals it has no handler for, so the trap is what makes
 * it stoppable), sleeps forever otherwise, and reaps the orphans reparented to it (ash waits
 * for any child).
 *
 * The build is deterministic: the same busybox binary gives the same blobs, byte for byte
 * (entries sorted, mtimes 0, owner 0:0, gzip without a timestamp, JSON keys in fixed order).
 *
 * @module
 */

import { gzipSync } from "node:zlib";
import { TarType, type TarWriterEntry, writeTar } from "../../../archive/tar/mod.ts";
import { TainerdClient } from "../../../client/client.ts";
import { withLease, writeBlob } from "../../../client/images_content.ts";
import { type ImageRecord, putImage } from "../../../client/images.ts";
import { childGcLabels, type Descriptor } from "../../../images/image.ts";
import { hostPlatform, type Platform } from "../../../images/platforms.ts";
import {
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_MANIFEST,
} from "../../../images/remote/media_types.ts";
import { unpack } from "../../../images/unpack.ts";
import { digestOf } from "../../content/digest.ts";

/** The name of the offline sandbox image (tainerd's own, not `registry.k8s.io/pause`). */
export const DEFAULT_SANDBOX_IMAGE = "tainerd.local/pause:3.10";

/** Where the busybox-static binary is taken from (Debian's `busybox-static`). */
export const DEFAULT_BUSYBOX_PATH = "/bin/busybox";

/** The label containerd's CRI puts on the sandbox image so that image GC keeps it. */
export const PINNED_LABEL = "io.cri-containerd.pinned";

/** The pause program: `sh` as PID 1, exiting 0 on TERM/INT, sleeping and reaping otherwise. */
export const PAUSE_ENTRYPOINT: readonly string[] = [
  "/bin/sh",
  "-c",
  'trap "exit 0" TERM INT; while :; do sleep 2147483647 & wait $!; done',
];

/** Busybox applets linked in the layer (the entrypoint needs `sh` and `sleep`). */
const APPLETS = ["sh", "sleep"];

/** One blob of the image: its descriptor and bytes. */
export interface PauseBlob {
  /** The blob's descriptor. */
  desc: Descriptor;
  /** The blob's bytes. */
  bytes: Uint8Array;
}

/** The built image: manifest, config and layer blobs. */
export interface PauseImage {
  /** The image manifest (the image's target). */
  manifest: PauseBlob;
  /** The image config. */
  config: PauseBlob;
  /** The one gzip layer. */
  layer: PauseBlob;
  /** The layer's uncompressed digest. */
  diffId: string;
  /** The platform the image is for (the host's). */
  platform: Platform;
}

/** Options of {@linkcode buildPauseImage}. */
export interface BuildPauseOptions {
  /** The busybox-static binary (default {@linkcode DEFAULT_BUSYBOX_PATH}). */
  busyboxPath?: string;
}

const encoder = new TextEncoder();

function blob(mediaType: string, bytes: Uint8Array): PauseBlob {
  return { desc: { mediaType, digest: digestOf(bytes), size: bytes.byteLength }, bytes };
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The layer's tar entries, sorted by name, all owned by 0:0 with mtime 0. */
function layerEntries(busybox: Uint8Array): TarWriterEntry[] {
  const base = { uid: 0, gid: 0, mtime: { sec: 0, nsec: 0 } };
  const dir = (name: string, mode = 0o755): TarWriterEntry => ({
    header: { ...base, name: `${name}/`, type: TarType.Dir, mode },
  });
  const entries: TarWriterEntry[] = [
    dir("bin"),
    {
      header: { ...base, name: "bin/busybox", type: TarType.Regular, mode: 0o755 },
      body: busybox,
    },
    ...APPLETS.map((a): TarWriterEntry => ({
      header: {
        ...base,
        name: `bin/${a}`,
        type: TarType.Symlink,
        mode: 0o777,
        linkname: "busybox",
      },
    })),
    dir("dev"),
    dir("etc"),
    dir("proc", 0o555),
    dir("sys", 0o555),
    dir("tmp", 0o1777),
  ];
  return entries.sort((a, b) => a.header.name < b.header.name ? -1 : 1);
}

/**
 * Builds the pause image for the host platform, in memory: one gzip layer holding
 * `/bin/busybox` and its `sh` and `sleep` links, a config whose `Entrypoint` is
 * {@linkcode PAUSE_ENTRYPOINT}, and an OCI manifest. Same busybox, same bytes.
 */
export async function buildPauseImage(opts: BuildPauseOptions = {}): Promise<PauseImage> {
  const busybox = await Deno.readFile(opts.busyboxPath ?? DEFAULT_BUSYBOX_PATH);
  const tar = await readAll(writeTar(layerEntries(busybox)));
  // node:zlib writes a gzip header with mtime 0 and no name: the bytes depend on input only.
  const layer = blob(MEDIA_TYPE_OCI_LAYER_GZIP, gzipSync(tar, { level: 9 }));
  const diffId = digestOf(tar);
  const platform = hostPlatform();
  const config = blob(
    MEDIA_TYPE_OCI_CONFIG,
    encoder.encode(JSON.stringify({
      created: "1970-01-01T00:00:00Z",
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: {
        User: "65535:65535",
        Env: ["PATH=/bin"],
        Entrypoint: PAUSE_ENTRYPOINT,
        WorkingDir: "/",
        Labels: { "org.opencontainers.image.title": "tainerd pause" },
      },
      rootfs: { type: "layers", diff_ids: [diffId] },
      history: [{ created: "1970-01-01T00:00:00Z", created_by: "tainerd buildPauseImage" }],
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
  return { manifest, config, layer, diffId, platform };
}

/** Options of {@linkcode importPauseImage}. */
export interface ImportPauseOptions extends BuildPauseOptions {
  /** The image name (default {@linkcode DEFAULT_SANDBOX_IMAGE}). */
  name?: string;
  /** The namespace to import into (default: the client's). */
  namespace?: string;
  /** Unpack into this snapshotter too (default: no unpacking). */
  snapshotter?: string;
  /** An image built before (default: built now). */
  image?: PauseImage;
}

/**
 * Writes the pause image's blobs into the content store (under a temporary lease; existing
 * blobs are skipped) and points the image `name` at its manifest, labelled pinned as
 * containerd's CRI labels its sandbox image; unpacks it when a snapshotter is named. Running
 * it again changes nothing.
 */
export async function importPauseImage(
  client: TainerdClient,
  opts: ImportPauseOptions = {},
): Promise<ImageRecord> {
  const image = opts.image ?? await buildPauseImage(opts);
  const own = opts.namespace !== undefined && opts.namespace !== client.namespace
    ? new TainerdClient({ address: client.address, namespace: opts.namespace })
    : null;
  const c = own ?? client;
  try {
    const record = await withLease(c, async (leased) => {
      const { layer, config, manifest } = image;
      await writeBlob(leased, `pause-layer-${layer.desc.digest}`, layer.bytes, {
        expected: layer.desc,
      });
      await writeBlob(leased, `pause-config-${config.desc.digest}`, config.bytes, {
        expected: config.desc,
      });
      await writeBlob(leased, `pause-manifest-${manifest.desc.digest}`, manifest.bytes, {
        expected: manifest.desc,
        labels: childGcLabels([config.desc, layer.desc]),
      });
      return await putImage(leased, {
        name: opts.name ?? DEFAULT_SANDBOX_IMAGE,
        target: manifest.desc,
        labels: { [PINNED_LABEL]: "pinned" },
      });
    });
    if (opts.snapshotter) await unpack(c, record, { snapshotter: opts.snapshotter });
    return record;
  } finally {
    own?.close();
  }
}
