/**
 * Error classes, as containerd's `errdefs`: every failure is classified where it arises with
 * one of these kinds, and mapped to a gRPC/Connect code once, at the API edge
 * (see `server/errors.ts`).
 *
 * @module
 */

/** The kinds of failure a caller can act on; each maps to exactly one gRPC code. */
export type ErrorKind =
  | "NotFound"
  | "AlreadyExists"
  | "InvalidArgument"
  | "FailedPrecondition"
  | "Unavailable"
  | "NotImplemented"
  | "Aborted"
  | "OutOfRange"
  | "Canceled"
  | "DeadlineExceeded"
  | "PermissionDenied"
  | "ResourceExhausted"
  | "Internal";

/** A classified error. `message` is a full sentence with context, shown to clients as is. */
export class TainerdError extends Error {
  /** The class of the failure. */
  readonly kind: ErrorKind;

  constructor(kind: ErrorKind, message: string, options?: ErrorOptions) {
    super(message, options);
    this.kind = kind;
    this.name = `${kind}Error`;
  }
}

function make(kind: ErrorKind) {
  return (message: string, options?: ErrorOptions): TainerdError =>
    new TainerdError(kind, message, options);
}

/** The object does not exist. */
export const notFound: (message: string, options?: ErrorOptions) => TainerdError = make(
  "NotFound",
);
/** The object already exists. */
export const alreadyExists: (message: string, options?: ErrorOptions) => TainerdError = make(
  "AlreadyExists",
);
/** The request is malformed or names something invalid. */
export const invalidArgument: (message: string, options?: ErrorOptions) => TainerdError = make(
  "InvalidArgument",
);
/** The system is not in a state where the operation can run (e.g. namespace not empty). */
export const failedPrecondition: (message: string, options?: ErrorOptions) => TainerdError = make(
  "FailedPrecondition",
);
/** The resource is busy or unreachable; retrying later may work (e.g. a locked ingest ref). */
/** The operation did not finish in time (e.g. an exec's timeout). */
export const deadlineExceeded: (message: string, options?: ErrorOptions) => TainerdError = make(
  "DeadlineExceeded",
);
export const unavailable: (message: string, options?: ErrorOptions) => TainerdError = make(
  "Unavailable",
);
/** The operation is not implemented. */
export const notImplemented: (message: string, options?: ErrorOptions) => TainerdError = make(
  "NotImplemented",
);
/** The operation was aborted, typically by a concurrent change. */
export const aborted: (message: string, options?: ErrorOptions) => TainerdError = make(
  "Aborted",
);
/** An offset or size lies outside the valid range. */
export const outOfRange: (message: string, options?: ErrorOptions) => TainerdError = make(
  "OutOfRange",
);
/** The caller canceled the operation. */
export const canceled: (message: string, options?: ErrorOptions) => TainerdError = make(
  "Canceled",
);
/** An internal invariant was broken. */
export const internal: (message: string, options?: ErrorOptions) => TainerdError = make(
  "Internal",
);

/** Whether `err` is a TainerdError of the given kind. */
export function isKind(err: unknown, kind: ErrorKind): boolean {
  return err instanceof TainerdError && err.kind === kind;
}

/** Whether `err` is a NotFound error. */
export function isNotFound(err: unknown): boolean {
  return isKind(err, "NotFound");
}

/** Whether `err` is an AlreadyExists error. */
export function isAlreadyExists(err: unknown): boolean {
  return isKind(err, "AlreadyExists");
}
