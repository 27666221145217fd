/**
 * Registry failures, classified: an HTTP status becomes a {@link TainerdError} kind, and the
 * registry's own error list (`{"errors":[{"code","message","detail"}]}`, distribution's
 * `errcode`) is quoted in the message.
 *
 * @module
 */

import { type ErrorKind, TainerdError } from "../../plugins/errdefs.ts";

/** One entry of a registry's JSON error list. */
export interface RegistryErrorEntry {
  /** The error code, e.g. `MANIFEST_UNKNOWN`, `UNAUTHORIZED`, `DIGEST_INVALID`. */
  code: string;
  /** The human readable message. */
  message?: string;
  /** Extra detail, of any shape. */
  detail?: unknown;
}

/** A classified failure caused by a registry's HTTP response. */
export class RegistryError extends TainerdError {
  /** The HTTP status of the response. */
  readonly status: number;
  /** The error list the registry sent, when it sent one. */
  readonly errors: readonly RegistryErrorEntry[];

  constructor(
    kind: ErrorKind,
    message: string,
    status: number,
    errors: readonly RegistryErrorEntry[] = [],
    options?: ErrorOptions,
  ) {
    super(kind, message, options);
    this.status = status;
    this.errors = errors;
  }
}

/** The error kind an HTTP status maps to. */
export function kindForStatus(status: number): ErrorKind {
  switch (status) {
    case 400:
    case 411:
    case 413:
    case 414:
    case 415:
      return "InvalidArgument";
    case 401:
    case 403:
      return "PermissionDenied";
    case 404:
      return "NotFound";
    case 405:
    case 501:
      return "NotImplemented";
    case 409:
      return "Aborted";
    case 412:
      return "FailedPrecondition";
    case 416:
      return "OutOfRange";
    case 408:
    case 504:
      return "DeadlineExceeded";
    case 429:
      return "Unavailable";
  }
  if (status >= 500) return "Unavailable";
  return "Internal";
}

const MAX_ERROR_BODY = 64 * 1024;

async function readSome(response: Response): Promise<string> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < MAX_ERROR_BODY) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
    }
  } catch {
    // A body cut short still says something; use what arrived.
  } finally {
    reader.cancel().catch(() => {});
  }
  const all = new Uint8Array(Math.min(size, MAX_ERROR_BODY));
  let offset = 0;
  for (const c of chunks) {
    const n = Math.min(c.byteLength, all.byteLength - offset);
    all.set(c.subarray(0, n), offset);
    offset += n;
  }
  return new TextDecoder().decode(all);
}

/** Parses a registry error body; returns an empty list when it is not one. */
export function parseRegistryErrors(body: string): RegistryErrorEntry[] {
  try {
    const json = JSON.parse(body);
    const list = Array.isArray(json?.errors) ? json.errors : [];
    return list
      .filter((e: unknown) =>
        e && typeof e === "object" && typeof (e as RegistryErrorEntry).code === "string"
      )
      .map((e: RegistryErrorEntry) => ({
        code: e.code,
        message: typeof e.message === "string" ? e.message : undefined,
        detail: e.detail,
      }));
  } catch {
    return [];
  }
}

function describeEntries(entries: readonly RegistryErrorEntry[]): string {
  return entries.map((e) => {
    const message = e.message
      ? `${e.code.toLowerCase().replaceAll("_", " ")}: ${e.message}`
      : e.code;
    return message;
  }).join("; ");
}

/**
 * Turns an unsuccessful response into a classified error, consuming (part of) its body.
 * `context` starts the message: `Cannot fetch sha256:… from http://host/v2/x/blobs/…`.
 */
export async function responseError(
  response: Response,
  context: string,
  kind?: ErrorKind,
  hint?: string,
): Promise<RegistryError> {
  const body = await readSome(response);
  const entries = parseRegistryErrors(body);
  const status = `${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  let message = `${context}: the registry answered ${status}`;
  if (entries.length > 0) {
    message += ` (${describeEntries(entries)})`;
  } else if (body.trim() && !/^\s*</.test(body) && body.length < 512) {
    message += ` (${body.trim()})`;
  }
  if (hint) message += `; ${hint}`;
  return new RegistryError(
    kind ?? kindForStatus(response.status),
    message,
    response.status,
    entries,
  );
}

/** Discards a response body without reading it. */
export async function discard(response: Response): Promise<void> {
  if (response.body && !response.bodyUsed) {
    try {
      await response.body.cancel();
    } catch {
      // Already errored or closed: nothing to release.
    }
  }
}
