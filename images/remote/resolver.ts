/**
 * The resolver, as containerd's `remotes/docker` resolver: turns a reference into the
 * descriptor of its root manifest (`HEAD /v2/<repo>/manifests/<tag|digest>`, falling back to
 * `GET` when the registry does not say the digest, size or media type), trying the hosts that
 * may resolve in order (mirrors first), and hands out fetchers and pushers for the repository.
 *
 * @module
 */

import { parseReference, type Reference } from "../reference/reference.ts";
import { invalidArgument, notFound, TainerdError } from "../../plugins/errdefs.ts";
import { Digester, parseDigest } from "../../plugins/content/digest.ts";
import type { Descriptor } from "./descriptor.ts";
import { discard } from "./errors.ts";
import { type HostOptions, type RegistryHost, RegistryHosts } from "./hosts.ts";
import {
  isSchema1MediaType,
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_MANIFEST,
  RESOLVE_ACCEPT,
} from "./media_types.ts";
import { Repository, type RequestTuning } from "./repository.ts";
import { Fetcher } from "./fetcher.ts";
import { Pusher } from "./pusher.ts";

/** The largest manifest the resolver accepts, as containerd's `MaxManifestSize`. */
export const MAX_MANIFEST_SIZE = 4 * 1048 * 1048;

/** Options of {@link Resolver}. */
export interface ResolverOptions extends HostOptions {
  /** Use these hosts instead of building them from the options (the caller closes them). */
  hosts?: RegistryHosts;
  /** The largest manifest accepted; default {@link MAX_MANIFEST_SIZE}. */
  maxManifestSize?: number;
}

/** A resolved reference. */
export interface Resolved {
  /** The reference, normalised (`docker.io/library/busybox:latest`). */
  name: string;
  /** The root manifest (or index). */
  descriptor: Descriptor;
}

/** Per-call options. */
export interface CallOptions {
  signal?: AbortSignal;
}

function toReference(ref: string | Reference): Reference {
  return typeof ref === "string" ? parseReference(ref) : ref;
}

function mediaTypeOf(response: Response): string {
  const type = response.headers.get("content-type") ?? "";
  const semi = type.indexOf(";");
  return (semi >= 0 ? type.slice(0, semi) : type).trim().toLowerCase();
}

// Content types that say nothing about the manifest: the body tells (old registries served
// schema 1 as text/plain, which containerd takes for schema 1 outright).
const GENERIC_TYPES = new Set(["", "application/json", "application/octet-stream", "text/plain"]);

/**
 * Guesses a manifest's media type from its JSON when the registry did not send a useful
 * `Content-Type`: its `mediaType` field, else its shape.
 */
export function detectManifestMediaType(bytes: Uint8Array): string | undefined {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
  if (!json || typeof json !== "object") return undefined;
  if (json.schemaVersion === 1) return MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED;
  if (typeof json.mediaType === "string" && json.mediaType) return json.mediaType;
  if (Array.isArray(json.manifests)) return MEDIA_TYPE_OCI_INDEX;
  if (json.config && Array.isArray(json.layers)) return MEDIA_TYPE_OCI_MANIFEST;
  return undefined;
}

const MANIFEST_TYPES = new Set([
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
]);

/**
 * Resolves references and opens fetchers and pushers, over the hosts of {@link HostOptions}.
 * Owns its transports unless `hosts` is given: call {@link Resolver.close} when done.
 */
export class Resolver {
  /** The hosts (transports, authorizer) this resolver uses. */
  readonly hosts: RegistryHosts;
  readonly #ownsHosts: boolean;
  readonly #maxManifestSize: number;
  readonly #tuning: RequestTuning;

  constructor(options: ResolverOptions = {}) {
    this.hosts = options.hosts ?? new RegistryHosts(options);
    this.#ownsHosts = options.hosts === undefined;
    this.#maxManifestSize = options.maxManifestSize ?? MAX_MANIFEST_SIZE;
    const hostOptions = this.hosts.options;
    this.#tuning = {
      retry: options.retry ?? hostOptions.retry,
      timeouts: options.timeouts ?? hostOptions.timeouts,
      logger: options.logger ?? hostOptions.logger,
    };
  }

  /** Opens the repository of `ref` (its hosts, for custom requests). */
  async repository(ref: string | Reference): Promise<Repository> {
    return await Repository.open(toReference(ref), this.hosts, this.#tuning);
  }

  /**
   * Resolves `ref` (a string is normalised: `busybox` → `docker.io/library/busybox:latest`)
   * to the descriptor of its root manifest.
   *
   * @throws {TainerdError} NotFound when no host has it; PermissionDenied when access is
   *   refused; NotImplemented for schema 1 manifests; InvalidArgument for a bad reference.
   */
  async resolve(ref: string | Reference, options: CallOptions = {}): Promise<Resolved> {
    const reference = toReference(ref);
    if (reference.tag === undefined && reference.digest === undefined) {
      throw invalidArgument(`Cannot resolve ${reference}: a tag or digest is required`);
    }
    const repo = await this.repository(reference);
    const name = reference.toString();
    const digest = reference.digest;
    const paths: string[][] = digest
      ? [["manifests", digest], ["blobs", digest]]
      : [["manifests", reference.tag!]];
    const hosts = digest
      ? repo.requireHosts("resolve", "pull")
      : repo.requireHosts("resolve", "pull", "resolve");
    let firstError: TainerdError | undefined;
    for (const parts of paths) {
      for (const host of hosts) {
        try {
          const descriptor = await this.#resolveOn(repo, host, parts, digest, options);
          if (descriptor) return { name, descriptor };
        } catch (err) {
          if (err instanceof TainerdError && err.kind === "NotImplemented") throw err;
          if (!(err instanceof TainerdError)) throw err;
          repo.tuning.logger?.info("trying next host", { host: host.host, error: err.message });
          firstError ??= err;
        }
      }
    }
    throw firstError ?? notFound(`Cannot resolve ${name}: not found`);
  }

  /** One host, one path: the descriptor, undefined on 404, or an error. */
  async #resolveOn(
    repo: Repository,
    host: RegistryHost,
    parts: string[],
    digest: string | undefined,
    options: CallOptions,
  ): Promise<Descriptor | undefined> {
    const name = repo.ref.toString();
    const request = (method: string) =>
      repo.request(host, {
        method,
        parts,
        headers: { accept: RESOLVE_ACCEPT },
        namespace: true,
        signal: options.signal,
      });
    let response = await request("HEAD");
    if (response.status === 405) {
      await discard(response);
      response = await request("GET");
    }
    if (response.status === 404) {
      await discard(response);
      return undefined;
    }
    if (!response.ok) {
      const context = response.status === 401 || response.status === 403
        ? `Cannot resolve ${name} on ${host.host}: pull access denied, repository does not exist or may require authorization`
        : `Cannot resolve ${name} on ${host.host}`;
      throw await repo.responseError(host, response, context);
    }
    let mediaType = mediaTypeOf(response);
    const lengthHeader = response.headers.get("content-length");
    let size = lengthHeader !== null && /^\d+$/.test(lengthHeader) ? Number(lengthHeader) : -1;
    let resolvedDigest = digest;
    if (!resolvedDigest) {
      const header = response.headers.get("docker-content-digest");
      if (header && size !== -1) {
        try {
          parseDigest(header);
        } catch (err) {
          throw new TainerdError(
            "Unavailable",
            `Cannot resolve ${name} on ${host.host}: invalid Docker-Content-Digest header ${
              JSON.stringify(header)
            }`,
            { cause: err },
          );
        }
        resolvedDigest = header;
      }
    }
    if (isSchema1MediaType(mediaType)) throw schema1Error(name, mediaType);
    if (!resolvedDigest || size === -1 || GENERIC_TYPES.has(mediaType)) {
      repo.tuning.logger?.debug("no digest, size or media type in the HEAD answer; fetching", {
        ref: name,
      });
      if (response.body === null) {
        await discard(response);
        response = await request("GET");
        if (!response.ok) {
          throw await repo.responseError(host, response, `Cannot resolve ${name} on ${host.host}`);
        }
        const type = mediaTypeOf(response);
        if (!GENERIC_TYPES.has(type)) mediaType = type;
      }
      const bytes = await readLimited(response, this.#maxManifestSize, name);
      if (GENERIC_TYPES.has(mediaType)) mediaType = detectManifestMediaType(bytes) ?? mediaType;
      if (isSchema1MediaType(mediaType)) throw schema1Error(name, mediaType);
      const algorithm = resolvedDigest ? parseDigest(resolvedDigest).algorithm : "sha256";
      const actual = new Digester(algorithm).update(bytes).digest();
      if (resolvedDigest && digest && actual !== resolvedDigest) {
        throw new TainerdError(
          "FailedPrecondition",
          `Cannot resolve ${name} on ${host.host}: the registry sent content with digest ${actual}`,
        );
      }
      resolvedDigest ??= actual;
      size = bytes.byteLength;
    } else {
      await discard(response);
    }
    if (size > this.#maxManifestSize) {
      throw notFound(
        `Cannot resolve ${name} on ${host.host}: rejecting a ${size} byte manifest (the limit is ${this.#maxManifestSize})`,
      );
    }
    if (!MANIFEST_TYPES.has(mediaType)) {
      repo.tuning.logger?.debug("resolved an unexpected media type", { mediaType, ref: name });
    }
    return { mediaType, digest: resolvedDigest!, size };
  }

  /** A fetcher for `ref`'s repository. */
  async fetcher(ref: string | Reference): Promise<Fetcher> {
    return new Fetcher(await this.repository(ref));
  }

  /** A pusher for `ref`'s repository (manifests are tagged with `ref`'s tag on request). */
  async pusher(ref: string | Reference): Promise<Pusher> {
    return new Pusher(await this.repository(ref));
  }

  /** Closes the transports, when this resolver created them. */
  close(): void {
    if (this.#ownsHosts) this.hosts.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function schema1Error(name: string, mediaType: string): TainerdError {
  return new TainerdError(
    "NotImplemented",
    `Cannot resolve ${name}: schema 1 manifests are not supported (the registry sent ${mediaType}); ` +
      `push the image again with a current client to convert it`,
  );
}

async function readLimited(response: Response, limit: number, name: string): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (response.body) {
    for await (const chunk of response.body) {
      size += chunk.byteLength;
      if (size > limit) {
        throw notFound(`Cannot resolve ${name}: rejecting a manifest larger than ${limit} bytes`);
      }
      chunks.push(chunk);
    }
  }
  const out = new Uint8Array(size);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}
