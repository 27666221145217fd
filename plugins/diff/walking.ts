/**
 * The walking differ, as containerd's `diff/walking` (Compare) and `diff/apply` (Apply), over
 * the namespaced content store:
 *
 * - {@link WalkingDiffer.apply} reads a layer blob of the namespace and applies it onto
 *   snapshot mounts; it returns the applied descriptor: the uncompressed OCI layer media type,
 *   the diff ID as digest and the uncompressed size.
 * - {@link WalkingDiffer.compare} writes the layer of the changes between two sets of mounts
 *   into the content store through a writer with the given ref (a fresh unique one by
 *   default), with the given labels plus `containerd.io/uncompressed` for a compressed layer,
 *   and returns its descriptor.
 *
 * {@link DiffService} tries differs in order, as containerd's diff service: the next one when
 * a differ answers NotImplemented.
 *
 * @module
 */

import {
  applyLayerInWorker,
  type Compression,
  diffMounts,
  MediaType,
  OVERLAY_UPPER_PAYLOAD,
} from "../../diff/mod.ts";
import type { Mount } from "../../sys/mount.ts";
import { invalidArgument, isAlreadyExists, isKind, notImplemented } from "../errdefs.ts";
import type { MetadataContentStore } from "../metadata/content.ts";
import type { Scope } from "../metadata/leases.ts";
import type { Logger } from "../../log.ts";

/** The label that names a compressed blob's uncompressed digest. */
export const UNCOMPRESSED_LABEL = "containerd.io/uncompressed";

/** An OCI descriptor, as the diff API carries it. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** Options of {@link Differ.apply}. */
export interface ApplyOptions {
  /**
   * Stream processor payloads by media type (containerd's; no processors are built in), and
   * {@link OVERLAY_UPPER_PAYLOAD}: the single bind mount is an overlay upper dir.
   */
  payloads?: Record<string, unknown>;
  /** Stops the application. */
  signal?: AbortSignal;
}

/** Options of {@link Differ.compare}. */
export interface CompareOptions {
  /** The layer's media type: OCI tar, tar+gzip (the default) or tar+zstd. */
  mediaType?: string;
  /** The content writer's ref; a unique one when empty. */
  ref?: string;
  /** Labels of the new content. */
  labels?: Record<string, string>;
  /** Stops the diff. */
  signal?: AbortSignal;
}

/** An applier and comparer, as containerd's differ plugins. */
export interface Differ {
  /** Applies the layer `desc` onto `mounts`; returns the applied (uncompressed) descriptor. */
  apply(
    scope: Scope,
    desc: Descriptor,
    mounts: readonly Mount[],
    opts?: ApplyOptions,
  ): Promise<Descriptor>;
  /** Writes the layer turning `lower` into `upper` to the content store; returns its descriptor. */
  compare(
    scope: Scope,
    lower: readonly Mount[],
    upper: readonly Mount[],
    opts?: CompareOptions,
  ): Promise<Descriptor>;
}

const COMPARE_COMPRESSION: ReadonlyMap<string, Compression> = new Map<string, Compression>([
  [MediaType.OciLayer, "none"],
  [MediaType.OciLayerGzip, "gzip"],
  [MediaType.OciLayerZstd, "zstd"],
]);

/** A unique writer ref, as containerd's `uniqueRef`: `<unix nanoseconds>-<base64>`. */
export function uniqueRef(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(3));
  const b64 = btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_");
  const nanos = BigInt(Date.now()) * 1_000_000n +
    BigInt(Math.floor((performance.now() % 1) * 1e6));
  return `${nanos}-${b64}`;
}

/** The walking differ over a namespaced content store. */
export class WalkingDiffer implements Differ {
  readonly #content: () => MetadataContentStore;
  readonly #log?: Logger;

  /** `content` returns the namespaced content store (looked up at call time). */
  constructor(content: () => MetadataContentStore, log?: Logger) {
    this.#content = content;
    this.#log = log;
  }

  /** See {@link Differ.apply}. */
  async apply(
    scope: Scope,
    desc: Descriptor,
    mounts: readonly Mount[],
    opts: ApplyOptions = {},
  ): Promise<Descriptor> {
    if (!desc || !desc.digest) throw invalidArgument("The layer to apply has no digest");
    if (mounts.length === 0) throw invalidArgument("There are no mounts to apply the layer to");
    const t0 = performance.now();
    const content = this.#content();
    // The namespace must have the blob; the worker reads its file.
    content.info(scope.namespace, desc.digest);
    const result = await applyLayerInWorker(content.backend.blobPath(desc.digest), mounts, {
      mediaType: desc.mediaType || undefined,
      signal: opts.signal,
      overlayUpper: opts.payloads?.[OVERLAY_UPPER_PAYLOAD] !== undefined,
    });
    this.#log?.debug("diff applied", {
      d: `${(performance.now() - t0).toFixed(1)}ms`,
      digest: desc.digest,
      size: desc.size,
      media: desc.mediaType,
    });
    return { mediaType: MediaType.OciLayer, digest: result.diffID, size: result.size };
  }

  /** See {@link Differ.compare}. */
  async compare(
    scope: Scope,
    lower: readonly Mount[],
    upper: readonly Mount[],
    opts: CompareOptions = {},
  ): Promise<Descriptor> {
    const mediaType = opts.mediaType || MediaType.OciLayerGzip;
    const compression = COMPARE_COMPRESSION.get(mediaType);
    if (compression === undefined) {
      throw notImplemented(`Unsupported diff media type ${JSON.stringify(mediaType)}`);
    }
    const cs = this.#content();
    const newRef = !opts.ref;
    const ref = opts.ref || uniqueRef();
    const writer = await cs.writer(scope, ref, {});
    let open = true;
    try {
      if (!newRef) await writer.truncate(0);
      const sink = new WritableStream<Uint8Array>({
        write: async (chunk) => {
          await writer.write(chunk);
        },
      });
      const result = await diffMounts(lower, upper, sink, { compression, signal: opts.signal });
      const labels = { ...(opts.labels ?? {}) };
      if (compression !== "none") labels[UNCOMPRESSED_LABEL] = result.diffID;
      try {
        await writer.commit(result.size, result.digest, { labels });
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
      }
      open = false;
      let info = cs.info(scope.namespace, result.digest);
      if (compression !== "none" && info.labels[UNCOMPRESSED_LABEL] === undefined) {
        // The blob existed already, without the label.
        info = cs.update(
          scope.namespace,
          { digest: info.digest, labels: { [UNCOMPRESSED_LABEL]: result.diffID } },
          [`labels.${UNCOMPRESSED_LABEL}`],
        );
      }
      return { mediaType, digest: info.digest, size: info.size };
    } finally {
      if (open) {
        await writer.close().catch(() => {});
        if (newRef) {
          await cs.abort(scope, ref).catch((err) => {
            this.#log?.warn("cannot abort a diff upload", { ref, error: String(err) });
          });
        }
      }
    }
  }
}

/** The differs in order of preference, as containerd's diff service. */
export class DiffService implements Differ {
  readonly #differs: readonly Differ[];

  constructor(differs: readonly Differ[]) {
    this.#differs = differs;
  }

  async #first<T>(op: (d: Differ) => Promise<T>, what: string): Promise<T> {
    let last: unknown = notImplemented(`No differ can ${what}`);
    for (const d of this.#differs) {
      try {
        return await op(d);
      } catch (err) {
        if (!isKind(err, "NotImplemented")) throw err;
        last = err;
      }
    }
    throw last;
  }

  /** See {@link Differ.apply}. */
  apply(
    scope: Scope,
    desc: Descriptor,
    mounts: readonly Mount[],
    opts?: ApplyOptions,
  ): Promise<Descriptor> {
    return this.#first((d) => d.apply(scope, desc, mounts, opts), "apply the layer");
  }

  /** See {@link Differ.compare}. */
  compare(
    scope: Scope,
    lower: readonly Mount[],
    upper: readonly Mount[],
    opts?: CompareOptions,
  ): Promise<Descriptor> {
    return this.#first((d) => d.compare(scope, lower, upper, opts), "compare the mounts");
  }
}
