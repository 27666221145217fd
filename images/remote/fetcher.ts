/**
 * The fetcher, as containerd's `dockerFetcher` plus its `httpReadSeeker`: streams a blob
 * (manifests from `/manifests/<digest>`, everything else from `/blobs/<digest>`, alternate
 * `urls` first) and verifies it as it streams — more bytes than the descriptor's size fail at
 * once, and the digest is checked before the stream ends, so a consumer that commits only on
 * a clean end never commits wrong bytes. A connection that drops mid-blob is resumed with
 * `Range: bytes=<offset>-` (a 206 must start at the offset; a 200 is skipped up to it).
 *
 * @module
 */

import {
  canceled,
  invalidArgument,
  notFound,
  outOfRange,
  TainerdError,
} from "../../plugins/errdefs.ts";
import { Digester, parseDigest } from "../../plugins/content/digest.ts";
import { type Descriptor, validateDescriptor } from "./descriptor.ts";
import { discard, responseError } from "./errors.ts";
import { isManifestMediaType } from "./media_types.ts";
import type { Repository } from "./repository.ts";
import type { RegistryHost } from "./hosts.ts";
import { sleep } from "./http.ts";

/** Options of {@link Fetcher.fetch}. */
export interface FetchOptions {
  /** Start at this byte (resume an ingest); the stream yields the bytes from there. */
  offset?: number;
  /**
   * With an offset: a digester already fed with the first `offset` bytes, so the digest can
   * still be verified. Without one, only the size is checked and the writer must verify the
   * digest when it commits.
   */
  digester?: Digester;
  /** How many times in a row to resume without getting a byte further (default 3). */
  maxResumes?: number;
  signal?: AbortSignal;
}

/** Fetches blobs of one repository. */
export class Fetcher {
  readonly #repo: Repository;

  constructor(repo: Repository) {
    this.#repo = repo;
  }

  /** The repository fetched from. */
  get repository(): Repository {
    return this.#repo;
  }

  /**
   * Opens the blob of `desc` and returns its bytes (from `offset`) as a verified stream. The
   * first request is made before this returns, so NotFound and access errors surface here;
   * transfer and verification errors surface from the stream.
   *
   * @throws {TainerdError} NotFound when no host has it; OutOfRange for an offset past the
   *   end. The stream errors with FailedPrecondition on a size or digest mismatch.
   */
  async fetch(desc: Descriptor, options: FetchOptions = {}): Promise<ReadableStream<Uint8Array>> {
    validateDescriptor(desc, "Cannot fetch");
    const size = desc.size;
    const start = options.offset ?? 0;
    if (!Number.isSafeInteger(start) || start < 0) {
      throw invalidArgument(`Cannot fetch ${desc.digest}: invalid offset ${start}`);
    }
    if (start > size) {
      throw outOfRange(`Cannot fetch ${desc.digest}: offset ${start} is past its size ${size}`);
    }
    let digester: Digester | undefined;
    if (start === 0) {
      digester = new Digester(parseDigest(desc.digest).algorithm);
    } else if (options.digester) {
      if (options.digester.size !== start) {
        throw invalidArgument(
          `Cannot fetch ${desc.digest}: the digester has seen ${options.digester.size} bytes, not ${start}`,
        );
      }
      digester = options.digester;
    }
    const maxResumes = options.maxResumes ?? 3;
    const logger = this.#repo.tuning.logger;
    const what = `${desc.digest} (${desc.mediaType || "unknown media type"})`;
    let position = start;
    let reader = (await this.#open(desc, position, options.signal)).getReader();
    let stalls = 0;
    const mismatch = (message: string) =>
      new TainerdError(
        "FailedPrecondition",
        `Cannot fetch ${what} from ${this.#repo.ref.name}: ${message}`,
      );

    const resume = async (cause: unknown): Promise<void> => {
      if (options.signal?.aborted) throw canceled(`Cannot fetch ${what}: canceled`, { cause });
      if (cause instanceof TainerdError && cause.kind === "Canceled") throw cause;
      stalls++;
      if (stalls > maxResumes) {
        const reason = cause instanceof Error ? cause.message : String(cause);
        throw new TainerdError(
          "Unavailable",
          `Cannot fetch ${what}: the transfer broke off at byte ${position} of ${size} ` +
            `${stalls} times without progress (${reason})`,
          { cause },
        );
      }
      logger?.info("resuming an interrupted download", {
        digest: desc.digest,
        offset: position,
        size,
        attempt: stalls,
      });
      reader.cancel().catch(() => {});
      await sleep(Math.min(2000, 100 * 2 ** (stalls - 1)), options.signal);
      reader = (await this.#open(desc, position, options.signal)).getReader();
    };

    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        for (;;) {
          let result: ReadableStreamReadResult<Uint8Array>;
          try {
            result = await reader.read();
          } catch (err) {
            try {
              await resume(err);
            } catch (fatal) {
              controller.error(fatal);
              return;
            }
            continue;
          }
          if (result.done) {
            if (position < size) {
              // The body ended cleanly but short (no length to enforce it): resume as a drop.
              try {
                await resume(new Error(`the body ended after ${position} of ${size} bytes`));
              } catch (fatal) {
                controller.error(fatal);
                return;
              }
              continue;
            }
            if (digester) {
              const actual = digester.digest();
              if (actual !== desc.digest) {
                controller.error(
                  mismatch(`digest mismatch: the registry sent content with digest ${actual}`),
                );
                return;
              }
            }
            controller.close();
            return;
          }
          const chunk = result.value;
          if (position + chunk.byteLength > size) {
            reader.cancel().catch(() => {});
            controller.error(mismatch(`size mismatch: the registry sent more than ${size} bytes`));
            return;
          }
          if (chunk.byteLength === 0) continue;
          digester?.update(chunk);
          position += chunk.byteLength;
          stalls = 0;
          controller.enqueue(chunk);
          return;
        }
      },
      cancel: async (reason) => {
        await reader.cancel(reason).catch(() => {});
      },
    }, { highWaterMark: 0 });
  }

  /** The response body positioned at `offset`, from the first URL or host that has it. */
  async #open(
    desc: Descriptor,
    offset: number,
    signal?: AbortSignal,
  ): Promise<ReadableStream<Uint8Array>> {
    const repo = this.#repo;
    const headers = new Headers({ accept: `${desc.mediaType || "application/octet-stream"}, */*` });
    if (offset > 0) headers.set("range", `bytes=${offset}-`);
    let firstError: TainerdError | undefined;
    const hosts = repo.requireHosts("fetch", "pull");

    for (const raw of desc.urls ?? []) {
      let url: URL;
      try {
        url = new URL(raw);
      } catch {
        continue;
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") continue;
      try {
        const response = await repo.request(hosts[0], {
          method: "GET",
          url,
          headers,
          authorize: false,
          signal,
        });
        return await this.#positioned(response, desc, offset, url.href, undefined);
      } catch (err) {
        if (err instanceof TainerdError && err.kind === "NotFound") continue;
        throw err;
      }
    }

    const kind = isManifestMediaType(desc.mediaType) ? "manifests" : "blobs";
    for (const host of hosts) {
      try {
        const response = await repo.request(host, {
          method: "GET",
          parts: [kind, desc.digest],
          headers,
          namespace: true,
          signal,
        });
        return await this.#positioned(response, desc, offset, host.host, host);
      } catch (err) {
        if (!(err instanceof TainerdError) || err.kind === "Canceled") throw err;
        repo.tuning.logger?.debug("trying next host", { host: host.host, error: err.message });
        firstError ??= err;
      }
    }
    throw firstError ?? notFound(`Cannot fetch ${desc.digest} from ${repo.ref.name}: not found`);
  }

  async #positioned(
    response: Response,
    desc: Descriptor,
    offset: number,
    where: string,
    host: RegistryHost | undefined,
  ): Promise<ReadableStream<Uint8Array>> {
    const context = `Cannot fetch ${desc.digest} from ${this.#repo.ref.name} on ${where}`;
    if (response.status === 404) {
      await discard(response);
      throw notFound(`${context}: not found`);
    }
    if (!response.ok) {
      throw host
        ? await this.#repo.responseError(host, response, context)
        : await responseError(response, context);
    }
    const body = response.body ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() });
    if (offset === 0) return body;
    if (response.status === 206) {
      const range = response.headers.get("content-range");
      if (range && !range.startsWith(`bytes ${offset}-`)) {
        await discard(response);
        throw new TainerdError(
          "Unavailable",
          `${context}: unexpected content range ${JSON.stringify(range)}`,
        );
      }
      return body;
    }
    // 200: the server ignored the range; skip to the offset.
    return body.pipeThrough(skipBytes(offset, context));
  }
}

function skipBytes(count: number, context: string): TransformStream<Uint8Array, Uint8Array> {
  let left = count;
  return new TransformStream({
    transform(chunk, controller) {
      if (left === 0) {
        controller.enqueue(chunk);
      } else if (chunk.byteLength <= left) {
        left -= chunk.byteLength;
      } else {
        controller.enqueue(chunk.subarray(left));
        left = 0;
      }
    },
    flush() {
      if (left > 0) throw new Error(`${context}: the body ended before the resume offset`);
    },
  });
}

/** Where fetched bytes go: the subset of the content store's writer the fetch path needs. */
export interface BlobWriter {
  /** Appends a chunk. */
  write(chunk: Uint8Array): Promise<unknown>;
  /** How many bytes the ingest holds (where to resume). */
  status(): { offset: number };
  /** Verifies size and digest and commits. */
  commit(size: number, expected: string): Promise<unknown>;
  /** Cuts the ingest back (used when it holds more bytes than the blob has). */
  truncate?(size: number): Promise<void>;
}

/** Options of {@link fetchToWriter}. */
export interface FetchToWriterOptions {
  signal?: AbortSignal;
  /**
   * Gives an empty writer for the same blob (e.g. abort the ingest and open it again). Called
   * when a resumed ingest fails verification at commit, to fetch the blob again from the
   * start, once. Without it that failure is thrown.
   */
  restart?: () => Promise<BlobWriter>;
}

/**
 * Fetches `desc` into `writer`, resuming from the writer's offset (a `Range` request), and
 * commits it with the expected size and digest. Wrong bytes are never committed: from offset
 * 0 the stream fails before its end on a mismatch, and when resuming the writer verifies at
 * commit.
 */
export async function fetchToWriter(
  fetcher: Fetcher,
  desc: Descriptor,
  writer: BlobWriter,
  options: FetchToWriterOptions = {},
): Promise<void> {
  let offset = writer.status().offset;
  if (offset > desc.size) {
    if (!writer.truncate) {
      throw new TainerdError(
        "FailedPrecondition",
        `Cannot fetch ${desc.digest}: the ingest holds ${offset} bytes, more than its size ${desc.size}`,
      );
    }
    await writer.truncate(0);
    offset = 0;
  }
  for (let round = 0;; round++) {
    if (offset < desc.size) {
      const stream = await fetcher.fetch(desc, { offset, signal: options.signal });
      for await (const chunk of stream) await writer.write(chunk);
    }
    try {
      await writer.commit(desc.size, desc.digest);
      return;
    } catch (err) {
      const retry = offset > 0 && round === 0 && options.restart !== undefined &&
        err instanceof TainerdError && err.kind === "FailedPrecondition";
      if (!retry) throw err;
      fetcher.repository.tuning.logger?.warn("resumed ingest failed verification; fetching again", {
        digest: desc.digest,
      });
      writer = await options.restart!();
      offset = writer.status().offset;
    }
  }
}
