/**
 * A ttrpc client: one connection, many concurrent unary calls (odd, increasing stream ids),
 * and typed per-service clients derived from the generated service descriptors.
 *
 * ```ts
 * const client = await TtrpcClient.connect("/run/tainerd/s/abc");
 * const task = createTtrpcClient(Task, client);
 * const { pid } = await task.create({ id: "abc", bundle }, { timeoutMs: 10_000 });
 * await client.close();
 * ```
 *
 * @module
 */

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type {
  DescMessage,
  DescMethod,
  DescService,
  MessageInitShape,
  MessageShape,
} from "@bufbuild/protobuf";
import { canceled, TainerdError, unavailable } from "../plugins/errdefs.ts";
import { Code, StatusError, statusToError } from "./codes.ts";
import type { MethodInput, MethodOutput, UnaryIO } from "./method_types.ts";
import {
  type Frame,
  FrameReader,
  FrameTooLargeError,
  FrameWriter,
  isConnectionGone,
  MAX_MESSAGE_LENGTH,
  MessageType,
} from "./frame.ts";
import {
  decodeResponse,
  encodeRequest,
  type MetadataInit,
  metadataToKeyValues,
} from "./messages.ts";

/** Per-call options. */
export interface CallOptions {
  /**
   * How long to wait, in milliseconds. Sent to the server as `timeout_nano`; when it passes
   * the call rejects with a `DeadlineExceeded` TainerdError.
   */
  timeoutMs?: number;
  /** Metadata sent with the call, merged over the client's default metadata. */
  metadata?: MetadataInit;
  /** Aborting rejects the call with a `Canceled` TainerdError (the server is not told). */
  signal?: AbortSignal;
}

/** Options for {@link TtrpcClient}. */
export interface TtrpcClientOptions {
  /** Metadata sent with every call (e.g. `containerd-namespace-ttrpc`). */
  metadata?: MetadataInit;
  /** Maximum frame data length. Default 4 MiB. */
  maxMessageLength?: number;
  /** A name for the peer used in error messages (default: the socket path, if known). */
  peer?: string;
}

interface Pending {
  resolve(payload: Uint8Array): void;
  reject(err: unknown): void;
}

/** A ttrpc connection that sends unary calls. */
export class TtrpcClient {
  readonly #conn: Deno.Conn;
  readonly #reader: FrameReader;
  readonly #writer: FrameWriter;
  readonly #pending = new Map<number, Pending>();
  readonly #metadata: MetadataInit | undefined;
  readonly #max: number;
  readonly #peer: string;
  readonly #done: Promise<void>;
  #nextId = 1;
  #error: TainerdError | undefined;

  /**
   * Connects to a ttrpc server on a unix socket.
   *
   * @throws {TainerdError} `Unavailable` (or `NotFound` if the socket does not exist)
   */
  static async connect(path: string, options: TtrpcClientOptions = {}): Promise<TtrpcClient> {
    let conn: Deno.Conn;
    try {
      conn = await Deno.connect({ transport: "unix", path });
    } catch (err) {
      const detail = err instanceof Error ? err.message : String(err);
      throw new TainerdError(
        err instanceof Deno.errors.NotFound ? "NotFound" : "Unavailable",
        `Cannot connect to ttrpc server at ${path}: ${detail}`,
        { cause: err },
      );
    }
    return new TtrpcClient(conn, { peer: path, ...options });
  }

  /**
   * Wraps an open connection; the client owns it from now on.
   *
   * @param conn a connected socket
   * @param options default metadata and limits
   */
  constructor(conn: Deno.Conn, options: TtrpcClientOptions = {}) {
    this.#conn = conn;
    this.#max = options.maxMessageLength ?? MAX_MESSAGE_LENGTH;
    this.#reader = new FrameReader(conn, { maxMessageLength: this.#max });
    this.#writer = new FrameWriter(conn);
    this.#metadata = options.metadata;
    const addr = conn.remoteAddr;
    this.#peer = options.peer ??
      (addr.transport === "unix" && addr.path ? addr.path : "the ttrpc server");
    this.#done = this.#loop();
  }

  /** Resolves when the connection has ended (closed by either side). Never rejects. */
  get done(): Promise<void> {
    return this.#done;
  }

  /** Whether the connection has ended; every later call rejects with `Unavailable`. */
  get closed(): boolean {
    return this.#error !== undefined;
  }

  /** Number of calls waiting for a response. */
  get pendingCalls(): number {
    return this.#pending.size;
  }

  async #loop(): Promise<void> {
    let reason: TainerdError | undefined;
    while (this.#error === undefined) {
      let frame: Frame | null;
      try {
        frame = await this.#reader.read();
      } catch (err) {
        if (err instanceof FrameTooLargeError) {
          const p = this.#pending.get(err.header.streamId);
          this.#pending.delete(err.header.streamId);
          p?.reject(new StatusError(Code.ResourceExhausted, err.message));
          continue;
        }
        if (this.#error === undefined && !isConnectionGone(err)) {
          const detail = err instanceof Error ? err.message : String(err);
          reason = unavailable(`The ttrpc connection to ${this.#peer} failed: ${detail}`, {
            cause: err,
          });
        }
        break;
      }
      if (frame === null) break;
      if (frame.type !== MessageType.Response) continue; // no streams: ignore data frames
      const p = this.#pending.get(frame.streamId);
      if (!p) continue; // timed out or canceled already
      this.#pending.delete(frame.streamId);
      try {
        const resp = decodeResponse(frame.data);
        if (resp.status && resp.status.code !== Code.OK) p.reject(statusToError(resp.status));
        else p.resolve(resp.payload);
      } catch (err) {
        p.reject(
          new StatusError(
            Code.Internal,
            `Cannot decode a ttrpc response from ${this.#peer}: ${
              err instanceof Error ? err.message : err
            }`,
          ),
        );
      }
    }
    this.#fail(reason ?? unavailable(`The ttrpc connection to ${this.#peer} closed`));
  }

  /** Ends the connection: closes the socket and rejects every pending call with `err`. */
  #fail(err: TainerdError): void {
    if (this.#error === undefined) {
      this.#error = err;
      try {
        this.#conn.close();
      } catch { /* already closed */ }
    }
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.reject(this.#error);
  }

  /**
   * Sends a call with an encoded request; resolves with the encoded response.
   *
   * @param service fully qualified service name, e.g. `containerd.task.v2.Task`
   * @param method method name as in the proto, e.g. `Create`
   * @throws {TainerdError} the server's status mapped to a kind ({@link StatusError});
   *   `Unavailable` if the connection is or gets lost; `DeadlineExceeded`; `Canceled`
   */
  callRaw(
    service: string,
    method: string,
    payload: Uint8Array,
    options: CallOptions = {},
  ): Promise<Uint8Array> {
    if (this.#error) return Promise.reject(this.#error);
    const { timeoutMs, signal } = options;
    if (signal?.aborted) {
      return Promise.reject(canceled(`Call to ${service}/${method} was canceled`));
    }
    if (this.#nextId > 0xffffffff) {
      this.#fail(unavailable(`The ttrpc connection to ${this.#peer} ran out of stream ids`));
      return Promise.reject(this.#error);
    }
    const id = this.#nextId;
    this.#nextId += 2;
    const data = encodeRequest({
      service,
      method,
      payload,
      timeoutNano: timeoutMs !== undefined && timeoutMs > 0
        ? BigInt(Math.ceil(timeoutMs * 1e6))
        : 0n,
      metadata: metadataToKeyValues(this.#metadata, options.metadata),
    });
    if (data.length > this.#max) {
      return Promise.reject(
        new StatusError(
          Code.ResourceExhausted,
          `Request to ${service}/${method} is ${data.length} bytes, over the maximum message size of ${this.#max}`,
        ),
      );
    }
    return new Promise<Uint8Array>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () => {
        if (this.#pending.delete(id)) {
          finish();
          reject(canceled(`Call to ${service}/${method} was canceled`, { cause: signal?.reason }));
        }
      };
      const finish = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      this.#pending.set(id, {
        resolve: (v) => (finish(), resolve(v)),
        reject: (e) => (finish(), reject(e)),
      });
      if (timeoutMs !== undefined && timeoutMs > 0 && timeoutMs < 0x7fffffff) {
        timer = setTimeout(() => {
          if (this.#pending.delete(id)) {
            finish();
            reject(
              new TainerdError(
                "DeadlineExceeded",
                `Call to ${service}/${method} timed out after ${timeoutMs}ms`,
              ),
            );
          }
        }, timeoutMs);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#writer.write({ streamId: id, type: MessageType.Request, flags: 0, data }).catch(
        (err) => {
          const detail = err instanceof Error ? err.message : String(err);
          this.#fail(
            unavailable(`Cannot send to the ttrpc server at ${this.#peer}: ${detail}`, {
              cause: err,
            }),
          );
        },
      );
    });
  }

  /**
   * Calls a unary method of `service`, encoding the request and decoding the response with
   * the method's schemas.
   *
   * @param method the method's `localName` (e.g. `version`) or proto name (e.g. `Version`)
   * @throws {TainerdError} as {@link TtrpcClient.callRaw}
   */
  async call<S extends DescService, K extends keyof S["method"] & string>(
    service: S,
    method: K,
    request?: MessageInitShape<MethodInput<S["method"][K]>>,
    options?: CallOptions,
  ): Promise<MessageShape<MethodOutput<S["method"][K]>>> {
    const m = findMethod(service, method);
    const payload = toBinary(m.input, create(m.input, request as MessageInitShape<DescMessage>));
    const out = await this.callRaw(service.typeName, m.name, payload, options);
    try {
      return fromBinary(m.output, out) as MessageShape<MethodOutput<S["method"][K]>>;
    } catch (err) {
      throw new StatusError(
        Code.Internal,
        `Cannot decode the ${m.output.typeName} response of ${service.typeName}/${m.name}: ${
          err instanceof Error ? err.message : err
        }`,
      );
    }
  }

  /**
   * Closes the connection; pending calls reject with `Unavailable`. Resolves when the
   * connection has ended.
   */
  close(): Promise<void> {
    this.#fail(unavailable(`The ttrpc connection to ${this.#peer} was closed by the client`));
    return this.#done;
  }
}

/** Finds a unary method by local or proto name. */
function findMethod(service: DescService, name: string): DescMethod {
  const m = service.method[name] ?? service.methods.find((x) => x.name === name);
  if (!m) {
    throw new StatusError(Code.Unimplemented, `Service ${service.typeName} has no method ${name}`);
  }
  if (m.methodKind !== "unary") {
    throw new StatusError(
      Code.Unimplemented,
      `Method ${service.typeName}/${m.name} is ${m.methodKind}; only unary calls are supported`,
    );
  }
  return m;
}

/**
 * A typed client for one service: one async method per unary RPC, named by the RPC's
 * `localName`, taking the request's init shape and resolving the response message.
 * Streaming RPCs are typed `never`.
 */
export type TtrpcServiceClient<S extends DescService> = {
  [K in keyof S["method"]]: [UnaryIO<S["method"][K]>] extends [never] ? never
    : (
      request?: MessageInitShape<UnaryIO<S["method"][K]>["input"]>,
      options?: CallOptions,
    ) => Promise<MessageShape<UnaryIO<S["method"][K]>["output"]>>;
};

/**
 * Creates a typed client for `service` over `client`'s connection (as Connect's
 * `createClient`).
 *
 * ```ts
 * const version = createTtrpcClient(Version, client);
 * const { version: v } = await version.version({});
 * ```
 */
export function createTtrpcClient<S extends DescService>(
  service: S,
  client: TtrpcClient,
): TtrpcServiceClient<S> {
  const out: Record<string, unknown> = {};
  for (const m of service.methods) {
    out[m.localName] = (request?: MessageInitShape<DescMessage>, options?: CallOptions) =>
      client.call(service as DescService, m.localName, request, options);
  }
  return out as TtrpcServiceClient<S>;
}
