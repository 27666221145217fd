/**
 * The API server: tainerd's HTTP/2 server (h2/) with Connect's router on one unix socket, answering
 * gRPC (ctr, kubelet), gRPC-Web and Connect (JSON or binary, curl) at once. One interceptor
 * at the edge maps classified errors to codes and logs every call.
 *
 * @module
 */

import {
  Code,
  ConnectError,
  type ConnectRouterOptions,
  createConnectRouter,
  createRouterTransport,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerResponse } from "@connectrpc/connect/protocol";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import { createRegistry } from "@bufbuild/protobuf";
import { file_io_containerd_cgroups_v1_metrics } from "../api/gen/io/containerd/cgroups/v1/metrics_pb.ts";
import { file_io_containerd_cgroups_v2_metrics } from "../api/gen/io/containerd/cgroups/v2/metrics_pb.ts";
import { file_containerd_runtime_v2_runc_options_oci } from "../api/gen/containerd/runtime/v2/runc/options/oci_pb.ts";
import { EVENT_REGISTRY } from "../plugins/events/registry.ts";
import type { Logger } from "../log.ts";
import { failedPrecondition } from "../plugins/errdefs.ts";
import { NAMESPACE_HEADER } from "./context.ts";
import { toConnectError } from "./errors.ts";
import { recordApiCall } from "../plugins/metrics/registry.ts";
import type { GrpcService } from "./service.ts";
import { H2Code, H2Server, type H2Stream, H2StreamError } from "./h2/server.ts";

/** The message types Any fields may hold, for Connect JSON. */
const JSON_REGISTRY = createRegistry(
  EVENT_REGISTRY,
  file_io_containerd_cgroups_v1_metrics,
  file_io_containerd_cgroups_v2_metrics,
  file_containerd_runtime_v2_runc_options_oci,
);

/** Options for {@link ApiServer.listen}. */
export interface ServeOptions {
  /** Unix socket path. */
  address: string;
  /** Owner of the socket. */
  uid: number;
  /** Group of the socket (mode 0660: members of the group may use the API). */
  gid: number;
  /** Largest request message accepted, in bytes. */
  maxRecvMessageSize: number;
  /** Largest response message sent, in bytes. */
  maxSendMessageSize: number;
  services: readonly GrpcService[];
  log: Logger;
  /** Called for every call (activity, e.g. for an idle memory reclaimer). */
  onCall?: () => void;
}

async function* mapStream<T>(
  it: AsyncIterable<T>,
  done: (err?: unknown) => void,
): AsyncIterable<T> {
  try {
    yield* it;
    done();
  } catch (err) {
    done(err);
    throw toConnectError(err);
  }
}

/** The edge interceptor: error mapping and one debug line per call. */
export function edgeInterceptor(log: Logger): Interceptor {
  return (next) => async (req) => {
    const start = performance.now();
    const method = `/${req.service.typeName}/${req.method.name}`;
    const namespace = req.header.get(NAMESPACE_HEADER) ?? undefined;
    const finish = (err?: unknown) => {
      const code = err === undefined ? "ok" : Code[toConnectError(err).code];
      const ms = performance.now() - start;
      recordApiCall(req.service.typeName, req.method.name, req.method.methodKind, code, ms);
      const duration = `${ms.toFixed(2)}ms`;
      if (err !== undefined && toConnectError(err).code === Code.Internal) {
        log.error("API call failed", {
          method,
          namespace,
          duration,
          code,
          error: err instanceof Error ? (err.stack ?? err.message) : String(err),
        });
      } else if (log.enabled("debug")) {
        log.debug("API call", {
          method,
          namespace,
          duration,
          code,
          error: err instanceof Error ? err.message : undefined,
        });
      }
    };
    try {
      const res = await next(req);
      if (res.stream) {
        return { ...res, message: mapStream(res.message, finish) };
      }
      finish();
      return res;
    } catch (err) {
      finish(err);
      throw toConnectError(err);
    }
  };
}

/** What every router of the daemon's services shares: the edge, Any types, the size limits. */
function routerOptions(
  opts: { log: Logger; maxRecvMessageSize: number; maxSendMessageSize: number },
): ConnectRouterOptions {
  return {
    interceptors: [edgeInterceptor(opts.log)],
    // Any fields (events, metrics, runtime options) in Connect JSON need their types.
    jsonOptions: { registry: JSON_REGISTRY },
    readMaxBytes: opts.maxRecvMessageSize,
    writeMaxBytes: opts.maxSendMessageSize,
  };
}

/**
 * A transport to the daemon's services inside the daemon: calls go through the same router
 * setup as the socket's (the edge interceptor logs, counts and maps errors; the same limits)
 * without HTTP/2 or a socket. The router is built on first use, once every service exists.
 */
export function inProcessTransport(
  services: () => readonly GrpcService[],
  opts: { log: Logger; maxRecvMessageSize: number; maxSendMessageSize: number },
  interceptors: Interceptor[] = [],
): Transport {
  let transport: Transport | undefined;
  const get = () =>
    transport ??= createRouterTransport((router) => {
      for (const s of services()) s.register(router);
    }, {
      router: routerOptions(opts),
      transport: { interceptors },
    });
  return {
    unary: (...args) => get().unary(...args),
    stream: (...args) => get().stream(...args),
  };
}

/** Answers calls to methods no service registered, in the protocol the client speaks. */
async function fallback(stream: H2Stream): Promise<void> {
  const path = stream.path;
  const contentType = stream.headers.find(([n]) => n === "content-type")?.[1] ?? "";
  const message = `Unknown method ${path}`;
  // Answer once the request is read (ending our side while the client still sends resets the
  // stream before curl sees the status), or after 100 ms for a client that keeps its side open
  // (a streaming call).
  const body = (async () => {
    for await (const _ of stream.body()) { /* drained */ }
  })().catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([body, new Promise((r) => timer = setTimeout(r, 100))]);
  clearTimeout(timer);
  if (stream.errored || stream.headersSent) return;
  if (contentType.startsWith("application/grpc")) {
    // A gRPC "trailers-only" response: the status in one HEADERS frame that ends the stream.
    stream.respond(200, [
      [
        "content-type",
        contentType.startsWith("application/grpc-web")
          ? "application/grpc-web+proto"
          : "application/grpc",
      ],
      ["grpc-status", String(Code.Unimplemented)],
      ["grpc-message", encodeURIComponent(message)],
    ], true);
  } else {
    stream.respond(404, [["content-type", "application/json"]]);
    await stream.write(
      new TextEncoder().encode(JSON.stringify({ code: "unimplemented", message })),
    );
    stream.end();
  }
}

/** Why a request's signal aborted when its stream was reset or its connection lost. */
function resetReason(err: unknown): ConnectError {
  if (err instanceof H2StreamError) {
    return err.code === H2Code.CANCEL || err.code === H2Code.NO_ERROR
      ? new ConnectError("the client cancelled the call", Code.Canceled)
      : new ConnectError(`the stream was reset (HTTP/2 code ${err.code})`, Code.Canceled);
  }
  return ConnectError.from(err);
}

/** Response header fields from a `Headers`, without those HTTP/2 forbids. */
function fieldsOf(h: Headers | undefined): [string, string][] {
  const out: [string, string][] = [];
  if (!h) return out;
  h.forEach((value, name) => {
    if (name === "connection" || name === "transfer-encoding" || name === "keep-alive") return;
    out.push([name, value]);
  });
  return out;
}

/**
 * Writes Connect's answer to the stream: headers after the first chunk, then trailers. The
 * answer of a unary (or client-streaming) call is gathered first and queued without an `await`
 * when the windows allow, so that headers, message and trailers leave in one write (the client
 * waits for the trailers; apart, they cost it a second wake-up per call).
 */
async function writeResponse(
  res: UniversalServerResponse,
  stream: H2Stream,
  singleAnswer: boolean,
): Promise<void> {
  const it = res.body?.[Symbol.asyncIterator]();
  try {
    if (it !== undefined && singleAnswer) {
      const chunks: Uint8Array[] = [];
      for (let c = await it.next(); c.done !== true; c = await it.next()) chunks.push(c.value);
      stream.respond(res.status, fieldsOf(res.header));
      for (const c of chunks) if (!stream.writeNow(c)) await stream.write(c);
    } else if (it !== undefined) {
      let chunk = await it.next();
      // Headers go after the first chunk: the implementation may still set some until then.
      stream.respond(res.status, fieldsOf(res.header));
      for (; chunk.done !== true; chunk = await it.next()) {
        if (!stream.writeNow(chunk.value)) await stream.write(chunk.value);
      }
    }
    if (!stream.headersSent) stream.respond(res.status, fieldsOf(res.header));
    stream.end(fieldsOf(res.trailer));
  } catch (err) {
    await it?.throw?.(err).catch(() => {});
    if (!stream.errored) stream.reset(H2Code.INTERNAL_ERROR);
  } finally {
    await it?.return?.().catch(() => {});
  }
}

async function socketInUse(path: string): Promise<boolean> {
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/** The listening API server. */
export class ApiServer {
  readonly address: string;
  readonly #server: H2Server;
  /** Requests in flight, to cancel when a shutdown's grace runs out. */
  readonly #inflight: Set<AbortController>;

  private constructor(address: string, server: H2Server, inflight: Set<AbortController>) {
    this.address = address;
    this.#server = server;
    this.#inflight = inflight;
  }

  /**
   * Listens on the unix socket. A socket file left by a crashed daemon is replaced; one a live
   * daemon answers on is left alone and FailedPrecondition is thrown.
   */
  static async listen(opts: ServeOptions): Promise<ApiServer> {
    const router = createConnectRouter({
      ...routerOptions(opts),
      acceptCompression: [compressionGzip, compressionBrotli],
    });
    for (const s of opts.services) s.register(router);
    const paths = new Map<string, UniversalHandler>();
    for (const h of router.handlers) paths.set(h.requestPath, h);
    const inflight = new Set<AbortController>();
    const handle = (stream: H2Stream) => {
      opts.onCall?.();
      const q = stream.path.indexOf("?");
      const handler = paths.get(q < 0 ? stream.path : stream.path.slice(0, q));
      if (!handler) {
        fallback(stream).catch(() => {});
        return;
      }
      const header = new Headers();
      for (const [name, value] of stream.headers) header.append(name, value);
      // The call's signal: aborted when the client resets the stream or leaves, or when the
      // daemon's shutdown grace runs out. Nothing aborts it after a normal end (nobody
      // listens any more, and an abort costs a DOMException per call).
      const ac = new AbortController();
      const onReset = () => ac.abort(resetReason(stream.signal.reason));
      stream.signal.addEventListener("abort", onReset, { once: true });
      inflight.add(ac);
      handler({
        httpVersion: "2.0",
        method: stream.method,
        url: `${stream.scheme}://${stream.authority}${stream.path}`,
        header,
        body: stream.body(),
        signal: ac.signal,
      })
        .then((res) =>
          writeResponse(
            res,
            stream,
            handler.method.methodKind === "unary" ||
              handler.method.methodKind === "client_streaming",
          )
        )
        .catch((reason) => {
          if (!stream.errored) stream.reset(H2Code.INTERNAL_ERROR);
          if (ConnectError.from(reason).code !== Code.Aborted) {
            opts.log.error("API handler failed", {
              method: stream.path,
              error: reason instanceof Error ? (reason.stack ?? reason.message) : String(reason),
            });
          }
        })
        .finally(() => {
          inflight.delete(ac);
          stream.signal.removeEventListener("abort", onReset);
        });
    };
    try {
      const st = await Deno.lstat(opts.address);
      if (await socketInUse(opts.address)) {
        throw failedPrecondition(
          `Cannot listen on "${opts.address}": another daemon is serving on it`,
        );
      }
      if (!st.isSocket) {
        throw failedPrecondition(
          `Cannot listen on "${opts.address}": the path exists and is not a socket`,
        );
      }
      opts.log.info("removing stale socket", { address: opts.address });
      await Deno.remove(opts.address);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    const dir = opts.address.substring(0, opts.address.lastIndexOf("/")) || "/";
    await Deno.mkdir(dir, { recursive: true, mode: 0o711 });
    // Created 0660 from the start: no window where others may connect.
    const oldMask = Deno.umask(0o117);
    let listener: Deno.Listener;
    try {
      listener = Deno.listen({ transport: "unix", path: opts.address });
    } finally {
      Deno.umask(oldMask);
    }
    await Deno.chmod(opts.address, 0o660);
    if (opts.uid !== 0 || opts.gid !== 0) await Deno.chown(opts.address, opts.uid, opts.gid);
    return new ApiServer(opts.address, new H2Server(listener, handle), inflight);
  }

  /**
   * Stops accepting calls, lets in-flight calls finish for up to `graceMs`, then closes every
   * connection and removes the socket.
   */
  async close(graceMs = 2000): Promise<void> {
    await this.#server.close(graceMs, () => {
      const err = new ConnectError("the daemon is shutting down", Code.Unavailable);
      for (const ac of this.#inflight) ac.abort(err);
    });
    try {
      await Deno.remove(this.address);
    } catch {
      // Already gone.
    }
  }
}
