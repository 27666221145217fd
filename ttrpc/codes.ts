/**
 * gRPC status codes and their one mapping to tainerd's error kinds. ttrpc carries gRPC codes
 * in its `Response.status`, and the gRPC/Connect API server reuses the same table (Connect's
 * `Code` enum has the same numbers), so an error is classified once and reads the same on
 * every edge.
 *
 * @module
 */

import { type ErrorKind, TainerdError } from "../plugins/errdefs.ts";

/** The gRPC status codes (google.golang.org/grpc/codes), by name. */
export const Code = {
  /** Success. */
  OK: 0,
  /** The operation was canceled, typically by the caller. */
  Canceled: 1,
  /** An error that fits no other code. */
  Unknown: 2,
  /** The request is malformed or names something invalid. */
  InvalidArgument: 3,
  /** The deadline expired before the operation completed. */
  DeadlineExceeded: 4,
  /** The object does not exist. */
  NotFound: 5,
  /** The object already exists. */
  AlreadyExists: 6,
  /** The caller may not perform the operation. */
  PermissionDenied: 7,
  /** A resource (a quota, the message size limit…) is exhausted. */
  ResourceExhausted: 8,
  /** The system is not in a state where the operation can run. */
  FailedPrecondition: 9,
  /** The operation was aborted, typically by a concurrent change. */
  Aborted: 10,
  /** An offset or size lies outside the valid range. */
  OutOfRange: 11,
  /** The operation is not implemented. */
  Unimplemented: 12,
  /** An internal invariant was broken. */
  Internal: 13,
  /** The service is unavailable; retrying later may work. */
  Unavailable: 14,
  /** Unrecoverable data loss or corruption. */
  DataLoss: 15,
  /** The request lacks valid credentials. */
  Unauthenticated: 16,
} as const;

/** A gRPC status code number (0–16). */
export type Code = typeof Code[keyof typeof Code];

/** The one table mapping every error kind to its gRPC code. */
export const KIND_TO_CODE: Readonly<Record<ErrorKind, Code>> = Object.freeze({
  Canceled: Code.Canceled,
  InvalidArgument: Code.InvalidArgument,
  DeadlineExceeded: Code.DeadlineExceeded,
  NotFound: Code.NotFound,
  AlreadyExists: Code.AlreadyExists,
  PermissionDenied: Code.PermissionDenied,
  ResourceExhausted: Code.ResourceExhausted,
  FailedPrecondition: Code.FailedPrecondition,
  Aborted: Code.Aborted,
  OutOfRange: Code.OutOfRange,
  NotImplemented: Code.Unimplemented,
  Internal: Code.Internal,
  Unavailable: Code.Unavailable,
});

/**
 * The inverse of {@link KIND_TO_CODE}, plus the codes that have no kind of their own:
 * `Unknown` and `DataLoss` read as `Internal`, `Unauthenticated` as `PermissionDenied`.
 * `OK` has no kind (it is not an error).
 */
const CODE_TO_KIND: ReadonlyMap<number, ErrorKind> = new Map<number, ErrorKind>([
  ...Object.entries(KIND_TO_CODE).map(([kind, code]) => [code, kind as ErrorKind] as const),
  [Code.Unknown, "Internal"],
  [Code.DataLoss, "Internal"],
  [Code.Unauthenticated, "PermissionDenied"],
]);

/** The gRPC code for an error kind. */
export function kindToCode(kind: ErrorKind): Code {
  return KIND_TO_CODE[kind];
}

/**
 * The error kind for a gRPC code. Codes without a kind of their own map as described on
 * {@link CODE_TO_KIND}; `OK` and numbers outside 1–16 map to `Internal`.
 */
export function codeToKind(code: number): ErrorKind {
  return CODE_TO_KIND.get(code) ?? "Internal";
}

/** The name of a gRPC code as Go's `codes.Code.String()` spells it, e.g. `NotFound`. */
export function codeName(code: number): string {
  for (const [name, value] of Object.entries(Code)) {
    if (value === code) return name;
  }
  return `Code(${code})`;
}

/** A status as sent on the wire: a gRPC code and a message. */
export interface StatusLike {
  /** The gRPC code. */
  code: number;
  /** A human-readable message, shown to clients as is. */
  message: string;
}

/**
 * The status to send for an error thrown by a handler: a {@link TainerdError} keeps its kind
 * (through {@link KIND_TO_CODE}) and message; an error that already carries a gRPC code (a
 * {@link StatusError}) keeps it; anything else is `Unknown` with the error's message.
 */
export function errorToStatus(err: unknown): StatusLike {
  if (err instanceof StatusError) return { code: err.code, message: err.message };
  if (err instanceof TainerdError) return { code: KIND_TO_CODE[err.kind], message: err.message };
  if (err instanceof Error) return { code: Code.Unknown, message: err.message || err.name };
  return { code: Code.Unknown, message: String(err) };
}

/**
 * A {@link TainerdError} that also remembers the exact gRPC code it came from (or must go out
 * as), for the codes that share a kind (`Unknown`, `DataLoss`, `Unauthenticated`).
 */
export class StatusError extends TainerdError {
  /** The gRPC code. */
  readonly code: Code;

  /**
   * Creates an error for a gRPC status.
   *
   * @param code the gRPC code (any number outside 1–16 is treated as `Unknown`)
   * @param message the message, kept verbatim
   */
  constructor(code: number, message: string, options?: ErrorOptions) {
    super(codeToKind(code), message, options);
    this.code = (code >= 1 && code <= 16 ? code : Code.Unknown) as Code;
  }
}

/**
 * The error a client raises for a non-OK status: a {@link StatusError} whose kind follows
 * {@link codeToKind} and whose message is the server's, verbatim.
 */
export function statusToError(status: StatusLike): StatusError {
  return new StatusError(status.code, status.message || codeName(status.code));
}
