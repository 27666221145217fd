/**
 * Unpacking an image into a snapshotter over the API, as containerd's `Image.Unpack` and
 * `rootfs.ApplyLayers`: for the platform's manifest, layer by layer, the snapshot named by the
 * layer's chain ID is kept if it exists, or prepared on its parent under a unique key,
 * filled by the diff service (`Diff.Apply`), checked against the config's diff ID and
 * committed as the chain ID. The layers get `containerd.io/uncompressed` labels and the
 * config `containerd.io/gc.ref.snapshot.<snapshotter>`, which keeps the unpacked snapshot
 * alive as long as the image is.
 *
 * @module
 */

import type { Client } from "@connectrpc/connect";
import { Diff } from "../api/gen/containerd/services/diff/v1/diff_pb.ts";
import { Snapshots } from "../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import type { TainerdClient } from "../client/client.ts";
import { contentProvider, setContentLabels, withLease } from "../client/images_content.ts";
import type { ImageRecord } from "../client/images.ts";
import { failedPrecondition, isAlreadyExists, isNotFound } from "../plugins/errdefs.ts";
import {
  chainIds,
  checkLayerCount,
  type Descriptor,
  Labels,
  type ResolvedManifest,
  resolveManifest,
} from "./image.ts";
import {
  defaultPlatformMatcher,
  onlyPlatform,
  type Platform,
  type PlatformMatcher,
} from "./platforms.ts";
import type { ProgressHandler } from "./registry_options.ts";

/** The snapshotter used when none is named. */
export const DEFAULT_SNAPSHOTTER = "overlayfs";

/** Options of {@link unpack}. */
export interface UnpackOptions {
  /** The snapshotter (default {@link DEFAULT_SNAPSHOTTER}). */
  snapshotter?: string;
  /** The platform to unpack (the host's by default). */
  platform?: Platform;
  /** A matcher instead of `platform`. */
  matcher?: PlatformMatcher;
  onProgress?: ProgressHandler;
  signal?: AbortSignal;
}

/** What {@link unpack} did. */
export interface UnpackResult {
  /** The chain ID of the whole stack: the snapshot a container is prepared on. */
  chainId: string;
  /** The manifest unpacked. */
  manifest: Descriptor;
  /** The platform its config declares. */
  platform: Platform;
  snapshotter: string;
  /** How many layers were applied now (the rest existed). */
  applied: number;
  layers: number;
}

function snapshotsOf(client: TainerdClient): Client<typeof Snapshots> {
  return client.service(Snapshots);
}

function uniquePart(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(3));
  const b64 = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
  return `${(performance.now() * 1e6 % 1e9).toFixed(0)}-${b64}`;
}

function matcherOf(opts: { platform?: Platform; matcher?: PlatformMatcher }): PlatformMatcher {
  return opts.matcher ?? (opts.platform ? onlyPlatform(opts.platform) : defaultPlatformMatcher());
}

/** The target descriptor of an image or a bare descriptor. */
function targetOf(image: ImageRecord | Descriptor): Descriptor {
  return "target" in image ? image.target : image;
}

/** The manifest, config and chain ID of an image for a platform. */
export async function imageRootfs(
  client: TainerdClient,
  image: ImageRecord | Descriptor,
  opts: { platform?: Platform; matcher?: PlatformMatcher } = {},
): Promise<ResolvedManifest & { diffIds: string[]; chainId: string }> {
  const resolved = await resolveManifest(contentProvider(client), targetOf(image), matcherOf(opts));
  const ids = checkLayerCount(resolved);
  const chain = chainIds(ids);
  return { ...resolved, diffIds: ids, chainId: chain[chain.length - 1] ?? "" };
}

/** Whether the image's snapshot for the platform exists in `snapshotter`. */
export async function isUnpacked(
  client: TainerdClient,
  image: ImageRecord | Descriptor,
  opts: { snapshotter?: string; platform?: Platform; matcher?: PlatformMatcher } = {},
): Promise<boolean> {
  const { chainId } = await imageRootfs(client, image, opts);
  try {
    await snapshotsOf(client).stat({
      snapshotter: opts.snapshotter ?? DEFAULT_SNAPSHOTTER,
      key: chainId,
    });
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

async function exists(sn: Client<typeof Snapshots>, snapshotter: string, key: string) {
  try {
    await sn.stat({ snapshotter, key });
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

/** One layer to apply by {@link applyLayer}. */
export interface LayerToApply {
  layer: Descriptor;
  /** Its diff ID (from the image config). */
  diffId: string;
  /** The chain ID of the stack up to and including it. */
  chainId: string;
  /** The chain ID of its parent ("" for the first layer). */
  parent: string;
}

/**
 * Applies one layer on its (committed) parent chain: kept if the chain ID exists (or
 * appears meanwhile), else prepared under a unique key, filled by `Diff.Apply`, checked
 * against its diff ID and committed as its chain ID. Returns whether it was applied now.
 * The layer's blob must be in the content store.
 */
export async function applyLayer(
  client: TainerdClient,
  snapshotter: string,
  l: LayerToApply,
  opts: { onProgress?: ProgressHandler; signal?: AbortSignal } = {},
): Promise<boolean> {
  const sn = snapshotsOf(client);
  const { layer, chainId, parent } = l;
  opts.signal?.throwIfAborted();
  if (await exists(sn, snapshotter, chainId)) return false;
  const ref = `unpack-${layer.digest}`;
  opts.onProgress?.({ ref, desc: layer, status: "unpacking", offset: 0, total: layer.size });
  const labels = { [Labels.SnapshotRef]: chainId };
  let key = "";
  let mounts;
  for (let attempt = 1;; attempt++) {
    key = `extract-${uniquePart()} ${chainId}`;
    try {
      ({ mounts } = await sn.prepare({ snapshotter, key, parent, labels }));
      break;
    } catch (err) {
      if (!isAlreadyExists(err) || attempt >= 3) throw err;
      if (await exists(sn, snapshotter, chainId)) {
        key = "";
        break;
      }
    }
  }
  if (!key) return false;
  let committed = false;
  try {
    const { applied: result } = await client.service(Diff).apply({
      diff: {
        mediaType: layer.mediaType,
        digest: layer.digest,
        size: BigInt(layer.size),
        annotations: layer.annotations ?? {},
      },
      mounts,
    }, { signal: opts.signal });
    if (result?.digest !== l.diffId) {
      throw failedPrecondition(
        `Cannot unpack layer ${layer.digest}: its content has diff ID ${result?.digest}, the config says ${l.diffId}`,
      );
    }
    try {
      await sn.commit({ snapshotter, name: chainId, key, labels });
      committed = true;
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
  } finally {
    if (!committed) await sn.remove({ snapshotter, key }).catch(() => {});
  }
  if (committed) await setContentLabels(client, layer.digest, { [Labels.Uncompressed]: l.diffId });
  opts.onProgress?.({
    ref,
    desc: layer,
    status: "unpacked",
    offset: layer.size,
    total: layer.size,
  });
  return committed;
}

/** The layers of a resolved image, bottom first, with their diff and chain IDs. */
export function layersToApply(
  root: { manifest: { layers: Descriptor[] }; diffIds: string[] },
): LayerToApply[] {
  const chain = chainIds(root.diffIds);
  return root.manifest.layers.map((layer, i) => ({
    layer,
    diffId: root.diffIds[i],
    chainId: chain[i],
    parent: i > 0 ? chain[i - 1] : "",
  }));
}

/**
 * Labels an unpacked image's config with `containerd.io/gc.ref.snapshot.<snapshotter>` so
 * the snapshot lives as long as the image, and sums up the unpack.
 */
export async function finishUnpack(
  client: TainerdClient,
  root: ResolvedManifest & { chainId: string },
  snapshotter: string,
  applied: number,
): Promise<UnpackResult> {
  const top = root.chainId;
  if (top) {
    await setContentLabels(client, root.manifest.config.digest, {
      [`${Labels.GcSnapshotRef}${snapshotter}`]: top,
    });
  }
  return {
    chainId: top,
    manifest: root.desc,
    platform: root.platform,
    snapshotter,
    applied,
    layers: root.manifest.layers.length,
  };
}

/**
 * Unpacks an image's layers for a platform into a snapshotter (under a temporary lease
 * unless the client has one). Layers already unpacked are skipped.
 *
 * @throws {TainerdError} NotFound when the platform or content is missing;
 *   FailedPrecondition when a layer's content does not match its diff ID.
 */
export async function unpack(
  client: TainerdClient,
  image: ImageRecord | Descriptor,
  opts: UnpackOptions = {},
): Promise<UnpackResult> {
  const snapshotter = opts.snapshotter ?? DEFAULT_SNAPSHOTTER;
  return await withLease(client, async (leased) => {
    const root = await imageRootfs(leased, image, opts);
    let applied = 0;
    for (const l of layersToApply(root)) {
      if (await applyLayer(leased, snapshotter, l, opts)) applied++;
    }
    return await finishUnpack(leased, root, snapshotter, applied);
  });
}
