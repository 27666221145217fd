/**
 * What a gRPC plugin provides: a way to add its services to the API router.
 *
 * @module
 */

import type { ConnectRouter } from "@connectrpc/connect";

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
