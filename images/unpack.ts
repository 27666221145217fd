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

import { create } from "@bufbuild/protobuf";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { Diff } from "../api/gen/containerd/services/diff/v1/diff_pb.ts";
import { Snapshots } from "../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import type { Mount } from "../api/gen/containerd/types/mount_pb.ts";
import { OVERLAY_UPPER_PAYLOAD } from "../diff/apply.ts";
import { REBASE_CAPABILITY } from "../snapshots/snapshotter.ts";
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
import { type ProgressHandler, Semaphore } from "./registry_options.ts";

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
  /**
   * Layers applied at once where the snapshotter can rebase (overlayfs; default
   * {@link DEFAULT_UNPACK_CONCURRENCY}); 1 applies them one after another, as before.
   */
  concurrency?: number;
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

/** The snapshot a layer is being applied into. */
interface Extraction {
  key: string;
  mounts: Mount[];
}

/**
 * Prepares the active snapshot layer `l` is applied into, on `parent`, under a unique key
 * labelled with its chain ID; undefined when the chain ID exists (or appears meanwhile).
 */
async function prepareExtraction(
  sn: Client<typeof Snapshots>,
  snapshotter: string,
  l: LayerToApply,
  parent: string,
): Promise<Extraction | undefined> {
  const labels = { [Labels.SnapshotRef]: l.chainId };
  for (let attempt = 1;; attempt++) {
    const key = `extract-${uniquePart()} ${l.chainId}`;
    try {
      const { mounts } = await sn.prepare({ snapshotter, key, parent, labels });
      return { key, mounts };
    } catch (err) {
      if (!isAlreadyExists(err) || attempt >= 3) throw err;
      if (await exists(sn, snapshotter, l.chainId)) return undefined;
    }
  }
}

/** Fills an extraction with the layer by `Diff.Apply` and checks its diff ID. */
async function applyDiff(
  client: TainerdClient,
  l: LayerToApply,
  x: Extraction,
  overlayUpper: boolean,
  signal: AbortSignal | undefined,
): Promise<void> {
  const { layer } = l;
  const { applied: result } = await client.service(Diff).apply({
    diff: {
      mediaType: layer.mediaType,
      digest: layer.digest,
      size: BigInt(layer.size),
      annotations: layer.annotations ?? {},
    },
    mounts: x.mounts,
    payloads: overlayUpper ? { [OVERLAY_UPPER_PAYLOAD]: create(AnySchema, {}) } : {},
  }, { signal });
  if (result?.digest !== l.diffId) {
    throw failedPrecondition(
      `Cannot unpack layer ${layer.digest}: its content has diff ID ${result?.digest}, the config says ${l.diffId}`,
    );
  }
}

/**
 * Commits an extraction as the layer's chain ID (onto `rebaseOnto` when it was prepared
 * without its parent); false when the chain ID appeared meanwhile. The extraction is removed
 * unless committed.
 */
async function commitExtraction(
  client: TainerdClient,
  snapshotter: string,
  l: LayerToApply,
  x: Extraction,
  rebaseOnto?: string,
): Promise<boolean> {
  const sn = snapshotsOf(client);
  const labels = { [Labels.SnapshotRef]: l.chainId };
  let committed = false;
  try {
    await sn.commit({ snapshotter, name: l.chainId, key: x.key, labels, parent: rebaseOnto });
    committed = true;
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
  } finally {
    if (!committed) await removeQuietly(sn, snapshotter, x.key);
  }
  if (committed) {
    await setContentLabels(client, l.layer.digest, { [Labels.Uncompressed]: l.diffId });
  }
  return committed;
}

async function removeQuietly(sn: Client<typeof Snapshots>, snapshotter: string, key: string) {
  await sn.remove({ snapshotter, key }).catch(() => {});
}

function progress(
  opts: { onProgress?: ProgressHandler },
  l: LayerToApply,
  status: "unpacking" | "unpacked",
) {
  const { layer } = l;
  opts.onProgress?.({
    ref: `unpack-${layer.digest}`,
    desc: layer,
    status,
    offset: status === "unpacked" ? layer.size : 0,
    total: layer.size,
  });
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
  opts.signal?.throwIfAborted();
  if (await exists(sn, snapshotter, l.chainId)) return false;
  progress(opts, l, "unpacking");
  const x = await prepareExtraction(sn, snapshotter, l, l.parent);
  if (!x) return false;
  try {
    await applyDiff(client, l, x, false, opts.signal);
  } catch (err) {
    await removeQuietly(sn, snapshotter, x.key);
    throw err;
  }
  const committed = await commitExtraction(client, snapshotter, l, x);
  progress(opts, l, "unpacked");
  return committed;
}

/** Options of {@link applyLayers}. */
export interface ApplyLayersOptions {
  /**
   * Layers applied at once when the snapshotter can rebase (default
   * {@link DEFAULT_UNPACK_CONCURRENCY}); 1 applies them one after another.
   */
  concurrency?: number;
  /** Resolves when the layer's blob is in the content store (pull: once downloaded). */
  ready?: (l: LayerToApply) => Promise<void>;
  onProgress?: ProgressHandler;
  signal?: AbortSignal;
}

/** How many layers {@link applyLayers} applies at once by default. */
export const DEFAULT_UNPACK_CONCURRENCY = 3;

/**
 * Whether `snapshotter` has the `rebase` capability (Introspection), as containerd 2.1's
 * unpacker asks before unpacking layers in parallel.
 */
export async function canRebase(client: TainerdClient, snapshotter: string): Promise<boolean> {
  try {
    const { plugins } = await client.introspection.plugins({
      filters: [`type==io.containerd.snapshotter.v1,id==${snapshotter}`],
    });
    return plugins.some((p) => !p.initErr && p.capabilities.includes(REBASE_CAPABILITY));
  } catch {
    return false;
  }
}

/**
 * Applies an image's layers (bottom first, from {@link layersToApply}) and returns how many
 * were applied now. Where the snapshotter can rebase ({@link canRebase}: overlayfs) and
 * `concurrency` > 1, as containerd 2.1's parallel unpack: the chain IDs that exist are kept;
 * each missing layer whose parent is not committed yet is prepared without a parent (its own
 * upper dir), filled with overlayfs whiteouts ({@link OVERLAY_UPPER_PAYLOAD}) and checked
 * while lower layers are still being applied, then committed onto its parent once that is
 * committed (`CommitSnapshotRequest.parent`); a layer whose parent is committed is applied as
 * {@link applyLayer} does. At most `concurrency` layers are applied at once; commits stay in
 * chain order. Otherwise the layers are applied one after another with {@link applyLayer}.
 *
 * A failure aborts the layers in progress, removes every snapshot not committed (the
 * committed lower layers stay, as after a sequential failure) and is thrown once all have
 * stopped: the first failure, not the aborts that follow.
 */
export async function applyLayers(
  client: TainerdClient,
  snapshotter: string,
  layers: readonly LayerToApply[],
  opts: ApplyLayersOptions = {},
): Promise<number> {
  const concurrency = Math.floor(opts.concurrency ?? DEFAULT_UNPACK_CONCURRENCY);
  if (concurrency <= 1 || layers.length < 2 || !(await canRebase(client, snapshotter))) {
    let applied = 0;
    for (const l of layers) {
      await opts.ready?.(l);
      if (await applyLayer(client, snapshotter, l, opts)) applied++;
    }
    return applied;
  }
  const sn = snapshotsOf(client);
  // A committed chain ID implies its parents: keep the longest committed prefix.
  let start = 0;
  for (let i = layers.length - 1; i >= 0; i--) {
    opts.signal?.throwIfAborted();
    if (await exists(sn, snapshotter, layers[i].chainId)) {
      start = i + 1;
      break;
    }
  }
  const todo = layers.slice(start);
  if (todo.length === 0) return 0;

  const controller = new AbortController();
  const signal = controller.signal;
  const onAbort = () => controller.abort(opts.signal?.reason);
  opts.signal?.addEventListener("abort", onAbort);
  if (opts.signal?.aborted) onAbort();
  let failure: { error: unknown } | undefined;
  const fail = (error: unknown) => {
    if (!failure) {
      failure = { error };
      controller.abort(error);
    }
  };
  const limiter = new Semaphore(concurrency);
  const committed = todo.map(() => Promise.withResolvers<boolean>());
  const isCommitted = todo.map(() => false);

  const one = async (j: number): Promise<boolean> => {
    const l = todo[j];
    await opts.ready?.(l);
    signal.throwIfAborted();
    let x: Extraction | undefined;
    let rebase = false;
    await limiter.acquire();
    try {
      signal.throwIfAborted();
      // Prepared on its parent when that is committed already, else on nothing.
      rebase = j > 0 && !isCommitted[j - 1];
      progress(opts, l, "unpacking");
      x = await prepareExtraction(sn, snapshotter, l, rebase ? "" : l.parent);
      if (!x) return false;
      await applyDiff(client, l, x, rebase, signal);
    } catch (err) {
      if (x) await removeQuietly(sn, snapshotter, x.key);
      throw err;
    } finally {
      limiter.release();
    }
    try {
      if (j > 0) await committed[j - 1].promise;
      signal.throwIfAborted();
    } catch (err) {
      await removeQuietly(sn, snapshotter, x.key);
      throw err;
    }
    const now = await commitExtraction(client, snapshotter, l, x, rebase ? l.parent : undefined);
    progress(opts, l, "unpacked");
    return now;
  };

  const tasks = todo.map(async (_, j) => {
    try {
      const now = await one(j);
      isCommitted[j] = true;
      committed[j].resolve(now);
      return now;
    } catch (err) {
      fail(err);
      committed[j].reject(err);
      throw err;
    }
  });
  for (const c of committed) c.promise.catch(() => {});
  const results = await Promise.allSettled(tasks);
  opts.signal?.removeEventListener("abort", onAbort);
  if (failure) throw failure.error;
  return results.filter((r) => r.status === "fulfilled" && r.value).length;
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
    const applied = await applyLayers(leased, snapshotter, layersToApply(root), opts);
    return await finishUnpack(leased, root, snapshotter, applied);
  });
}
