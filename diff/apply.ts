/**
 * Applying a layer blob onto a directory or onto snapshot mounts, as containerd's
 * `diff/apply` (the `fsApplier`): the blob is decompressed (gzip, zstd or none, found from the
 * magic bytes; the media type must be a layer type), its uncompressed digest (the diff ID) and
 * size are computed while it streams, and the tar is applied with {@link applyTar}.
 *
 * Onto mounts, as containerd on Linux: a single overlay mount with an upper dir is applied
 * straight into the upper dir, with overlayfs whiteouts and the lower dirs as parents; a
 * single read-write bind mount straight into its source; anything else is mounted on a
 * temporary directory first. A read-write bind mount that the caller says is an overlay upper
 * dir ({@link ApplyTargetOptions.overlayUpper}: an overlayfs snapshot prepared without a
 * parent, to be committed onto its parent later) gets overlayfs whiteouts too.
 *
 * @module
 */

import { Digester } from "../plugins/content/digest.ts";
import { type ErrorKind, invalidArgument, notFound, TainerdError } from "../plugins/errdefs.ts";
import { type Mount, withTempMount } from "../sys/mount.ts";
import { applyTar, type ApplyTarOptions, type ApplyTarResult } from "./apply_tar.ts";
import { type Compression, decompressStream } from "./compression.ts";

/**
 * The `Diff.Apply` payload key (`ApplyRequest.payloads`, containerd's map of `Any` by name)
 * saying the single bind mount is an overlayfs upper dir (see
 * {@link ApplyTargetOptions.overlayUpper}); its value is not read. containerd passes payloads
 * only to stream processors named by media type, so it ignores this key.
 */
export const OVERLAY_UPPER_PAYLOAD = "io.tainerd.diff.v1.overlay-upperdir";

/** How the mounts of {@link directTarget} are to be written. */
export interface ApplyTargetOptions {
  /**
   * The single read-write bind mount is an overlayfs upper dir with lower layers yet to come
   * (containerd 2.1's parallel unpack): whiteouts are written as overlayfs whiteouts (a 0:0
   * char device, `trusted.overlay.opaque=y`) instead of deleting, since there is nothing
   * below to delete from.
   */
  overlayUpper?: boolean;
}

/** Options of {@link applyLayer}. */
export interface ApplyLayerOptions extends ApplyTargetOptions {
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
  target: ApplyTargetOptions = {},
): { root: string; options: ApplyTarOptions } | null {
  const m = mounts[0];
  const options = m?.options ?? [];
  if (target.overlayUpper) {
    if (mounts.length !== 1 || m.type !== "bind" || options.includes("ro")) {
      throw invalidArgument(
        "Cannot apply a layer as an overlay upper dir: the target must be one read-write bind " +
          "mount",
      );
    }
    return { root: m.source, options: { whiteouts: "overlay", parents: [] } };
  }
  if (mounts.length !== 1) return null;
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
  options: ApplyTargetOptions & { signal?: AbortSignal } = {},
): Promise<ApplyTarResult> {
  const direct = directTarget(mounts, options);
  if (direct !== null) {
    return await applyTar(direct.root, tar, { ...direct.options, signal: options.signal });
  }
  return await withTempMount(mounts, (root) => applyTar(root, tar, options));
}

/**
 * Applies a layer blob onto `target`: a directory (whiteouts delete) or snapshot mounts.
 *
 * @throws {TainerdError} NotImplemented for unsupported media types or compressions;
 *   InvalidArgument for corrupt data, malformed archives and invalid whiteouts, or an
 *   `overlayUpper` target that is not one read-write bind mount
 */
export async function applyLayer(
  source: ReadableStream<Uint8Array>,
  target: string | readonly Mount[],
  options: ApplyLayerOptions = {},
): Promise<ApplyLayerResult> {
  if (options.overlayUpper && typeof target !== "string") directTarget(target, options);
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
    await applyTarToMounts(target, tar, {
      signal: options.signal,
      overlayUpper: options.overlayUpper,
    });
  }
  return { diffID: digester.digest(), size: digester.size, compression };
}

/**
 * The worker module, when it exists as a file (not in a bundle or a compiled binary) and
 * `TAINERD_APPLY_WORKER` is not `0`.
 */
function workerModule(): URL | null {
  try {
    if (Deno.env.get("TAINERD_APPLY_WORKER") === "0") return null;
  } catch {
    // No environment access: the default.
  }
  const url = new URL("./apply_worker.ts", import.meta.url);
  if (url.protocol !== "file:") return null;
  try {
    return Deno.statSync(url).isFile ? url : null;
  } catch {
    return null;
  }
}

let workerUrl: URL | null | undefined;

/**
 * Blobs smaller than this are applied in the caller's thread by {@link applyLayerInWorker}:
 * they hold it only briefly, less than a worker takes to start (~0.1 s).
 */
export const WORKER_MIN_BYTES = 4 << 20;

function blobSize(path: string): number {
  try {
    return Deno.statSync(path).size;
  } catch {
    return 0; // applyLayerFile reports it
  }
}

/**
 * {@link applyLayer} of the blob file `blobPath` in a worker (one per call), so that reading,
 * decompressing, parsing the tar and the file system calls do not hold the caller's event
 * loop for long stretches (a daemon keeps answering while a large layer is applied). An abort
 * terminates the worker (the target is left partly applied). Blobs under
 * {@link WORKER_MIN_BYTES} are applied in this thread, and so is every blob where the worker
 * module is not a file of its own (a bundle, a compiled binary) or the environment has
 * `TAINERD_APPLY_WORKER=0`.
 *
 * @throws {TainerdError} as {@link applyLayer}; NotFound when the blob file is missing
 */
export async function applyLayerInWorker(
  blobPath: string,
  target: string | readonly Mount[],
  options: ApplyLayerOptions = {},
): Promise<ApplyLayerResult> {
  if (workerUrl === undefined) workerUrl = workerModule();
  if (workerUrl === null || blobSize(blobPath) < WORKER_MIN_BYTES) {
    return await applyLayerFile(blobPath, target, options);
  }
  const { signal, ...rest } = options;
  signal?.throwIfAborted();
  const worker = new Worker(workerUrl, { type: "module", name: "tainerd-apply" });
  const done = Promise.withResolvers<ApplyLayerResult>();
  const onAbort = () => done.reject(signal?.reason);
  signal?.addEventListener("abort", onAbort);
  worker.onmessage = (e: MessageEvent) => {
    const { result, error } = e.data as {
      result?: ApplyLayerResult;
      error?: { kind?: ErrorKind; name: string; message: string };
    };
    if (result) return done.resolve(result);
    if (error?.kind) return done.reject(new TainerdError(error.kind, error.message));
    const err = new Error(error?.message ?? "The layer could not be applied");
    err.name = error?.name ?? "Error";
    done.reject(err);
  };
  worker.onerror = (e: ErrorEvent) => {
    e.preventDefault();
    done.reject(new Error(`The layer apply worker failed: ${e.message}`));
  };
  try {
    const mounts = typeof target === "string" ? target : target.map((m) => ({
      type: m.type,
      source: m.source,
      options: [...(m.options ?? [])],
    }));
    worker.postMessage({ blobPath, target: mounts, options: rest });
    return await done.promise;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    worker.terminate();
  }
}

/**
 * {@link applyLayer} of the blob file `blobPath`, in this thread.
 *
 * @throws {TainerdError} as {@link applyLayer}; NotFound when the blob file is missing
 */
export async function applyLayerFile(
  blobPath: string,
  target: string | readonly Mount[],
  options: ApplyLayerOptions = {},
): Promise<ApplyLayerResult> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(blobPath, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw notFound(`Cannot apply the layer: its blob "${blobPath}" does not exist`);
    }
    throw err;
  }
  return await applyLayer(readChunks(file), target, options);
}

/** Read size of {@link applyLayerFile}: large reads keep the per-chunk work low. */
const READ_CHUNK = 1 << 20;

/** The file's bytes in {@link READ_CHUNK} chunks; the file is closed at the end or on cancel. */
function readChunks(file: Deno.FsFile): ReadableStream<Uint8Array> {
  let open = true;
  const close = () => {
    if (open) {
      open = false;
      file.close();
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const chunk = new Uint8Array(READ_CHUNK);
        const n = await file.read(chunk);
        if (n === null) {
          close();
          controller.close();
        } else {
          controller.enqueue(chunk.subarray(0, n));
        }
      } catch (err) {
        close();
        controller.error(err);
      }
    },
    cancel: close,
  }, { highWaterMark: 0 });
}
