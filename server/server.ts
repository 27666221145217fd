/**
 * The API server: `node:http2` with Connect's node adapter on one unix socket, answering
 * gRPC (ctr, kubelet), gRPC-Web and Connect (JSON or binary, curl) at once. One interceptor
 * at the edge maps classified errors to codes and logs every call.
 *
 * @module
 */

import * as http2 from "node:http2";
import { Code, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
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

type FallbackRequest = Parameters<NodeHandlerFn>[0];
type FallbackResponse = Parameters<NodeHandlerFn>[1];
type NodeHandlerFn = NonNullable<Parameters<typeof connectNodeAdapter>[0]["fallback"]>;

/** Answers calls to methods no service registered, in the protocol the client speaks. */
function fallback(req: FallbackRequest, res: FallbackResponse): void {
  const path = req.url ?? "";
  const contentType = String(req.headers["content-type"] ?? "");
  const message = `Unknown method ${path}`;
  const answer = () => {
    if (res.headersSent || res.writableEnded) return;
    if (contentType.startsWith("application/grpc") && "stream" in res) {
      // A gRPC "trailers-only" response: the status in one HEADERS frame that ends the stream.
      res.stream.respond({
        ":status": 200,
        "content-type": contentType.startsWith("application/grpc-web")
          ? "application/grpc-web+proto"
          : "application/grpc",
        "grpc-status": String(Code.Unimplemented),
        "grpc-message": encodeURIComponent(message),
      }, { endStream: true });
    } else {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "unimplemented", message }));
    }
  };
  // Answer once the request is read (ending our side while the client still sends made the
  // stream reset before curl saw the status, now and then), or after 100 ms for a client
  // that keeps its side open (a streaming call).
  const timer = setTimeout(answer, 100);
  req.on("end", () => {
    clearTimeout(timer);
    answer();
  });
  req.on("error", () => clearTimeout(timer));
  req.resume();
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
  readonly #server: http2.Http2Server;
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  readonly #shutdown: AbortController;

  private constructor(address: string, server: http2.Http2Server, shutdown: AbortController) {
    this.address = address;
    this.#server = server;
    this.#shutdown = shutdown;
    server.on("session", (s: http2.ServerHttp2Session) => {
      this.#sessions.add(s);
      s.on("close", () => this.#sessions.delete(s));
    });
  }

  /**
   * Listens on the unix socket. A socket file left by a crashed daemon is replaced; one a live
   * daemon answers on is left alone and FailedPrecondition is thrown.
   */
  static async listen(opts: ServeOptions): Promise<ApiServer> {
    const shutdown = new AbortController();
    const handler = connectNodeAdapter({
      routes: (router: ConnectRouter) => {
        for (const s of opts.services) s.register(router);
      },
      interceptors: [edgeInterceptor(opts.log)],
      // Any fields (events, metrics, runtime options) in Connect JSON need their types.
      jsonOptions: { registry: JSON_REGISTRY },
      readMaxBytes: opts.maxRecvMessageSize,
      writeMaxBytes: opts.maxSendMessageSize,
      fallback,
      shutdownSignal: shutdown.signal,
    });
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
    const server = http2.createServer({}, handler);
    const api = new ApiServer(opts.address, server, shutdown);
    // Created 0660 from the start: no window where others may connect.
    const oldMask = Deno.umask(0o117);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(opts.address, () => {
          server.off("error", reject);
          resolve();
        });
      });
    } finally {
      Deno.umask(oldMask);
    }
    await Deno.chmod(opts.address, 0o660);
    if (opts.uid !== 0 || opts.gid !== 0) await Deno.chown(opts.address, opts.uid, opts.gid);
    return api;
  }

  /**
   * Stops accepting calls, lets in-flight calls finish for up to `graceMs`, then closes every
   * connection and removes the socket.
   */
  async close(graceMs = 2000): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sessions) s.close();
    const timer = setTimeout(() => {
      this.#shutdown.abort();
      for (const s of this.#sessions) s.destroy();
    }, graceMs);
    await closed;
    clearTimeout(timer);
    try {
      await Deno.remove(this.address);
    } catch {
      // Already gone.
    }
  }
}
