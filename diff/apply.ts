/**
 * Applying a layer blob onto a directory or onto snapshot mounts, as containerd's
 * `diff/apply` (the `fsApplier`): the blob is decompressed (gzip, zstd or none, found from the
 * magic bytes; the media type must be a layer type), its uncompressed digest (the diff ID) and
 * size are computed while it streams, and the tar is applied with {@link applyTar}.
 *
 * Onto mounts, as containerd on Linux: a single overlay mount with an upper dir is applied
 * straight into the upper dir, with overlayfs whiteouts and the lower dirs as parents; a
 * single read-write bind mount straight into its source; anything else is mounted on a
 * temporary directory first.
 *
 * @module
 */

import { Digester } from "../plugins/content/digest.ts";
import { type Mount, withTempMount } from "../sys/mount.ts";
import { applyTar, type ApplyTarOptions, type ApplyTarResult } from "./apply_tar.ts";
import { type Compression, decompressStream } from "./compression.ts";

/** Options of {@link applyLayer}. */
export interface ApplyLayerOptions {
  /** The layer's media type (checked to be a supported layer type). */
  mediaType?: string;
  /** Aborts the application (the target is left partly applied). */
  signal?: AbortSignal;
}

/** What {@link applyLayer} returns, as the descriptor containerd's `Apply` returns. */
export interface ApplyLayerResult {
  /** `sha256:` digest of the uncompressed tar: the layer's diff ID. */
  diffID: string;
  /** Size of the uncompressed tar in bytes. */
  size: number;
  /** The compression the blob had. */
  compression: Compression;
}

function option(m: Mount, key: string): string | undefined {
  const o = (m.options ?? []).find((o) => o.startsWith(key + "="));
  return o?.slice(key.length + 1);
}

/**
 * Where and how a tar can be applied onto `mounts` without mounting them, as containerd's
 * `getOverlayPath`: `null` when a temporary mount is needed.
 */
export function directTarget(
  mounts: readonly Mount[],
): { root: string; options: ApplyTarOptions } | null {
  if (mounts.length !== 1) return null;
  const m = mounts[0];
  const options = m.options ?? [];
  if (m.type === "overlay") {
    const upper = option(m, "upperdir");
    if (upper === undefined || upper === "" || options.includes("userxattr")) return null;
    const lower = option(m, "lowerdir");
    return {
      root: upper,
      options: { whiteouts: "overlay", parents: lower ? lower.split(":") : [] },
    };
  }
  if (m.type === "bind" && !options.includes("ro")) {
    return { root: m.source, options: { whiteouts: "delete" } };
  }
  return null;
}

/**
 * Applies the tar `tar` (uncompressed) onto `mounts` (see the module documentation).
 */
export async function applyTarToMounts(
  mounts: readonly Mount[],
  tar: ReadableStream<Uint8Array>,
  options: { signal?: AbortSignal } = {},
): Promise<ApplyTarResult> {
  const direct = directTarget(mounts);
  if (direct !== null) {
    return await applyTar(direct.root, tar, { ...direct.options, signal: options.signal });
  }
  return await withTempMount(mounts, (root) => applyTar(root, tar, options));
}

/**
 * Applies a layer blob onto `target`: a directory (whiteouts delete) or snapshot mounts.
 *
 * @throws {TainerdError} NotImplemented for unsupported media types or compressions;
 *   InvalidArgument for corrupt data, malformed archives and invalid whiteouts
 */
export async function applyLayer(
  source: ReadableStream<Uint8Array>,
  target: string | readonly Mount[],
  options: ApplyLayerOptions = {},
): Promise<ApplyLayerResult> {
  const { stream, compression } = await decompressStream(source, {
    mediaType: options.mediaType,
  });
  const digester = new Digester();
  const tar = stream.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        digester.update(chunk);
        controller.enqueue(chunk);
      },
    }),
  );
  if (typeof target === "string") {
    await applyTar(target, tar, { signal: options.signal });
  } else {
    await applyTarToMounts(target, tar, { signal: options.signal });
  }
  return { diffID: digester.digest(), size: digester.size, compression };
}
