/**
 * The pusher, as containerd's `dockerPusher`: blobs go through an upload session
 * (`HEAD /blobs/<digest>` to skip what the registry has, `POST /blobs/uploads/` — optionally
 * mounting from another repository — then a monolithic `PUT ?digest=`, one streamed `PATCH`
 * for large blobs, or fixed-size `PATCH` chunks on request); manifests are `PUT` to
 * `/manifests/<digest|tag>` with their media type as `Content-Type`. Content is checked against
 * its descriptor while it is sent, and the upload is never completed when it does not match.
 *
 * @module
 */

import { invalidArgument, TainerdError } from "../../plugins/errdefs.ts";
import { Digester, parseDigest } from "../../plugins/content/digest.ts";
import { type Descriptor, validateDescriptor } from "./descriptor.ts";
import { discard } from "./errors.ts";
import { hostBaseUrl, type RegistryHost } from "./hosts.ts";
import { isManifestMediaType } from "./media_types.ts";
import type { Repository } from "./repository.ts";
import { sleep } from "./http.ts";

/** Bytes, or a factory of streams (called again when an upload has to start over). */
export type PushSource =
  | Uint8Array
  | (() => ReadableStream<Uint8Array> | Promise<ReadableStream<Uint8Array>>);

/** Options of {@link Pusher.push}. */
export interface PushOptions {
  /**
   * For manifests: the tag to put it under (`PUT /manifests/<tag>`); `true` means the
   * pusher's reference tag. By default manifests are put by digest.
   */
  tag?: string | boolean;
  /** Repositories on the same registry to try to mount the blob from (first that works). */
  mountFrom?: string[];
  /** Upload in `PATCH` requests of this many bytes each. */
  chunkSize?: number;
  /**
   * Streamed blobs up to this size are buffered and sent in one `PUT`; larger ones are sent
   * in one streamed `PATCH`. Default 32 MiB.
   */
  monolithicLimit?: number;
  /** Push even when the registry says it has the content. */
  force?: boolean;
  /** Attempts at an upload session in all (default 3). */
  attempts?: number;
  signal?: AbortSignal;
}

/** What a push did. */
export interface PushResult {
  digest: string;
  /** `exists`: the registry had it; `mounted`: mounted from another repository. */
  status: "exists" | "mounted" | "pushed";
}

const DEFAULT_MONOLITHIC_LIMIT = 32 << 20;
const ONCE = { attempts: 1 };
const MAX_MANIFEST_PUSH = 4 << 20;

/** Pushes content to one repository. */
export class Pusher {
  readonly #repo: Repository;

  constructor(repo: Repository) {
    this.#repo = repo;
  }

  /** The repository pushed to. */
  get repository(): Repository {
    return this.#repo;
  }

  #host(): RegistryHost {
    return this.#repo.requireHosts("push to", "push")[0];
  }

  #tagFor(options: PushOptions): string | undefined {
    if (options.tag === true) {
      const tag = this.#repo.ref.tag;
      if (!tag) throw invalidArgument(`Cannot tag in ${this.#repo.ref}: the reference has no tag`);
      return tag;
    }
    return typeof options.tag === "string" ? options.tag : undefined;
  }

  /**
   * Whether the registry has `desc` (a manifest under `tag`, when given, with the same digest).
   *
   * @throws {TainerdError} PermissionDenied and other failures other than 404.
   */
  async exists(
    desc: Descriptor,
    options: { tag?: string; signal?: AbortSignal } = {},
  ): Promise<boolean> {
    validateDescriptor(desc, "Cannot check content");
    const host = this.#host();
    const manifest = isManifestMediaType(desc.mediaType);
    const target = manifest && options.tag ? options.tag : desc.digest;
    const response = await this.#repo.request(host, {
      method: "HEAD",
      parts: [manifest ? "manifests" : "blobs", target],
      headers: { accept: `${desc.mediaType || "application/octet-stream"}, */*` },
      push: true,
      signal: options.signal,
    });
    await discard(response);
    if (response.status === 404) return false;
    if (!response.ok) {
      throw await this.#repo.responseError(
        host,
        response,
        `Cannot check ${desc.digest} in ${this.#repo.ref.name}`,
      );
    }
    if (manifest && options.tag) {
      return response.headers.get("docker-content-digest") === desc.digest;
    }
    return true;
  }

  /**
   * Pushes `desc` with the bytes of `source`, unless the registry has it already.
   *
   * @throws {TainerdError} InvalidArgument when the content does not match `desc`;
   *   PermissionDenied when the registry refuses; Unavailable when it keeps failing.
   */
  async push(desc: Descriptor, source: PushSource, options: PushOptions = {}): Promise<PushResult> {
    validateDescriptor(desc, "Cannot push");
    return isManifestMediaType(desc.mediaType)
      ? await this.#pushManifest(desc, source, options)
      : await this.#pushBlob(desc, source, options);
  }

  /** Puts the manifest `desc` (with `bytes`) under `tag` (default: the reference's tag). */
  async tag(
    desc: Descriptor,
    bytes: Uint8Array,
    tag?: string,
    signal?: AbortSignal,
  ): Promise<PushResult> {
    if (!isManifestMediaType(desc.mediaType)) {
      throw invalidArgument(`Cannot tag ${desc.digest}: ${desc.mediaType} is not a manifest type`);
    }
    return await this.push(desc, bytes, { tag: tag ?? true, signal });
  }

  async #pushManifest(
    desc: Descriptor,
    source: PushSource,
    options: PushOptions,
  ): Promise<PushResult> {
    const tag = this.#tagFor(options);
    const bytes = await readAll(source, MAX_MANIFEST_PUSH, desc);
    checkContent(desc, bytes);
    if (!options.force && await this.exists(desc, { tag, signal: options.signal })) {
      return { digest: desc.digest, status: "exists" };
    }
    const host = this.#host();
    const target = tag ?? desc.digest;
    const response = await this.#repo.request(host, {
      method: "PUT",
      parts: ["manifests", target],
      headers: { "content-type": desc.mediaType },
      body: bytes,
      push: true,
      signal: options.signal,
    });
    const context = `Cannot push manifest ${desc.digest} to ${this.#repo.ref.name}:${target}`;
    if (!response.ok) throw await this.#repo.responseError(host, response, context);
    await discard(response);
    const returned = response.headers.get("docker-content-digest");
    if (returned && returned !== desc.digest) {
      throw new TainerdError("Internal", `${context}: the registry stored digest ${returned}`);
    }
    return { digest: desc.digest, status: "pushed" };
  }

  async #pushBlob(desc: Descriptor, source: PushSource, options: PushOptions): Promise<PushResult> {
    if (!options.force && await this.exists(desc, { signal: options.signal })) {
      return { digest: desc.digest, status: "exists" };
    }
    const attempts = Math.max(1, options.attempts ?? 3);
    for (let attempt = 1;; attempt++) {
      try {
        return await this.#upload(desc, source, options);
      } catch (err) {
        const retryable = err instanceof TainerdError &&
          (err.kind === "Unavailable" || err.kind === "DeadlineExceeded");
        if (!retryable || attempt >= attempts) throw err;
        this.#repo.tuning.logger?.info("restarting a failed upload", {
          digest: desc.digest,
          attempt,
          error: (err as Error).message,
        });
        await sleep(250 * 2 ** (attempt - 1), options.signal);
      }
    }
  }

  async #upload(desc: Descriptor, source: PushSource, options: PushOptions): Promise<PushResult> {
    const repo = this.#repo;
    const host = this.#host();
    const context = `Cannot push ${desc.digest} to ${repo.ref.name}`;
    // Upload-session requests are not retried one by one: a half-applied PATCH would corrupt
    // the session. A failed session is started over as a whole (see #pushBlob).
    const start = async (from?: string): Promise<Response> => {
      const url = repo.url(host, ["blobs", "uploads", ""]);
      if (from) {
        url.searchParams.set("mount", desc.digest);
        url.searchParams.set("from", from);
      }
      return await repo.request(host, {
        method: "POST",
        url,
        headers: { "content-length": "0" },
        push: true,
        scopes: from ? [`repository:${from}:pull`] : [],
        signal: options.signal,
      });
    };
    let response: Response | undefined;
    for (const from of options.mountFrom ?? []) {
      if (from === repo.path) continue;
      const attempt = await start(from);
      if (attempt.status === 201) {
        await discard(attempt);
        return { digest: desc.digest, status: "mounted" };
      }
      if (attempt.status === 202) {
        // The mount did not happen, but an ordinary upload session was started.
        response = attempt;
        break;
      }
      repo.tuning.logger?.debug("cannot mount", { from, status: attempt.status });
      await discard(attempt);
    }
    response ??= await start();
    if (response.status === 201) {
      await discard(response);
      return { digest: desc.digest, status: "exists" };
    }
    if (response.status !== 202 && response.status !== 200 && response.status !== 204) {
      throw await this.#repo.responseError(host, response, context);
    }
    await discard(response);
    let location = this.#location(host, response, context);

    const digester = new Digester(parseDigest(desc.digest).algorithm);
    let finalBody: Uint8Array | undefined;
    const chunkSize = options.chunkSize;
    const limit = options.monolithicLimit ?? DEFAULT_MONOLITHIC_LIMIT;
    if (chunkSize !== undefined) {
      if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
        throw invalidArgument(`${context}: invalid chunk size ${chunkSize}`);
      }
      let offset = 0;
      for await (const chunk of rechunk(await openSource(source), chunkSize)) {
        digester.update(chunk);
        if (digester.size > desc.size) break;
        const patch = await repo.request(host, {
          method: "PATCH",
          url: location.url,
          authorize: location.authorize,
          headers: {
            "content-type": "application/octet-stream",
            "content-range": `${offset}-${offset + chunk.byteLength - 1}`,
          },
          body: chunk,
          push: true,
          signal: options.signal,
          retry: ONCE,
        });
        if (patch.status !== 202 && patch.status !== 204) {
          throw await this.#repo.responseError(host, patch, `${context}: chunk at ${offset}`);
        }
        await discard(patch);
        offset += chunk.byteLength;
        location = this.#location(host, patch, context, location);
      }
      checkDigester(desc, digester, context);
    } else if (source instanceof Uint8Array || desc.size <= limit) {
      finalBody = await readAll(source, Math.max(desc.size, 0) + 1, desc);
      digester.update(finalBody);
      checkDigester(desc, digester, context);
    } else {
      const stream = (await openSource(source)).pipeThrough(hashing(digester, desc.size, context));
      let used = false;
      const patch = await repo.request(host, {
        method: "PATCH",
        url: location.url,
        authorize: location.authorize,
        headers: { "content-type": "application/octet-stream" },
        body: () => {
          if (used) {
            throw new TainerdError("Unavailable", `${context}: the stream cannot be sent again`);
          }
          used = true;
          return stream;
        },
        push: true,
        signal: options.signal,
        retry: ONCE,
      });
      if (patch.status !== 202 && patch.status !== 204) {
        throw await this.#repo.responseError(host, patch, context);
      }
      await discard(patch);
      checkDigester(desc, digester, context);
      location = this.#location(host, patch, context, location);
    }

    const url = new URL(location.url);
    url.searchParams.set("digest", desc.digest);
    const put = await repo.request(host, {
      method: "PUT",
      url,
      authorize: location.authorize,
      headers: { "content-type": "application/octet-stream" },
      body: finalBody ?? new Uint8Array(0),
      push: true,
      signal: options.signal,
      retry: ONCE,
    });
    if (put.status !== 201 && put.status !== 200 && put.status !== 204) {
      throw await this.#repo.responseError(host, put, context);
    }
    await discard(put);
    const returned = put.headers.get("docker-content-digest");
    if (returned && returned !== desc.digest) {
      throw new TainerdError("Internal", `${context}: the registry stored digest ${returned}`);
    }
    return { digest: desc.digest, status: "pushed" };
  }

  /** Where the upload continues, from a response's `Location` (relative or absolute). */
  #location(
    host: RegistryHost,
    response: Response,
    context: string,
    previous?: { url: URL; authorize: boolean },
  ): { url: URL; authorize: boolean } {
    const location = response.headers.get("location");
    if (!location) {
      if (previous) return previous;
      throw new TainerdError("Internal", `${context}: the registry sent no upload location`);
    }
    const base = new URL(hostBaseUrl(host));
    let url: URL;
    try {
      url = new URL(
        location.includes("://") || location.startsWith("/")
          ? location
          : `${base.protocol}//${location}`,
        base,
      );
    } catch {
      throw new TainerdError(
        "Internal",
        `${context}: invalid upload location ${JSON.stringify(location)}`,
      );
    }
    // Credentials stay with the registry: an upload moved to another origin goes without them.
    return { url, authorize: url.origin === base.origin };
  }
}

async function openSource(source: PushSource): Promise<ReadableStream<Uint8Array>> {
  if (source instanceof Uint8Array) {
    return new ReadableStream({
      start(controller) {
        if (source.byteLength > 0) controller.enqueue(source);
        controller.close();
      },
    });
  }
  return await source();
}

async function readAll(source: PushSource, limit: number, desc: Descriptor): Promise<Uint8Array> {
  if (source instanceof Uint8Array) return source;
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of await source()) {
    size += chunk.byteLength;
    if (size > limit) {
      throw invalidArgument(
        `Cannot push ${desc.digest}: the content is larger than ${
          desc.size > 0 ? desc.size : limit
        } bytes`,
      );
    }
    chunks.push(chunk);
  }
  const out = new Uint8Array(size);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}

function checkContent(desc: Descriptor, bytes: Uint8Array): void {
  const digester = new Digester(parseDigest(desc.digest).algorithm).update(bytes);
  checkDigester(desc, digester, `Cannot push ${desc.digest}`);
}

function checkDigester(desc: Descriptor, digester: Digester, context: string): void {
  if (digester.size !== desc.size) {
    throw invalidArgument(
      `${context}: the content is ${
        digester.size > desc.size ? "more" : digester.size + " bytes, less"
      } than the descriptor's ${desc.size} bytes`,
    );
  }
  const actual = digester.digest();
  if (actual !== desc.digest) {
    throw invalidArgument(`${context}: the content's digest is ${actual}`);
  }
}

function hashing(
  digester: Digester,
  size: number,
  context: string,
): TransformStream<Uint8Array, Uint8Array> {
  return new TransformStream({
    transform(chunk, controller) {
      digester.update(chunk);
      if (digester.size > size) {
        throw invalidArgument(
          `${context}: the content is more than the descriptor's ${size} bytes`,
        );
      }
      controller.enqueue(chunk);
    },
  });
}

async function* rechunk(
  stream: ReadableStream<Uint8Array>,
  size: number,
): AsyncGenerator<Uint8Array> {
  let buffer = new Uint8Array(size);
  let filled = 0;
  for await (const chunk of stream) {
    let offset = 0;
    while (offset < chunk.byteLength) {
      const n = Math.min(size - filled, chunk.byteLength - offset);
      buffer.set(chunk.subarray(offset, offset + n), filled);
      filled += n;
      offset += n;
      if (filled === size) {
        yield buffer;
        buffer = new Uint8Array(size);
        filled = 0;
      }
    }
  }
  if (filled > 0) yield buffer.subarray(0, filled);
}
