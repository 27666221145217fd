/**
 * Request context helpers: the namespace (`containerd-namespace` header) and the lease
 * (`containerd-lease` header) of a call.
 *
 * @module
 */

import type { HandlerContext } from "@connectrpc/connect";
import { failedPrecondition } from "../plugins/errdefs.ts";
import { validateIdentifier } from "../plugins/identifiers.ts";

/** The gRPC metadata key that carries the namespace. */
export const NAMESPACE_HEADER = "containerd-namespace";
/** The gRPC metadata key that carries the lease. */
export const LEASE_HEADER = "containerd-lease";

/** The call's namespace, validated; FailedPrecondition when it is missing (as containerd). */
export function namespaceRequired(ctx: HandlerContext): string {
  const ns = ctx.requestHeader.get(NAMESPACE_HEADER);
  if (ns === null || ns === "") {
    throw failedPrecondition(
      `A namespace is required: set the "${NAMESPACE_HEADER}" header`,
    );
  }
  validateIdentifier(ns, "namespace");
  return ns;
}

/** The call's lease id, if any. */
export function leaseOf(ctx: HandlerContext): string | undefined {
  const lease = ctx.requestHeader.get(LEASE_HEADER);
  return lease === null || lease === "" ? undefined : lease;
}
