/**
 * Content and lease helpers the image operations share, over the API (as containerd's
 * `content` helpers and `client.WithLease`): read a whole blob verified, write one with
 * labels (skipping what exists, waiting out a concurrent writer), merge labels, and run work
 * under a temporary lease so that a failure leaves nothing referenced.
 *
 * @module
 */

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Digester, parseDigest } from "../plugins/content/digest.ts";
import {
  failedPrecondition,
  isAlreadyExists,
  isKind,
  isNotFound,
  TainerdError,
} from "../plugins/errdefs.ts";
import type { BlobProvider, Descriptor } from "../images/image.ts";
import { Labels } from "../images/image.ts";
import { TainerdClient } from "./client.ts";
import { readContent, RemoteWriter } from "./content.ts";

/** A blob's record in the content store. */
export interface ContentInfo {
  digest: string;
  size: number;
  labels: Record<string, string>;
  createdAt?: Date;
  updatedAt?: Date;
}

/** The record of `digest`, or undefined when the namespace has no such blob. */
export async function contentInfo(
  client: TainerdClient,
  digest: string,
): Promise<ContentInfo | undefined> {
  try {
    const { info } = await client.content.info({ digest });
    if (!info) return undefined;
    return {
      digest: info.digest,
      size: Number(info.size),
      labels: { ...info.labels },
      createdAt: info.createdAt ? timestampDate(info.createdAt) : undefined,
      updatedAt: info.updatedAt ? timestampDate(info.updatedAt) : undefined,
    };
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

/** Sets (or, with an empty value, removes) the given labels of a blob, leaving the others. */
export async function setContentLabels(
  client: TainerdClient,
  digest: string,
  labels: Record<string, string>,
): Promise<void> {
  const keys = Object.keys(labels);
  if (keys.length === 0) return;
  await client.content.update({
    info: { digest, labels },
    updateMask: { paths: keys.map((k) => `labels.${k}`) },
  });
}

/** The largest blob {@link readBlob} reads into memory unless told otherwise (64 MiB). */
export const MAX_BLOB_READ = 64 << 20;

/**
 * The whole content of `desc`, verified against its size and digest.
 *
 * @throws {TainerdError} NotFound when absent; FailedPrecondition when it does not match.
 */
export async function readBlob(
  client: TainerdClient,
  desc: Descriptor,
  opts: { limit?: number; signal?: AbortSignal } = {},
): Promise<Uint8Array> {
  const limit = opts.limit ?? MAX_BLOB_READ;
  if (desc.size > limit) {
    throw failedPrecondition(`Cannot read ${desc.digest}: ${desc.size} bytes is over ${limit}`);
  }
  const out = new Uint8Array(desc.size);
  let offset = 0;
  const digester = new Digester(parseDigest(desc.digest).algorithm);
  for await (const chunk of readContent(client, desc.digest, { signal: opts.signal })) {
    if (offset + chunk.byteLength > desc.size) {
      throw failedPrecondition(`Cannot read ${desc.digest}: it is larger than ${desc.size} bytes`);
    }
    out.set(chunk, offset);
    digester.update(chunk);
    offset += chunk.byteLength;
  }
  if (offset !== desc.size) {
    throw failedPrecondition(`Cannot read ${desc.digest}: ${offset} bytes, not ${desc.size}`);
  }
  if (digester.digest() !== desc.digest) {
    throw failedPrecondition(
      `Cannot read ${desc.digest}: the content has digest ${digester.digest()}`,
    );
  }
  return out;
}

/** A {@link BlobProvider} over the content API (manifests and configs are cached). */
export function contentProvider(client: TainerdClient): BlobProvider {
  const cache = new Map<string, Promise<Uint8Array>>();
  return {
    readBlob(desc) {
      let p = cache.get(desc.digest);
      if (!p) {
        p = readBlob(client, desc);
        cache.set(desc.digest, p);
        p.catch(() => cache.delete(desc.digest));
      }
      return p;
    },
  };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    }, { once: true });
  });
}

/**
 * Opens a writer for `ref`, waiting while another writer holds it (Unavailable), as
 * containerd's `content.OpenWriter`. Returns undefined when the namespace already has
 * `expected`.
 */
export async function openWriter(
  client: TainerdClient,
  ref: string,
  opts: { total?: number; expected?: string; signal?: AbortSignal; waitMs?: number } = {},
): Promise<RemoteWriter | undefined> {
  const deadline = Date.now() + (opts.waitMs ?? 60_000);
  for (let attempt = 0;; attempt++) {
    try {
      return await RemoteWriter.open(client, ref, opts);
    } catch (err) {
      if (isAlreadyExists(err)) return undefined;
      if (!isKind(err, "Unavailable") || Date.now() > deadline) throw err;
      await sleep(Math.min(1000, 50 * 2 ** attempt), opts.signal);
    }
  }
}

/** The source of {@link writeBlob}: bytes, or a stream (read once, from its start). */
export type BlobSource = Uint8Array | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;

/**
 * Writes a blob under `ref` and commits it with `labels`, as containerd's
 * `content.WriteBlob`. With a known digest an existing blob is skipped (its labels are then
 * set with Update); without one, the digest is computed while writing. Returns the digest
 * and size.
 */
export async function writeBlob(
  client: TainerdClient,
  ref: string,
  source: BlobSource,
  opts: {
    expected?: Descriptor | { digest?: string; size?: number };
    labels?: Record<string, string>;
    signal?: AbortSignal;
  } = {},
): Promise<{ digest: string; size: number; existed: boolean }> {
  const expected = opts.expected?.digest;
  const total = opts.expected?.size ?? (source instanceof Uint8Array ? source.byteLength : 0);
  const w = await openWriter(client, ref, { total, expected, signal: opts.signal });
  if (!w) {
    if (opts.labels) await setContentLabels(client, expected!, opts.labels);
    return { digest: expected!, size: total, existed: true };
  }
  const digester = new Digester(expected ? parseDigest(expected).algorithm : "sha256");
  try {
    if (w.offset !== 0) w.offset = 0; // Start over: the source is not seekable.
    let size = 0;
    const chunks: AsyncIterable<Uint8Array> = source instanceof Uint8Array
      ? (async function* () {
        for (let i = 0; i < source.byteLength; i += 1 << 20) {
          yield source.subarray(i, Math.min(source.byteLength, i + (1 << 20)));
        }
      })()
      : source;
    // Coalesce small chunks: every write is a round trip.
    let pending: Uint8Array[] = [];
    let pendingSize = 0;
    const flush = async () => {
      if (pendingSize === 0) return;
      const data = pending.length === 1 ? pending[0] : new Uint8Array(pendingSize);
      if (pending.length > 1) {
        let o = 0;
        for (const c of pending) {
          data.set(c, o);
          o += c.byteLength;
        }
      }
      pending = [];
      pendingSize = 0;
      await w.write(data);
    };
    for await (const chunk of chunks) {
      if (chunk.byteLength === 0) continue;
      digester.update(chunk);
      // Copy: a stream may reuse its buffers.
      pending.push(chunk.slice());
      pendingSize += chunk.byteLength;
      size += chunk.byteLength;
      if (pendingSize >= 1 << 20) await flush();
    }
    await flush();
    const digest = digester.digest();
    if (expected && digest !== expected) {
      w.cancel();
      throw failedPrecondition(
        `Cannot write ${ref}: the content has digest ${digest}, not ${expected}`,
      );
    }
    try {
      await w.commit(size, digest, opts.labels);
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      if (opts.labels) await setContentLabels(client, digest, opts.labels);
      return { digest, size, existed: true };
    }
    return { digest, size, existed: false };
  } catch (err) {
    w.cancel();
    throw err;
  }
}

/**
 * Merges `repo` into the blob's `containerd.io/distribution.source.<host>` label (a sorted,
 * comma-separated list), as containerd's `AppendDistributionSourceLabel`. Returns the
 * labels to set (empty when nothing changes).
 */
export function distributionSourceLabel(
  existing: Record<string, string> | undefined,
  host: string,
  repo: string,
): Record<string, string> {
  const key = `${Labels.DistributionSource}${host}`;
  const current = existing?.[key];
  const repos = new Set(current ? current.split(",") : []);
  if (repos.has(repo)) return {};
  repos.add(repo);
  return { [key]: [...repos].sort().join(",") };
}

/** Options of {@link withLease}. */
export interface LeaseOptions {
  /** How long the lease holds its resources if it is never deleted (default 24 h). */
  expireMs?: number;
  /** Extra lease labels. */
  labels?: Record<string, string>;
}

function randomId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return `${Date.now()}-${
    btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_")
  }`;
}

/**
 * Runs `fn` with a client whose every call carries a new lease (created with an expiry, as
 * containerd's `client.WithLease`), and deletes the lease afterwards, whatever happened:
 * what `fn` made and nothing else holds is then left for the garbage collector. When
 * `client` already carries a lease, `fn` runs with it and nothing is created.
 */
export async function withLease<T>(
  client: TainerdClient,
  fn: (leased: TainerdClient, leaseId: string) => Promise<T>,
  opts: LeaseOptions = {},
): Promise<T> {
  if (client.lease) return await fn(client, client.lease);
  const id = randomId();
  const expire = new Date(Date.now() + (opts.expireMs ?? 24 * 3600_000));
  await client.leases.create({
    id,
    labels: { ...opts.labels, [Labels.GcExpire]: expire.toISOString().replace(/\.\d{3}Z$/, "Z") },
  });
  const leased = new TainerdClient({
    address: client.address,
    namespace: client.namespace,
    lease: id,
  });
  try {
    return await fn(leased, id);
  } finally {
    leased.close();
    await client.leases.delete({ id, sync: false }).catch((err) => {
      if (!(err instanceof TainerdError && err.kind === "NotFound")) throw err;
    });
  }
}
