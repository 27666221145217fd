/**
 * A ttrpc server: services registered from their protobuf descriptors, served on unix socket
 * listeners. Unary calls only (all that containerd 1.6's shim API uses); requests on one
 * connection run concurrently and their responses go out as they finish, one frame at a time.
 *
 * @module
 */

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { TainerdError } from "../plugins/errdefs.ts";
import type { UnaryIO } from "./method_types.ts";
import { Code, errorToStatus, StatusError, type StatusLike } from "./codes.ts";
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
  decodeRequest,
  encodeResponse,
  type Metadata,
  metadataFromKeyValues,
  type Request,
} from "./messages.ts";

/** What a handler knows about the call it serves. */
export interface TtrpcContext {
  /** Fully qualified service name, e.g. `containerd.task.v2.Task`. */
  readonly service: string;
  /** Method name as in the proto, e.g. `Create`. */
  readonly method: string;
  /** The request metadata (e.g. `containerd-namespace-ttrpc`). */
  readonly metadata: Metadata;
  /**
   * Aborted when the caller's deadline (`timeout_nano`) passes (reason: a `DeadlineExceeded`
   * TainerdError), or when the connection or server goes away (reason: `Canceled`).
   */
  readonly signal: AbortSignal;
  /** The caller's deadline in epoch milliseconds, if it set one. */
  readonly deadline?: number;
}

/** A unary handler over decoded messages. It may return a message or its init shape. */
export type UnaryHandler<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  ctx: TtrpcContext,
) => Promise<MessageInitShape<O>> | MessageInitShape<O>;

/** A handler over encoded messages: request payload in, response payload out. */
export type RawHandler = (
  payload: Uint8Array,
  ctx: TtrpcContext,
) => Promise<Uint8Array> | Uint8Array;

/**
 * The implementation of a service: one handler per unary method, keyed by the method's
 * `localName` (e.g. `version`, `check`). Missing methods answer `Unimplemented`.
 */
export type ServiceImpl<S extends DescService> = {
  [K in keyof S["method"]]?: [UnaryIO<S["method"][K]>] extends [never] ? never
    : UnaryHandler<UnaryIO<S["method"][K]>["input"], UnaryIO<S["method"][K]>["output"]>;
};

/** Options for {@link TtrpcServer}. */
export interface TtrpcServerOptions {
  /** Called with errors the server cannot report to a caller (accept failures, bad frames). */
  onError?: (err: unknown) => void;
  /** Maximum frame data length. Default 4 MiB. */
  maxMessageLength?: number;
  /** Called for every request (activity, e.g. for an idle memory reclaimer). */
  onRequest?: () => void;
}

const notImplemented = (message: string) => new StatusError(Code.Unimplemented, message);

/** A ttrpc server. Register services, then {@link TtrpcServer.serve} listeners. */
export class TtrpcServer {
  readonly #services = new Map<string, Map<string, RawHandler>>();
  readonly #listeners = new Set<Deno.Listener>();
  readonly #connections = new Set<ServerConnection>();
  readonly #onError: (err: unknown) => void;
  readonly #max: number;
  /** Called for every request. */
  readonly onRequest: (() => void) | undefined;
  #state: "open" | "shutdown" | "closed" = "open";

  /**
   * Creates a server with no services registered.
   *
   * @param options error reporting and limits
   */
  constructor(options: TtrpcServerOptions = {}) {
    this.#onError = options.onError ?? (() => {});
    this.#max = options.maxMessageLength ?? MAX_MESSAGE_LENGTH;
    this.onRequest = options.onRequest;
  }

  /**
   * Registers the unary methods of `service` implemented by `impl`. Requests are decoded with
   * the method's input schema and responses encoded with its output schema.
   *
   * @throws {TypeError} if `impl` names a method the service lacks, or a streaming method
   */
  register<S extends DescService>(service: S, impl: ServiceImpl<S>): void {
    const handlers = impl as Record<string, UnaryHandler<DescMessage, DescMessage> | undefined>;
    for (const name of Object.keys(handlers)) {
      const method = service.method[name];
      if (!method) throw new TypeError(`Service ${service.typeName} has no method "${name}"`);
      if (method.methodKind !== "unary") {
        throw new TypeError(
          `Method ${service.typeName}/${method.name} is ${method.methodKind}; only unary is supported`,
        );
      }
    }
    for (const method of service.methods) {
      const handler = handlers[method.localName];
      if (!handler) continue;
      this.registerRaw(service.typeName, method.name, async (payload, ctx) => {
        let request: MessageShape<DescMessage>;
        try {
          request = fromBinary(method.input, payload);
        } catch (err) {
          throw new StatusError(
            Code.InvalidArgument,
            `Cannot decode the ${method.input.typeName} request of ${ctx.service}/${ctx.method}: ${
              err instanceof Error ? err.message : String(err)
            }`,
          );
        }
        const response = await handler(request, ctx);
        return toBinary(method.output, create(method.output, response));
      });
    }
  }

  /**
   * Registers one method over encoded payloads, for services without a descriptor.
   *
   * @param service fully qualified service name
   * @param method method name as in the proto
   */
  registerRaw(service: string, method: string, handler: RawHandler): void {
    let methods = this.#services.get(service);
    if (!methods) this.#services.set(service, methods = new Map());
    methods.set(method, handler);
  }

  /** Looks up a handler; throws `Unimplemented` when there is none. */
  lookup(service: string, method: string): RawHandler {
    const methods = this.#services.get(service);
    if (!methods) throw notImplemented(`Service ${service} is not implemented`);
    const handler = methods.get(method);
    if (!handler) throw notImplemented(`Method ${service}/${method} is not implemented`);
    return handler;
  }

  /**
   * Accepts connections on `listener` until it is closed or the server shuts down. Resolves
   * then; the listener is closed by the server.
   */
  async serve(listener: Deno.Listener): Promise<void> {
    if (this.#state !== "open") {
      listener.close();
      throw new TainerdError("Unavailable", "The ttrpc server is closed");
    }
    this.#listeners.add(listener);
    try {
      while (true) {
        let conn: Deno.Conn;
        try {
          conn = await listener.accept();
        } catch (err) {
          if (this.#state !== "open" || err instanceof Deno.errors.BadResource) return;
          this.#onError(err);
          await new Promise((r) => setTimeout(r, 10));
          continue;
        }
        if (this.#state !== "open") {
          conn.close();
          return;
        }
        this.serveConn(conn);
      }
    } finally {
      if (this.#listeners.delete(listener)) {
        try {
          listener.close();
        } catch { /* already closed */ }
      }
    }
  }

  /**
   * Serves one already-accepted connection. Resolves when it has ended (peer gone, server
   * closed) and every response has been written or abandoned.
   */
  serveConn(conn: Deno.Conn): Promise<void> {
    const sc = new ServerConnection(this, conn, this.#max, this.#onError);
    this.#connections.add(sc);
    if (this.#state === "shutdown") sc.closeWhenIdle();
    return sc.run().finally(() => this.#connections.delete(sc));
  }

  /** Stops accepting connections (closes every listener). */
  #closeListeners(): void {
    for (const l of this.#listeners) {
      try {
        l.close();
      } catch { /* already closed */ }
    }
    this.#listeners.clear();
  }

  /**
   * Graceful stop: closes the listeners, lets in-flight calls finish and closes each
   * connection once it is idle. Resolves when every connection has closed. If `signal`
   * aborts first, falls back to {@link TtrpcServer.close}.
   */
  async shutdown(signal?: AbortSignal): Promise<void> {
    if (this.#state === "open") this.#state = "shutdown";
    this.#closeListeners();
    const done = Promise.all([...this.#connections].map((c) => c.closeWhenIdle()));
    if (!signal) return void await done;
    const aborted = new Promise<void>((resolve) => {
      if (signal.aborted) resolve();
      signal.addEventListener("abort", () => resolve(), { once: true });
    });
    await Promise.race([done, aborted]);
    if (signal.aborted) await this.close();
  }

  /**
   * Immediate stop: closes the listeners and every connection; in-flight handlers are
   * aborted (`Canceled`) and callers see the connection drop. Resolves when all have ended.
   */
  async close(): Promise<void> {
    this.#state = "closed";
    this.#closeListeners();
    await Promise.all([...this.#connections].map((c) => c.close()));
  }
}

/** One accepted connection: a frame-reading loop and the calls in flight on it. */
class ServerConnection {
  readonly #server: TtrpcServer;
  readonly #conn: Deno.Conn;
  readonly #reader: FrameReader;
  readonly #writer: FrameWriter;
  readonly #max: number;
  readonly #onError: (err: unknown) => void;
  readonly #inflight = new Map<number, Promise<void>>();
  readonly #replies = new Set<Promise<void>>();
  readonly #controllers = new Set<AbortController>();
  #lastStreamId = 0;
  #closed = false;
  #closeWhenIdle = false;
  #done: Promise<void> | undefined;

  constructor(
    server: TtrpcServer,
    conn: Deno.Conn,
    max: number,
    onError: (err: unknown) => void,
  ) {
    this.#server = server;
    this.#conn = conn;
    this.#reader = new FrameReader(conn, { maxMessageLength: max });
    this.#writer = new FrameWriter(conn);
    this.#max = max;
    this.#onError = onError;
  }

  /** Reads and dispatches frames until the connection ends. */
  run(): Promise<void> {
    return this.#done ??= this.#loop();
  }

  async #loop(): Promise<void> {
    try {
      while (!this.#closed) {
        let frame: Frame | null;
        try {
          frame = await this.#reader.read();
        } catch (err) {
          if (err instanceof FrameTooLargeError) {
            this.#reply(err.header.streamId, {
              code: Code.ResourceExhausted,
              message: err.message,
            });
            continue;
          }
          if (!this.#closed && !isConnectionGone(err)) this.#onError(err);
          break;
        }
        if (frame === null) break;
        this.#dispatch(frame);
      }
    } finally {
      this.#shutdownNow();
      await Promise.allSettled([...this.#inflight.values(), ...this.#replies]);
    }
  }

  #dispatch(frame: Frame): void {
    if (frame.streamId % 2 !== 1) {
      this.#reply(frame.streamId, {
        code: Code.InvalidArgument,
        message: "StreamID must be odd for client initiated streams",
      });
      return;
    }
    if (frame.type !== MessageType.Request) return; // data for streams we do not keep: ignore
    this.#server.onRequest?.();
    if (frame.streamId <= this.#lastStreamId) {
      this.#reply(frame.streamId, {
        code: Code.InvalidArgument,
        message: "StreamID cannot be re-used and must increment",
      });
      return;
    }
    this.#lastStreamId = frame.streamId;
    let req: Request;
    try {
      req = decodeRequest(frame.data);
    } catch (err) {
      this.#reply(frame.streamId, {
        code: Code.InvalidArgument,
        message: `Cannot decode the ttrpc request: ${err instanceof Error ? err.message : err}`,
      });
      return;
    }
    const id = frame.streamId;
    const call = this.#call(id, req, frame.flags).finally(() => {
      this.#inflight.delete(id);
      this.#checkIdle();
    });
    this.#inflight.set(id, call);
  }

  async #call(id: number, req: Request, flags: number): Promise<void> {
    const ac = new AbortController();
    this.#controllers.add(ac);
    let timer: ReturnType<typeof setTimeout> | undefined;
    let deadline: number | undefined;
    if (req.timeoutNano > 0n) {
      const ms = Number(req.timeoutNano) / 1e6;
      deadline = Date.now() + ms;
      if (ms < 0x7fffffff) {
        timer = setTimeout(() => {
          ac.abort(
            new TainerdError(
              "DeadlineExceeded",
              `Call to ${req.service}/${req.method} exceeded its deadline of ${formatMs(ms)}`,
            ),
          );
        }, ms);
      }
    }
    const ctx: TtrpcContext = {
      service: req.service,
      method: req.method,
      metadata: metadataFromKeyValues(req.metadata),
      signal: ac.signal,
      deadline,
    };
    let status: StatusLike = { code: Code.OK, message: "" };
    let payload: Uint8Array = new Uint8Array();
    try {
      if (flags !== 0) {
        throw notImplemented(`Streaming calls (${req.service}/${req.method}) are not supported`);
      }
      const handler = this.#server.lookup(req.service, req.method);
      payload = await untilAborted(Promise.resolve().then(() => handler(req.payload, ctx)), ac);
    } catch (err) {
      status = errorToStatus(err);
    } finally {
      clearTimeout(timer);
      this.#controllers.delete(ac);
    }
    if (this.#closed) return;
    await this.#send(id, status, payload);
  }

  /** Sends an error status that answers no handler call (bad frame, bad stream id). */
  #reply(id: number, status: StatusLike): void {
    const p: Promise<void> = this.#send(id, status).finally(() => {
      this.#replies.delete(p);
      this.#checkIdle();
    });
    this.#replies.add(p);
  }

  /** Whether nothing is in flight: no handler running, no response being written. */
  #isIdle(): boolean {
    return this.#inflight.size === 0 && this.#replies.size === 0;
  }

  /** Closes the connection if a graceful shutdown waits for it to become idle. */
  #checkIdle(): void {
    if (this.#closeWhenIdle && this.#isIdle()) this.#shutdownNow();
  }

  /**
   * Writes a response frame; a response too large to send becomes `ResourceExhausted`.
   * Resolves once written (or abandoned because the connection failed); never rejects.
   */
  #send(id: number, status: StatusLike, payload: Uint8Array = new Uint8Array()): Promise<void> {
    let data = encodeResponse({ status: { ...status, details: [] }, payload });
    if (data.length > this.#max) {
      data = encodeResponse({
        status: {
          code: Code.ResourceExhausted,
          message:
            `Response length ${data.length} exceeds the maximum message size of ${this.#max}`,
          details: [],
        },
        payload: new Uint8Array(),
      });
    }
    return this.#writer.write({ streamId: id, type: MessageType.Response, flags: 0, data }).catch(
      (err) => {
        if (!this.#closed && !isConnectionGone(err)) this.#onError(err);
        this.#shutdownNow();
      },
    );
  }

  /** Closes the socket and aborts every handler still running. */
  #shutdownNow(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    for (const ac of this.#controllers) {
      ac.abort(new TainerdError("Canceled", "The ttrpc connection closed"));
    }
  }

  /** Closes the connection as soon as no call is in flight; resolves when it has ended. */
  closeWhenIdle(): Promise<void> {
    this.#closeWhenIdle = true;
    const done = this.run();
    this.#checkIdle();
    return done;
  }

  /** Closes the connection now; resolves when it has ended. */
  close(): Promise<void> {
    const done = this.run();
    this.#shutdownNow();
    return done;
  }
}

/** Resolves with `promise`, or rejects with the signal's reason once `ac` aborts. */
function untilAborted<T>(promise: Promise<T>, ac: AbortController): Promise<T> {
  const signal = ac.signal;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(3).replace(/\.?0+$/, "")}s` : `${Math.round(ms)}ms`;
}
