/**
 * What a gRPC plugin provides: a way to add its services to the API router.
 *
 * @module
 */

import type { ConnectRouter } from "@connectrpc/connect";
import type { TtrpcServer } from "../ttrpc/server.ts";

/** A plugin instance that serves one or more API services. */
export interface GrpcService {
  /** Adds the plugin's services to the router. */
  register(router: ConnectRouter): void;
}

/** Whether a plugin instance serves API services. */
export function isGrpcService(x: unknown): x is GrpcService {
  return typeof x === "object" && x !== null &&
    typeof (x as { register?: unknown }).register === "function";
}

/** A plugin instance that serves services on the daemon's ttrpc socket (shims call it). */
export interface TtrpcService {
  /** Adds the plugin's services to the ttrpc server. */
  registerTtrpc(server: TtrpcServer): void;
}

/** Whether a plugin instance serves ttrpc services. */
export function isTtrpcService(x: unknown): x is TtrpcService {
  return typeof x === "object" && x !== null &&
    typeof (x as { registerTtrpc?: unknown }).registerTtrpc === "function";
}
