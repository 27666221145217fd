/**
 * Content digests, as OCI's `go-digest`: strings of the form `algorithm:hex`. Only `sha256`
 * (64 hex digits) and `sha512` (128 hex digits), with lowercase hex, are accepted; anything
 * else is an InvalidArgument error. A digest that passes {@link parseDigest} is safe to use as a
 * path component (`<alg>/<hex>`).
 *
 * @module
 */

import { createHash, type Hash } from "node:crypto";
import { invalidArgument } from "../errdefs.ts";

/** The digest algorithms the content store accepts. */
export type DigestAlgorithm = "sha256" | "sha512";

/** The algorithm used when none is named, as go-digest's `Canonical`. */
export const CANONICAL_ALGORITHM: DigestAlgorithm = "sha256";

/** Every accepted algorithm with the number of hex digits its digests carry. */
export const DIGEST_ALGORITHMS: Readonly<Record<DigestAlgorithm, number>> = Object.freeze({
  sha256: 64,
  sha512: 128,
});

/** A digest split into its parts. */
export interface ParsedDigest {
  /** The hash algorithm, e.g. `sha256`. */
  readonly algorithm: DigestAlgorithm;
  /** The lowercase hex encoding of the hash. */
  readonly hex: string;
}

const LOWER_HEX = /^[0-9a-f]+$/;

/** Whether `name` is an algorithm this module accepts. */
export function isDigestAlgorithm(name: string): name is DigestAlgorithm {
  return Object.hasOwn(DIGEST_ALGORITHMS, name);
}

function quote(value: string): string {
  const shown = value.length > 160 ? `${value.slice(0, 160)}…` : value;
  return JSON.stringify(shown);
}

/**
 * Splits and strictly validates a digest string.
 *
 * @throws {TainerdError} InvalidArgument when the format, algorithm, length or hex is wrong.
 */
export function parseDigest(digest: string): ParsedDigest {
  if (typeof digest !== "string" || digest === "") {
    throw invalidArgument("Invalid digest: the digest is empty");
  }
  const colon = digest.indexOf(":");
  if (colon <= 0 || colon === digest.length - 1) {
    throw invalidArgument(
      `Invalid digest ${quote(digest)}: expected the form "algorithm:hex"`,
    );
  }
  const algorithm = digest.slice(0, colon);
  const hex = digest.slice(colon + 1);
  if (!isDigestAlgorithm(algorithm)) {
    throw invalidArgument(
      `Invalid digest ${quote(digest)}: unsupported algorithm ${quote(algorithm)}`,
    );
  }
  const length = DIGEST_ALGORITHMS[algorithm];
  if (hex.length !== length) {
    throw invalidArgument(
      `Invalid digest ${quote(digest)}: ${algorithm} needs ${length} hex digits, got ${hex.length}`,
    );
  }
  if (!LOWER_HEX.test(hex)) {
    throw invalidArgument(
      `Invalid digest ${quote(digest)}: the hash must be lowercase hexadecimal`,
    );
  }
  return { algorithm, hex };
}

/**
 * Validates a digest and returns it unchanged, for use in expressions.
 *
 * @throws {TainerdError} InvalidArgument when the digest is malformed (see {@link parseDigest}).
 */
export function validateDigest(digest: string): string {
  parseDigest(digest);
  return digest;
}

/** Whether `digest` is a well-formed, supported digest (never throws). */
export function isDigest(digest: string): boolean {
  try {
    parseDigest(digest);
    return true;
  } catch {
    return false;
  }
}

/** Builds a digest from an algorithm and a hex string, validating the result. */
export function formatDigest(algorithm: DigestAlgorithm, hex: string): string {
  return validateDigest(`${algorithm}:${hex}`);
}

/** The digest of a byte array (or of a string's UTF-8 encoding). */
export function digestOf(
  data: Uint8Array | string,
  algorithm: DigestAlgorithm = CANONICAL_ALGORITHM,
): string {
  return `${algorithm}:${createHash(algorithm).update(data).digest("hex")}`;
}

/**
 * An incremental hasher that also counts bytes. {@link Digester.digest} can be called at any
 * time without disturbing the running hash (the state is copied), so it may be asked for the
 * digest so far and then fed more data.
 */
export class Digester {
  /** The algorithm in use. */
  readonly algorithm: DigestAlgorithm;
  #hash: Hash;
  #size = 0;

  /** Creates a digester for `algorithm` (sha256 by default). */
  constructor(algorithm: DigestAlgorithm = CANONICAL_ALGORITHM) {
    if (!isDigestAlgorithm(algorithm)) {
      throw invalidArgument(`Cannot create a digester: unsupported algorithm ${quote(algorithm)}`);
    }
    this.algorithm = algorithm;
    this.#hash = createHash(algorithm);
  }

  /** The number of bytes hashed so far. */
  get size(): number {
    return this.#size;
  }

  /** Feeds bytes to the hash; the bytes are consumed before this returns, so buffers may be reused. */
  update(chunk: Uint8Array): this {
    this.#hash.update(chunk);
    this.#size += chunk.byteLength;
    return this;
  }

  /** The digest (`algorithm:hex`) of everything fed so far; the digester stays usable. */
  digest(): string {
    return `${this.algorithm}:${this.#hash.copy().digest("hex")}`;
  }

  /** Forgets everything fed so far, as if newly created. */
  reset(): void {
    this.#hash = createHash(this.algorithm);
    this.#size = 0;
  }

  /** Feeds every chunk of `source` to the hash and returns the number of bytes read. */
  async updateFrom(
    source: AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>,
  ): Promise<number> {
    let n = 0;
    for await (const chunk of source) {
      this.update(chunk);
      n += chunk.byteLength;
    }
    return n;
  }
}

/** The digest and size of a whole stream, consumed once. */
export async function digestStream(
  source: AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>,
  algorithm: DigestAlgorithm = CANONICAL_ALGORITHM,
): Promise<{ digest: string; size: number }> {
  const digester = new Digester(algorithm);
  await digester.updateFrom(source);
  return { digest: digester.digest(), size: digester.size };
}
