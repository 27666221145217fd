/**
 * One repository on one registry name, with the endpoints that serve it: the base that the
 * resolver, fetcher and pusher share (containerd's `dockerBase`). It builds
 * `<scheme>://<host><path>/<repository>/<...>` URLs (with `?ns=<registry>` on mirrors) and sends
 * requests with the repository's token scope.
 *
 * @module
 */

import type { Reference } from "../reference/reference.ts";
import { type ErrorKind, notFound } from "../../plugins/errdefs.ts";
import { type RegistryError, responseError } from "./errors.ts";
import type { Logger } from "../../log.ts";
import { mergeScopes, repositoryScope } from "./auth.ts";
import { type HostCapability, isMirror, type RegistryHost, type RegistryHosts } from "./hosts.ts";
import { type RequestBody, type RetryPolicy, send, type Timeouts } from "./http.ts";

/** Request tuning shared by resolver, fetcher and pusher. */
export interface RequestTuning {
  retry?: Partial<RetryPolicy>;
  timeouts?: Partial<Timeouts>;
  logger?: Logger;
}

/** Options of {@link Repository.request}. */
export interface RepositoryRequest {
  method: string;
  /** Path parts after the repository (`["manifests", "latest"]`), or a full URL. */
  parts?: string[];
  url?: URL;
  headers?: HeadersInit;
  body?: RequestBody | null;
  /** Ask for a push token (`pull,push`) rather than a pull token. */
  push?: boolean;
  /** Extra token scopes (a cross-repository mount's source). */
  scopes?: string[];
  /** Add `?ns=` on mirrors (resolve and fetch do, push does not). */
  namespace?: boolean;
  /** Authorize the request (default true; false for URLs on other origins). */
  authorize?: boolean;
  /** Overrides of the retry policy for this request. */
  retry?: Partial<RetryPolicy>;
  signal?: AbortSignal;
}

/** A repository and its endpoints. */
export class Repository {
  /** The reference the repository was opened with. */
  readonly ref: Reference;
  /** The endpoints, mirrors first, as configured. */
  readonly hosts: readonly RegistryHost[];
  readonly tuning: RequestTuning;

  constructor(ref: Reference, hosts: readonly RegistryHost[], tuning: RequestTuning = {}) {
    this.ref = ref;
    this.hosts = hosts;
    this.tuning = tuning;
  }

  /** Opens `ref`'s repository with the endpoints `registryHosts` gives for its domain. */
  static async open(
    ref: Reference,
    registryHosts: RegistryHosts,
    tuning: RequestTuning = {},
  ): Promise<Repository> {
    const hosts = await registryHosts.lookup(ref.domain);
    return new Repository(ref, hosts, tuning);
  }

  /** The repository path (`library/busybox`). */
  get path(): string {
    return this.ref.path;
  }

  /** The endpoints with every capability in `caps`, in order. */
  filterHosts(...caps: HostCapability[]): RegistryHost[] {
    return this.hosts.filter((h) => caps.every((c) => h.capabilities.has(c)));
  }

  /**
   * The endpoints with `caps`, or a NotFound error saying none is configured.
   *
   * @throws {TainerdError} NotFound when no endpoint has the capabilities.
   */
  requireHosts(what: string, ...caps: HostCapability[]): RegistryHost[] {
    const hosts = this.filterHosts(...caps);
    if (hosts.length === 0) {
      throw notFound(
        `Cannot ${what} ${this.ref}: no configured host of ${this.ref.domain} has the ` +
          `${caps.join("+")} capability`,
      );
    }
    return hosts;
  }

  /** The URL of `parts` under this repository on `host`. */
  url(host: RegistryHost, parts: string[], namespace = false): URL {
    // Tags and digests only hold URL-safe characters ([\w.-], "alg:hex"): no escaping needed.
    const segments = [host.path.replace(/\/+$/, ""), this.path, ...parts];
    const url = new URL(`${host.scheme}://${host.host}${segments.join("/")}`);
    if (namespace && isMirror(host, this.ref.domain)) url.searchParams.set("ns", this.ref.domain);
    return url;
  }

  /** The scopes a request needs. */
  scopes(push = false, extra: string[] = []): string[] {
    return mergeScopes([repositoryScope(this.path, push)], extra);
  }

  /** Sends a request to `host` through `send()`, with the host's headers and authorizer. */
  request(host: RegistryHost, request: RepositoryRequest): Promise<Response> {
    const url = request.url ?? this.url(host, request.parts ?? [], request.namespace);
    const headers = new Headers(host.header);
    new Headers(request.headers).forEach((v, k) => headers.set(k, v));
    return send({
      client: host.client,
      method: request.method,
      url,
      headers,
      body: request.body,
      authorizer: request.authorize === false ? undefined : host.authorizer,
      scopes: this.scopes(request.push, request.scopes),
      retry: { ...this.tuning.retry, ...request.retry },
      timeouts: this.tuning.timeouts,
      signal: request.signal,
      logger: this.tuning.logger,
    });
  }

  /**
   * Turns an unsuccessful response from `host` into a classified error, with a hint when a
   * plain-HTTP request met a server that only speaks HTTPS (Go answers those with a 400).
   */
  async responseError(
    host: RegistryHost,
    response: Response,
    context: string,
    kind?: ErrorKind,
  ): Promise<RegistryError> {
    const hint = response.status === 400 && host.scheme === "http"
      ? `is ${host.host} an HTTPS-only server? Then set server = "https://${host.host}" in its ` +
        `hosts.toml (plain HTTP is the default for loopback hosts and with --plain-http)`
      : undefined;
    return await responseError(response, context, kind, hint);
  }
}
