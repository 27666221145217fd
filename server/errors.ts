/**
 * The one place where classified errors become gRPC/Connect codes (and back, for clients).
 *
 * @module
 */

import { type Code, ConnectError } from "@connectrpc/connect";
import { type ErrorKind, TainerdError } from "../plugins/errdefs.ts";
import { KIND_TO_CODE as GRPC_CODES } from "../ttrpc/codes.ts";

/**
 * gRPC code of each error kind: the one table, shared with the ttrpc edge
 * (`ttrpc/codes.ts`), whose numbers are gRPC's and so Connect's.
 */
export const KIND_TO_CODE: Readonly<Record<ErrorKind, Code>> = GRPC_CODES as Readonly<
  Record<ErrorKind, Code>
>;

/** Error kind of each gRPC code a client may receive. */
export function kindOfCode(code: Code): ErrorKind {
  for (const [kind, c] of Object.entries(KIND_TO_CODE)) {
    if (c === code) return kind as ErrorKind;
  }
  return "Internal";
}

/** Classifies errors that did not come through errdefs (Deno's own, mostly). */
export function classify(err: unknown): TainerdError {
  if (err instanceof TainerdError) return err;
  if (err instanceof ConnectError) {
    return new TainerdError(kindOfCode(err.code), err.rawMessage, { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof Deno.errors.NotFound) return new TainerdError("NotFound", message);
  if (err instanceof Deno.errors.AlreadyExists) {
    return new TainerdError("AlreadyExists", message);
  }
  if (err instanceof Deno.errors.PermissionDenied) {
    return new TainerdError("PermissionDenied", message);
  }
  if (err instanceof Deno.errors.Interrupted) return new TainerdError("Canceled", message);
  if (err instanceof DOMException && err.name === "AbortError") {
    return new TainerdError("Canceled", message);
  }
  return new TainerdError("Internal", message, { cause: err });
}

/** The ConnectError a client receives for `err`: its code, and its message without stack. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const e = classify(err);
  return new ConnectError(e.message, KIND_TO_CODE[e.kind], undefined, undefined, err);
}

/** The TainerdError a client-side caller sees for an error from the server. */
export function fromConnectError(err: unknown): unknown {
  if (err instanceof ConnectError) {
    return new TainerdError(kindOfCode(err.code), err.rawMessage, { cause: err });
  }
  return err;
}
