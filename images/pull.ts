/**
 * Image pull over the API, as containerd's `client.Pull`: resolve the reference, walk the
 * index (platform-filtered) → manifests → config and layers, write every blob through the
 * content API under a temporary lease (skipping blobs the namespace has, resuming ingests),
 * label parents with their children (`containerd.io/gc.ref.content.*`) and every blob with
 * where it came from (`containerd.io/distribution.source.<host>`), then point the image at
 * the root descriptor — and optionally unpack it into a snapshotter. Unpacking overlaps the
 * download: layer i is applied as soon as it is fetched — where the snapshotter can rebase
 * (overlayfs), into a snapshot of its own while lower layers are still being applied, else
 * once layers 0..i-1 are committed (see {@link applyLayers}); commits stay in chain order —
 * while later layers keep downloading.
 *
 * ```ts
 * import { pull } from "./images/pull.ts";
 * const { image } = await pull(client, "127.0.0.1:5000/test/busybox:1", { plainHttp: true });
 * ```
 *
 * @module
 */

import type { TainerdClient } from "../client/client.ts";
import type { RemoteWriter } from "../client/content.ts";
import {
  contentInfo,
  distributionSourceLabel,
  openWriter,
  readBlob,
  setContentLabels,
  withLease,
  writeBlob,
} from "../client/images_content.ts";
import { type ImageRecord, putImage } from "../client/images.ts";
import { isAlreadyExists, isNotFound, notImplemented, TainerdError } from "../plugins/errdefs.ts";
import {
  childGcLabels,
  childrenOf,
  type Descriptor,
  filterChildren,
  hasChildren,
  isManifestType,
  parseManifest,
  refKey,
} from "./image.ts";
import { parsePlatform, type Platform, platformMatcherFor } from "./platforms.ts";
import { parseReference } from "./reference/reference.ts";
import { type BlobWriter, type Fetcher, fetchToWriter } from "./remote/fetcher.ts";
import { isSchema1MediaType } from "./remote/media_types.ts";
import { MAX_MANIFEST_SIZE } from "./remote/resolver.ts";
import {
  openResolver,
  type ProgressHandler,
  type RegistryOptions,
  Semaphore,
} from "./registry_options.ts";
import {
  applyLayers,
  DEFAULT_SNAPSHOTTER,
  finishUnpack,
  imageRootfs,
  layersToApply,
  unpack,
  type UnpackOptions,
  type UnpackResult,
} from "./unpack.ts";
import type { ResolvedManifest } from "./image.ts";

/** Options of {@link pull}. */
export interface PullOptions extends RegistryOptions {
  /**
   * The platform(s) to pull (`linux/arm64`); the host's by default. One platform pulls its
   * best manifest; several pull every manifest matching any of them.
   */
  platform?: string | Platform | (string | Platform)[];
  /** Pull every platform of an index. */
  allPlatforms?: boolean;
  /**
   * Unpack the pulled platform(s) (default false, as containerd's client): `true` into
   * `snapshotter`, or `{ snapshotter, concurrency }` (`concurrency`: layers applied at once
   * where the snapshotter can rebase, see {@link UnpackOptions.concurrency}). The image record
   * is only written once every layer is unpacked.
   */
  unpack?: boolean | Pick<UnpackOptions, "snapshotter" | "concurrency">;
  /** The snapshotter to unpack into (default `overlayfs`). */
  snapshotter?: string;
  /** Blobs downloaded at once (default 3). */
  concurrency?: number;
  /** Labels of the image record. */
  labels?: Record<string, string>;
  /** The image's name (default: the normalised reference). */
  name?: string;
  /** Progress events, one or more per blob. */
  onProgress?: ProgressHandler;
  signal?: AbortSignal;
}

/** What {@link pull} did. */
export interface PullResult {
  /** The image record created or updated. */
  image: ImageRecord;
  /** The platform manifests pulled. */
  manifests: Descriptor[];
  /** Bytes downloaded from the registry. */
  downloaded: number;
  /** Every blob walked, parents first. */
  blobs: Descriptor[];
  /** What unpacking did, when asked for. */
  unpacked: UnpackResult[];
}

const WRITE_CHUNK = 1 << 20;

/**
 * Buffers fetched bytes into ~1 MiB writes over a {@link RemoteWriter} (one round trip per
 * write) and commits with labels.
 */
class BufferedWriter implements BlobWriter {
  readonly #w: RemoteWriter;
  readonly #labels: Record<string, string>;
  readonly #onWrite: (offset: number) => void;
  #buffer: Uint8Array[] = [];
  #buffered = 0;

  constructor(w: RemoteWriter, labels: Record<string, string>, onWrite: (offset: number) => void) {
    this.#w = w;
    this.#labels = labels;
    this.#onWrite = onWrite;
  }

  get writer(): RemoteWriter {
    return this.#w;
  }

  async write(chunk: Uint8Array): Promise<void> {
    this.#buffer.push(chunk);
    this.#buffered += chunk.byteLength;
    if (this.#buffered >= WRITE_CHUNK) await this.#flush();
  }

  async #flush(): Promise<void> {
    if (this.#buffered === 0) return;
    const data = this.#buffer.length === 1 ? this.#buffer[0] : concat(this.#buffer, this.#buffered);
    this.#buffer = [];
    this.#buffered = 0;
    await this.#w.write(data);
    this.#onWrite(this.#w.offset);
  }

  status(): { offset: number } {
    return { offset: this.#w.offset + this.#buffered };
  }

  async truncate(size: number): Promise<void> {
    this.#buffer = [];
    this.#buffered = 0;
    this.#w.offset = size;
    await Promise.resolve();
  }

  async commit(size: number, expected: string): Promise<void> {
    await this.#flush();
    try {
      await this.#w.commit(size, expected, this.#labels);
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
  }
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.byteLength;
  }
  return out;
}

async function readAllLimited(stream: ReadableStream<Uint8Array>, limit: number, what: string) {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += chunk.byteLength;
    if (size > limit) {
      await stream.cancel().catch(() => {});
      throw new TainerdError(
        "FailedPrecondition",
        `Cannot fetch ${what}: more than ${limit} bytes`,
      );
    }
    chunks.push(chunk);
  }
  return concat(chunks, size);
}

/** Runs tasks, remembering the first failure and aborting the rest when one fails. */
class TaskGroup {
  readonly controller = new AbortController();
  readonly #tasks = new Set<Promise<unknown>>();
  #error: unknown = undefined;
  #failed = false;

  constructor(parent?: AbortSignal) {
    if (parent) {
      if (parent.aborted) this.controller.abort(parent.reason);
      else parent.addEventListener("abort", () => this.controller.abort(parent.reason));
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  spawn<T>(fn: () => Promise<T>): Promise<T> {
    const p = (async () => {
      if (this.#failed) throw this.#error;
      this.signal.throwIfAborted();
      return await fn();
    })();
    this.#tasks.add(p);
    p.then(() => this.#tasks.delete(p), (err) => {
      this.#tasks.delete(p);
      if (!this.#failed) {
        this.#failed = true;
        this.#error = err;
        this.controller.abort(err);
      }
    });
    return p;
  }

  /** Waits for every task; throws the first failure. */
  async wait(): Promise<void> {
    while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
    if (this.#failed) throw this.#error;
  }
}

/** One pull's state. */
class Puller {
  readonly client: TainerdClient;
  readonly fetcher: Fetcher;
  readonly opts: PullOptions;
  readonly host: string;
  readonly repo: string;
  readonly group: TaskGroup;
  readonly limiter: Semaphore;
  readonly limit: number;
  readonly matcher;
  readonly #seen = new Map<string, Promise<void>>();
  readonly blobs: Descriptor[] = [];
  readonly manifests: Descriptor[] = [];
  downloaded = 0;
  /** The snapshotter to unpack into while pulling (one platform only), if asked for. */
  readonly unpackInto: string | undefined;
  /** The manifest being unpacked while pulling, and what came of it. */
  pipelined?: {
    desc: Descriptor;
    result: Promise<{ root: ResolvedManifest & { chainId: string }; applied: number } | undefined>;
  };

  constructor(
    client: TainerdClient,
    fetcher: Fetcher,
    opts: PullOptions,
    host: string,
    repo: string,
  ) {
    this.client = client;
    this.fetcher = fetcher;
    this.opts = opts;
    this.host = host;
    this.repo = repo;
    this.group = new TaskGroup(opts.signal);
    this.limiter = new Semaphore(opts.concurrency ?? 3);
    this.matcher = platformMatcherFor(opts);
    const many = Array.isArray(opts.platform) && opts.platform.length > 1;
    this.limit = opts.allPlatforms || many ? 0 : 1;
    this.unpackInto = opts.unpack && this.limit === 1 ? snapshotterOf(opts) : undefined;
  }

  #progress(desc: Descriptor, status: "waiting" | "downloading" | "done" | "exists", offset = 0) {
    this.opts.onProgress?.({ ref: refKey(desc), desc, status, offset, total: desc.size });
  }

  /** Handles `desc` and (through spawned tasks) its children, once per digest. */
  handle(desc: Descriptor): Promise<void> {
    let p = this.#seen.get(desc.digest);
    if (!p) {
      this.blobs.push(desc);
      this.#progress(desc, "waiting");
      p = this.group.spawn(() => this.#handle(desc));
      this.#seen.set(desc.digest, p);
    }
    return p;
  }

  async #handle(desc: Descriptor): Promise<void> {
    if (isSchema1MediaType(desc.mediaType)) {
      throw notImplemented(
        `Cannot pull ${desc.digest}: Docker schema 1 manifests are not supported`,
      );
    }
    const signal = this.group.signal;
    const info = await contentInfo(this.client, desc.digest);
    const source = distributionSourceLabel(info?.labels, this.host, this.repo);
    if (!hasChildren(desc.mediaType)) {
      if (info) {
        await setContentLabels(this.client, desc.digest, source);
        this.#progress(desc, "exists", desc.size);
        return;
      }
      await this.limiter.run(() => this.#download(desc, source, signal));
      return;
    }

    let bytes: Uint8Array;
    if (info) {
      bytes = await readBlob(this.client, desc, { signal });
    } else {
      bytes = await this.limiter.run(async () => {
        this.#progress(desc, "downloading");
        const stream = await this.fetcher.fetch(desc, { signal });
        const b = await readAllLimited(stream, MAX_MANIFEST_SIZE, desc.digest);
        this.downloaded += b.byteLength;
        return b;
      });
    }
    const children = childrenOf(desc, bytes);
    const labels = { ...childGcLabels(children), ...source };
    if (info) {
      await setContentLabels(this.client, desc.digest, labels);
      this.#progress(desc, "exists", desc.size);
    } else {
      await writeBlob(this.client, refKey(desc), bytes, { expected: desc, labels, signal });
      this.#progress(desc, "done", desc.size);
    }
    if (isManifestType(desc.mediaType)) this.manifests.push(desc);
    const selected = filterChildren(desc, children, this.matcher, this.limit);
    const fetched = Promise.all(selected.map((c) => this.handle(c)));
    if (
      this.unpackInto && !this.pipelined && isManifestType(desc.mediaType) &&
      (!desc.platform || this.matcher.match(desc.platform))
    ) {
      const result = this.group.spawn(() => this.#unpack(desc, this.unpackInto!));
      this.pipelined = { desc, result };
    }
    await fetched;
  }

  /**
   * Unpacks `manifest` as its blobs arrive ({@link applyLayers}: layer i once it is stored,
   * committed once layers 0..i-1 are). Resolves to undefined when its config names another platform (the pull then
   * unpacks as {@link unpack} would, after the download).
   */
  async #unpack(manifest: Descriptor, snapshotter: string) {
    const signal = this.group.signal;
    const m = parseManifest(await readBlob(this.client, manifest, { signal }), manifest);
    await this.handle(m.config);
    let root;
    try {
      root = await imageRootfs(this.client, manifest, { matcher: this.matcher });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    const applied = await applyLayers(this.client, snapshotter, layersToApply(root), {
      concurrency: unpackConcurrencyOf(this.opts),
      ready: (l) => this.handle(l.layer),
      onProgress: this.opts.onProgress,
      signal,
    });
    return { root, applied };
  }

  async #download(desc: Descriptor, labels: Record<string, string>, signal: AbortSignal) {
    const ref = refKey(desc);
    const open = async (): Promise<BufferedWriter | undefined> => {
      const w = await openWriter(this.client, ref, {
        total: desc.size,
        expected: desc.digest,
        signal,
      });
      return w &&
        new BufferedWriter(w, labels, (offset) => this.#progress(desc, "downloading", offset));
    };
    let writer = await open();
    if (!writer) {
      // Committed meanwhile (another pull of the same blob).
      await setContentLabels(this.client, desc.digest, labels);
      this.#progress(desc, "exists", desc.size);
      return;
    }
    const start = writer.status().offset;
    this.#progress(desc, "downloading", start);
    try {
      await fetchToWriter(this.fetcher, desc, writer, {
        signal,
        restart: async () => {
          writer!.writer.cancel();
          await this.client.content.abort({ ref }).catch(() => {});
          writer = await open();
          if (!writer) throw new TainerdError("AlreadyExists", `${desc.digest} exists`);
          return writer;
        },
      });
    } catch (err) {
      writer?.writer.cancel();
      if (isAlreadyExists(err)) {
        await setContentLabels(this.client, desc.digest, labels);
        this.#progress(desc, "exists", desc.size);
        return;
      }
      throw err;
    }
    this.downloaded += desc.size - start;
    this.#progress(desc, "done", desc.size);
  }
}

/**
 * Pulls `ref` into the client's namespace: every blob of the selected platforms through the
 * content API, then the image record (created or updated). A failed pull deletes its lease,
 * so nothing it wrote stays referenced; the garbage collector removes it.
 *
 * @throws {TainerdError} NotFound when the registry lacks the reference or no manifest
 *   matches the platform; NotImplemented for schema 1 images; registry errors as they come.
 */
export async function pull(
  client: TainerdClient,
  ref: string,
  opts: PullOptions = {},
): Promise<PullResult> {
  const reference = parseReference(ref);
  const name = opts.name ?? reference.toString();
  const { resolver, close } = openResolver(opts);
  try {
    opts.onProgress?.({ ref: name, status: "resolving", offset: 0, total: 0 });
    const resolved = await resolver.resolve(reference, { signal: opts.signal });
    opts.onProgress?.({ ref: name, status: "resolved", offset: 0, total: 0 });
    const fetcher = await resolver.fetcher(reference);
    return await withLease(client, async (leased) => {
      const puller = new Puller(leased, fetcher, opts, reference.domain, reference.path);
      puller.handle(resolved.descriptor).catch(() => {});
      await puller.group.wait();
      const target = stripPlatform(resolved.descriptor);
      const unpacked: UnpackResult[] = [];
      if (opts.unpack) {
        const snapshotter = snapshotterOf(opts);
        const wanted = opts.platform === undefined || opts.allPlatforms
          ? [undefined]
          : (Array.isArray(opts.platform) ? opts.platform : [opts.platform]);
        const done = await puller.pipelined?.result;
        for (const p of wanted) {
          const platform = typeof p === "string" ? parsePlatform(p) : p;
          if (done && wanted.length === 1) {
            // The manifest unpack() would pick is the one unpacked while pulling: finish it.
            const root = await imageRootfs(leased, target, { platform });
            if (root.desc.digest === done.root.desc.digest) {
              unpacked.push(await finishUnpack(leased, root, snapshotter, done.applied));
              continue;
            }
          }
          unpacked.push(
            await unpack(leased, target, {
              snapshotter,
              concurrency: unpackConcurrencyOf(opts),
              platform,
              onProgress: opts.onProgress,
              signal: opts.signal,
            }),
          );
        }
      }
      const image = await putImage(leased, { name, target, labels: opts.labels });
      return {
        image,
        manifests: puller.manifests,
        downloaded: puller.downloaded,
        blobs: puller.blobs,
        unpacked,
      };
    });
  } finally {
    close();
  }
}

function snapshotterOf(opts: PullOptions): string {
  return (typeof opts.unpack === "object" ? opts.unpack.snapshotter : undefined) ??
    opts.snapshotter ?? DEFAULT_SNAPSHOTTER;
}

function unpackConcurrencyOf(opts: PullOptions): number | undefined {
  return typeof opts.unpack === "object" ? opts.unpack.concurrency : undefined;
}

function stripPlatform(desc: Descriptor): Descriptor {
  const { platform: _p, urls: _u, ...rest } = desc;
  return rest;
}
