/**
 * Client-side helpers for the content service: a {@link RemoteWriter} over the Write stream
 * (containerd's `content/proxy` remoteWriter: one request, one response) and
 * {@link readContent}, a blob as a stream of chunks.
 *
 * ```ts
 * const w = await RemoteWriter.open(client, "my-ref", { total: data.length, expected: digest });
 * await w.write(data);
 * await w.commit(data.length, digest);
 * w.close();
 * ```
 *
 * @module
 */

import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  WriteAction,
  type WriteContentRequestSchema,
  type WriteContentResponse,
} from "../api/gen/containerd/services/content/v1/content_pb.ts";
import { internal } from "../plugins/errdefs.ts";
import { fromConnectError } from "../server/errors.ts";
import type { TainerdClient } from "./client.ts";

type WriteRequestInit = MessageInitShape<typeof WriteContentRequestSchema>;

/** The state of a remote ingest, as a STAT answers it. */
export interface RemoteStatus {
  ref: string;
  offset: number;
  total: number;
  digest: string;
  startedAt?: Date;
  updatedAt?: Date;
}

/** A push-fed async iterable: the request side of a bidi stream. */
class Pushable<T> implements AsyncIterable<T> {
  readonly #items: T[] = [];
  #wake?: () => void;
  #ended = false;

  push(item: T): void {
    this.#items.push(item);
    this.#wake?.();
  }

  end(): void {
    this.#ended = true;
    this.#wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.#items.length > 0) {
        yield this.#items.shift()!;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }
}

/** A writer of one remote ingest; every call is one request and its response. */
export class RemoteWriter {
  /** The ingest's ref. */
  readonly ref: string;
  /** The offset the next write goes to. */
  offset: number;
  /** The digest of what was written so far, as the server last reported it. */
  digest = "";
  readonly #requests: Pushable<WriteRequestInit>;
  readonly #responses: AsyncIterator<WriteContentResponse>;
  readonly #abort: AbortController;
  #busy: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(
    ref: string,
    requests: Pushable<WriteRequestInit>,
    responses: AsyncIterator<WriteContentResponse>,
    abort: AbortController,
  ) {
    this.ref = ref;
    this.offset = 0;
    this.#requests = requests;
    this.#responses = responses;
    this.#abort = abort;
  }

  /**
   * Opens the Write stream and negotiates (a STAT carrying the ref, total and expected
   * digest). AlreadyExists when the namespace has the expected blob; Unavailable while
   * another writer holds the ref. The writer resumes at the offset the server reports.
   */
  static async open(
    client: TainerdClient,
    ref: string,
    opts: { total?: number; expected?: string; signal?: AbortSignal } = {},
  ): Promise<RemoteWriter> {
    const requests = new Pushable<WriteRequestInit>();
    const abort = new AbortController();
    opts.signal?.addEventListener("abort", () => abort.abort(opts.signal?.reason));
    const responses = client.content.write(requests, { signal: abort.signal })[
      Symbol.asyncIterator
    ]();
    const w = new RemoteWriter(ref, requests, responses, abort);
    const resp = await w.#send({
      action: WriteAction.STAT,
      ref,
      total: BigInt(opts.total ?? 0),
      expected: opts.expected ?? "",
    });
    w.offset = Number(resp.offset);
    return w;
  }

  #send(req: WriteRequestInit): Promise<WriteContentResponse> {
    const run = async () => {
      if (this.#closed) throw internal(`The writer of ref "${this.ref}" is closed`);
      this.#requests.push(req);
      let next: IteratorResult<WriteContentResponse>;
      try {
        next = await this.#responses.next();
      } catch (err) {
        this.#closed = true;
        throw fromConnectError(err);
      }
      if (next.done) {
        this.#closed = true;
        throw internal(`The server ended the write stream of ref "${this.ref}"`);
      }
      if (next.value.digest !== "") this.digest = next.value.digest;
      return next.value;
    };
    const result = this.#busy.then(run, run);
    this.#busy = result.catch(() => {});
    return result;
  }

  /** The ingest's state (a STAT). */
  async status(): Promise<RemoteStatus> {
    const resp = await this.#send({ action: WriteAction.STAT });
    return {
      ref: this.ref,
      offset: Number(resp.offset),
      total: Number(resp.total),
      digest: resp.digest,
      startedAt: resp.startedAt ? timestampDate(resp.startedAt) : undefined,
      updatedAt: resp.updatedAt ? timestampDate(resp.updatedAt) : undefined,
    };
  }

  /**
   * Writes `data` at `offset` (the current offset by default; 0 starts the ingest over).
   * Returns the offset after the write.
   */
  async write(data: Uint8Array, offset: number = this.offset): Promise<number> {
    const resp = await this.#send({ action: WriteAction.WRITE, offset: BigInt(offset), data });
    this.offset = Number(resp.offset);
    return this.offset;
  }

  /**
   * Commits with the expected size and digest (0 and "" to skip a check) and labels, then
   * closes the stream. Returns the digest. AlreadyExists when the namespace has the blob.
   */
  async commit(size = 0, expected = "", labels?: Record<string, string>): Promise<string> {
    try {
      const resp = await this.#send({
        action: WriteAction.COMMIT,
        offset: BigInt(this.offset),
        total: BigInt(size),
        expected,
        labels,
      });
      this.offset = Number(resp.offset);
      return resp.digest;
    } finally {
      this.close();
    }
  }

  /** Ends the request stream (the ingest stays on the server, to be resumed). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#requests.end();
    // Drain the end of the stream so the call finishes cleanly.
    this.#responses.next().catch(() => {});
  }

  /** Cancels the call at once. */
  cancel(): void {
    this.#closed = true;
    this.#requests.end();
    this.#abort.abort();
  }
}

/** A blob (or a range of it) as a stream of chunks, read through the content service. */
export async function* readContent(
  client: TainerdClient,
  digest: string,
  opts: { offset?: number; size?: number; signal?: AbortSignal } = {},
): AsyncGenerator<Uint8Array> {
  const stream = client.content.read(
    { digest, offset: BigInt(opts.offset ?? 0), size: BigInt(opts.size ?? 0) },
    { signal: opts.signal },
  );
  try {
    for await (const resp of stream) yield resp.data;
  } catch (err) {
    throw fromConnectError(err);
  }
}
