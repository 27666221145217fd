/**
 * The typed client library: containerd's API over gRPC on the daemon's unix socket, with the
 * namespace sent as `containerd-namespace` and errors turned back into classified
 * {@link TainerdError}s.
 *
 * @module
 */

import * as net from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Version } from "../api/gen/containerd/services/version/v1/version_pb.ts";
import { Introspection } from "../api/gen/containerd/services/introspection/v1/introspection_pb.ts";
import { Namespaces } from "../api/gen/containerd/services/namespaces/v1/namespace_pb.ts";
import { Content } from "../api/gen/containerd/services/content/v1/content_pb.ts";
import { Leases } from "../api/gen/containerd/services/leases/v1/leases_pb.ts";
import { Events } from "../api/gen/containerd/services/events/v1/events_pb.ts";
import { Health } from "../api/gen/grpc/health/v1/health_pb.ts";
import { LEASE_HEADER, NAMESPACE_HEADER } from "../server/context.ts";
import { fromConnectError } from "../server/errors.ts";

async function* classifyStream<T>(it: AsyncIterable<T>): AsyncIterable<T> {
  try {
    yield* it;
  } catch (err) {
    throw fromConnectError(err);
  }
}

/**
 * Wraps a Connect client so every failure is a classified TainerdError (Connect would wrap
 * an interceptor's errors back into ConnectErrors).
 */
function classifyErrors<T extends object>(client: T): T {
  const wrapped: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(client)) {
    if (typeof fn !== "function") continue;
    wrapped[name] = (...args: unknown[]) => {
      const out = fn.apply(client, args);
      if (out instanceof Promise) {
        return out.catch((err) => {
          throw fromConnectError(err);
        });
      }
      if (out && typeof out === "object" && Symbol.asyncIterator in out) {
        return classifyStream(out as AsyncIterable<unknown>);
      }
      return out;
    };
  }
  return wrapped as T;
}

/** Options for {@link TainerdClient}. */
export interface ClientOptions {
  /** The daemon's unix socket. */
  address: string;
  /** The namespace sent with every call (none when empty). */
  namespace?: string;
  /** A lease id sent with every call. */
  lease?: string;
  /** Per-call timeout in milliseconds. */
  timeoutMs?: number;
  /**
   * Another way to the daemon than its socket: given the client's interceptors (namespace and
   * lease headers), returns the transport to call through. The daemon's own plugins (the CRI)
   * use an in-process one (`server/server.ts` `inProcessTransport`).
   */
  transport?: (interceptors: Interceptor[]) => Transport;
}

/** A connection to a tainerd (or containerd) daemon. */
export class TainerdClient {
  readonly address: string;
  namespace: string;
  lease?: string;
  readonly #sessions?: Http2SessionManager;
  readonly #transport: Transport;
  readonly #clients = new Map<DescService, unknown>();

  constructor(opts: ClientOptions) {
    this.address = opts.address;
    this.namespace = opts.namespace ?? "";
    this.lease = opts.lease;
    const headers: Interceptor = (next) => async (req) => {
      if (this.namespace && !req.header.has(NAMESPACE_HEADER)) {
        req.header.set(NAMESPACE_HEADER, this.namespace);
      }
      if (this.lease && !req.header.has(LEASE_HEADER)) req.header.set(LEASE_HEADER, this.lease);
      return await next(req);
    };
    if (opts.transport) {
      this.#transport = opts.transport([headers]);
      return;
    }
    this.#sessions = new Http2SessionManager("http://localhost", {}, {
      createConnection: () => net.connect(opts.address),
    });
    this.#transport = createGrpcTransport({
      baseUrl: "http://localhost",
      sessionManager: this.#sessions,
      interceptors: [headers],
      defaultTimeoutMs: opts.timeoutMs,
    });
  }

  /** A typed client for any service of the API. */
  service<S extends DescService>(service: S): Client<S> {
    let c = this.#clients.get(service) as Client<S> | undefined;
    if (!c) {
      c = classifyErrors(createClient(service, this.#transport));
      this.#clients.set(service, c);
    }
    return c;
  }

  /** `containerd.services.version.v1.Version`. */
  get version(): Client<typeof Version> {
    return this.service(Version);
  }

  /** `containerd.services.introspection.v1.Introspection`. */
  get introspection(): Client<typeof Introspection> {
    return this.service(Introspection);
  }

  /** `containerd.services.namespaces.v1.Namespaces`. */
  get namespaces(): Client<typeof Namespaces> {
    return this.service(Namespaces);
  }

  /** `containerd.services.events.v1.Events`. */
  get events(): Client<typeof Events> {
    return this.service(Events);
  }

  /** `containerd.services.content.v1.Content` (see `client/content.ts` for a writer). */
  get content(): Client<typeof Content> {
    return this.service(Content);
  }

  /** `containerd.services.leases.v1.Leases`. */
  get leases(): Client<typeof Leases> {
    return this.service(Leases);
  }

  /** `grpc.health.v1.Health`. */
  get health(): Client<typeof Health> {
    return this.service(Health);
  }

  /** Closes the connection. */
  close(): void {
    this.#sessions?.abort();
  }
}
