/**
 * Registry authentication as containerd's `remotes/docker` authorizer does it:
 * `WWW-Authenticate` challenges are parsed; a Bearer challenge leads to a token from its
 * realm (anonymous `GET realm?service&scope`, or with credentials an OAuth2 `POST` falling back
 * to `GET` with basic auth), a Basic challenge to basic auth with the host's credentials.
 * Tokens are cached per host and scope set until they expire; a 401 on a cached token drops it
 * and fetches a fresh one.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { invalidArgument, TainerdError } from "../../plugins/errdefs.ts";
import type { Logger } from "../../log.ts";
import { responseError } from "./errors.ts";
import {
  type AuthorizationUsed,
  type HttpClient,
  type RequestAuthorizer,
  type RetryPolicy,
  send,
  type Timeouts,
} from "./http.ts";

/** The authentication schemes a registry may challenge with. */
export type AuthScheme = "basic" | "digest" | "bearer";

/** One `WWW-Authenticate` challenge. */
export interface Challenge {
  /** The scheme, lowercase. */
  scheme: AuthScheme;
  /** The parameters with lowercase names: `realm`, `service`, `scope`, `error`… */
  params: Record<string, string>;
}

const SCHEME_ORDER: Record<AuthScheme, number> = { bearer: 0, digest: 1, basic: 2 };
const TOKEN_CHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;

/**
 * Parses `WWW-Authenticate` values into challenges, strongest scheme first (Bearer, Digest,
 * Basic). Accepts several challenges in one value (`Bearer realm="x", Basic realm="y"`, the
 * form `Headers.get` joins repeated headers into); unknown schemes are skipped.
 */
export function parseChallenges(
  header: string | null | undefined | Headers | readonly string[],
): Challenge[] {
  if (header instanceof Headers) header = header.get("www-authenticate");
  if (header === null || header === undefined) return [];
  const values = typeof header === "string" ? [header] : header;
  const out: Challenge[] = [];
  for (const value of values) out.push(...parseOne(value));
  return out
    .map((c, i) => ({ c, i }))
    .sort((a, b) => SCHEME_ORDER[a.c.scheme] - SCHEME_ORDER[b.c.scheme] || a.i - b.i)
    .map(({ c }) => c);
}

function parseOne(s: string): Challenge[] {
  const challenges: Challenge[] = [];
  let pos = 0;
  const skipSpace = () => {
    while (pos < s.length && (s[pos] === " " || s[pos] === "\t")) pos++;
  };
  const token = (): string => {
    const start = pos;
    while (pos < s.length && TOKEN_CHAR.test(s[pos])) pos++;
    return s.slice(start, pos);
  };
  const quotedOrToken = (): string => {
    if (s[pos] !== '"') return token();
    pos++;
    let value = "";
    while (pos < s.length && s[pos] !== '"') {
      if (s[pos] === "\\" && pos + 1 < s.length) pos++;
      value += s[pos++];
    }
    pos++; // the closing quote
    return value;
  };
  while (pos < s.length) {
    while (pos < s.length && (s[pos] === " " || s[pos] === "\t" || s[pos] === ",")) pos++;
    const scheme = token().toLowerCase();
    if (!scheme) break;
    const params: Record<string, string> = {};
    let nextChallenge = false;
    for (;;) {
      const save = pos;
      skipSpace();
      const key = token();
      skipSpace();
      if (!key || s[pos] !== "=") {
        // Not "key=": the start of the next challenge (or a token68).
        pos = save;
        nextChallenge = key !== "";
        break;
      }
      pos++;
      skipSpace();
      params[key.toLowerCase()] = quotedOrToken();
      skipSpace();
      if (s[pos] !== ",") break;
      pos++;
    }
    // Skip anything unparsable (a token68, an unquoted URL's tail) up to the next comma.
    if (!nextChallenge) { while (pos < s.length && s[pos] !== ",") pos++; }
    if (scheme === "bearer" || scheme === "basic" || scheme === "digest") {
      challenges.push({ scheme, params });
    }
  }
  return challenges;
}

/** Credentials for a registry host. An empty `username` makes `secret` a refresh token. */
export interface Credentials {
  username: string;
  secret: string;
}

/** Supplies credentials for a host (`registry-1.docker.io`, `127.0.0.1:5000`), or none. */
export type CredentialsProvider = (
  host: string,
) => Credentials | undefined | Promise<Credentials | undefined>;

/**
 * Parses `user:password` (as `ctr --user`); the password may contain `:`.
 *
 * @throws {TainerdError} InvalidArgument when there is no `:` or no user name.
 */
export function parseUserPass(s: string): Credentials {
  const i = s.indexOf(":");
  if (i <= 0) {
    throw invalidArgument('Invalid credentials: expected "user:password"');
  }
  return { username: s.slice(0, i), secret: s.slice(i + 1) };
}

/**
 * A provider answering with fixed credentials: for every host, or per host from a map
 * (`{"127.0.0.1:5000": {username, secret}}`).
 */
export function staticCredentials(
  credentials: Credentials | Readonly<Record<string, Credentials>>,
): CredentialsProvider {
  if (typeof (credentials as Credentials).username === "string") {
    const c = credentials as Credentials;
    return () => c;
  }
  const map = credentials as Readonly<Record<string, Credentials>>;
  return (host) => Object.hasOwn(map, host) ? map[host] : undefined;
}

/** The token scope for pulling (and pushing) a repository: `repository:x/y:pull,push`. */
export function repositoryScope(path: string, push = false): string {
  return `repository:${path}:${push ? "pull,push" : "pull"}`;
}

/** Sorted, de-duplicated union of scope lists. */
export function mergeScopes(...lists: readonly (readonly string[])[]): string[] {
  return [...new Set(lists.flat().filter((s) => s !== ""))].sort();
}

/** Where and for what to ask for a token. */
export interface TokenRequest {
  realm: string;
  service?: string;
  scopes: readonly string[];
  /** With a secret: the user name, or "" when the secret is a refresh token. */
  username?: string;
  secret?: string;
}

/** A token server's answer. */
export interface TokenResponse {
  token: string;
  /** Lifetime in seconds (60 when the server does not say, as the spec defines). */
  expiresIn: number;
  issuedAt?: string;
  refreshToken?: string;
}

/** Transport settings of token requests. */
export interface TokenFetchOptions {
  client: HttpClient;
  headers?: HeadersInit;
  retry?: Partial<RetryPolicy>;
  timeouts?: Partial<Timeouts>;
  signal?: AbortSignal;
  logger?: Logger;
}

async function readTokenResponse(response: Response, realm: string): Promise<TokenResponse> {
  let json: Record<string, unknown>;
  try {
    json = await response.json();
  } catch (err) {
    throw new TainerdError("Unavailable", `Cannot read the token from ${realm}: invalid JSON`, {
      cause: err,
    });
  }
  const token = typeof json.access_token === "string" && json.access_token
    ? json.access_token
    : typeof json.token === "string"
    ? json.token
    : "";
  if (!token) {
    throw new TainerdError(
      "Unavailable",
      `Cannot read the token from ${realm}: the authorization server sent no token`,
    );
  }
  const expiresIn = typeof json.expires_in === "number" && json.expires_in > 0
    ? json.expires_in
    : 60;
  return {
    token,
    expiresIn,
    issuedAt: typeof json.issued_at === "string" ? json.issued_at : undefined,
    refreshToken: typeof json.refresh_token === "string" ? json.refresh_token : undefined,
  };
}

function describeScopes(scopes: readonly string[]): string {
  return scopes.length ? ` for ${scopes.join(" ")}` : "";
}

/**
 * Gets a token with `GET realm?service=…&scope=…`, with basic auth when a secret is given
 * (docker's token protocol).
 *
 * @throws {TainerdError} PermissionDenied when the server refuses, Unavailable otherwise.
 */
export async function fetchToken(
  request: TokenRequest,
  options: TokenFetchOptions,
): Promise<TokenResponse> {
  const url = new URL(request.realm);
  if (request.service) url.searchParams.append("service", request.service);
  for (const scope of request.scopes) url.searchParams.append("scope", scope);
  const headers = new Headers(options.headers);
  if (request.secret) {
    headers.set("authorization", basicAuthorization(request.username ?? "", request.secret));
  }
  const response = await send({
    client: options.client,
    method: "GET",
    url,
    headers,
    retry: options.retry,
    timeouts: options.timeouts,
    signal: options.signal,
    logger: options.logger,
  });
  if (!response.ok) {
    throw await responseError(
      response,
      `Cannot get a token from ${request.realm}${describeScopes(request.scopes)}`,
    );
  }
  return await readTokenResponse(response, request.realm);
}

/**
 * Gets a token with an OAuth2 `POST` to the realm (grant `password`, or `refresh_token` when
 * the user name is empty), as containerd does when it has a secret.
 *
 * @throws {TainerdError} a RegistryError with the status when the server refuses.
 */
export async function fetchTokenWithOAuth(
  request: TokenRequest,
  clientId: string,
  options: TokenFetchOptions,
): Promise<TokenResponse> {
  const form = new URLSearchParams();
  if (request.scopes.length) form.set("scope", request.scopes.join(" "));
  form.set("service", request.service ?? "");
  form.set("client_id", clientId);
  if (request.username) {
    form.set("grant_type", "password");
    form.set("username", request.username);
    form.set("password", request.secret ?? "");
  } else {
    form.set("grant_type", "refresh_token");
    form.set("refresh_token", request.secret ?? "");
  }
  const headers = new Headers(options.headers);
  headers.set("content-type", "application/x-www-form-urlencoded; charset=utf-8");
  const response = await send({
    client: options.client,
    method: "POST",
    url: request.realm,
    headers,
    body: new TextEncoder().encode(form.toString()),
    retry: options.retry,
    timeouts: options.timeouts,
    signal: options.signal,
    logger: options.logger,
  });
  if (!response.ok) {
    throw await responseError(
      response,
      `Cannot get a token from ${request.realm}${describeScopes(request.scopes)}`,
    );
  }
  return await readTokenResponse(response, request.realm);
}

/** The `Authorization` value for basic auth. */
export function basicAuthorization(username: string, secret: string): string {
  return `Basic ${Buffer.from(`${username}:${secret}`, "utf8").toString("base64")}`;
}

/** Options of {@link Authorizer}. */
export interface AuthorizerOptions {
  /** Credentials per host; without them only anonymous tokens are fetched. */
  credentials?: CredentialsProvider;
  /** Headers sent with token requests (`User-Agent`). */
  headers?: HeadersInit;
  /** The OAuth2 client id; default `tainerd-client`. */
  clientId?: string;
  /** The clock, in ms (tests). */
  now?: () => number;
  retry?: Partial<RetryPolicy>;
  timeouts?: Partial<Timeouts>;
  logger?: Logger;
}

interface HostAuth {
  scheme: "basic" | "bearer";
  realm?: string;
  service?: string;
  /** Scopes the challenge asked for, added to every token request for this host. */
  scopes: string[];
  credentials?: Credentials;
}

interface CachedToken {
  header: string;
  expiresAt: number;
}

/**
 * Authorizes registry requests for every host of a resolver: set up by the first 401 of a
 * host, then applied to its requests up front. Implements {@link RequestAuthorizer}.
 */
export class Authorizer implements RequestAuthorizer {
  readonly #options: AuthorizerOptions;
  readonly #hosts = new Map<string, HostAuth>();
  readonly #tokens = new Map<string, CachedToken>();
  readonly #pending = new Map<string, Promise<CachedToken>>();
  readonly #now: () => number;

  constructor(options: AuthorizerOptions = {}) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** How many tokens are cached (tests and introspection). */
  get cachedTokens(): number {
    return this.#tokens.size;
  }

  /** Forgets everything learnt about `host` (all hosts when omitted). */
  reset(host?: string): void {
    if (host === undefined) {
      this.#hosts.clear();
      this.#tokens.clear();
      return;
    }
    this.#hosts.delete(host);
    for (const key of [...this.#tokens.keys()]) {
      if (key.startsWith(`${host} `)) this.#tokens.delete(key);
    }
  }

  #key(host: string, scopes: readonly string[]): string {
    return `${host} ${scopes.join(" ")}`;
  }

  /** The `Authorization` for a request to `url`, if its host has asked for one. */
  async authorize(
    url: URL,
    scopes: readonly string[],
    client: HttpClient,
    signal?: AbortSignal,
  ): Promise<AuthorizationUsed | undefined> {
    const auth = this.#hosts.get(url.host);
    if (!auth) return undefined;
    if (auth.scheme === "basic") {
      const c = auth.credentials!;
      return { header: basicAuthorization(c.username, c.secret), fresh: false };
    }
    const all = mergeScopes(scopes, auth.scopes);
    const key = this.#key(url.host, all);
    const cached = this.#tokens.get(key);
    if (cached && cached.expiresAt > this.#now()) return { header: cached.header, fresh: false };
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = this.#fetch(auth, all, client, signal).finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    const token = await pending;
    this.#tokens.set(key, token);
    return { header: token.header, fresh: true };
  }

  async #fetch(
    auth: HostAuth,
    scopes: string[],
    client: HttpClient,
    signal?: AbortSignal,
  ): Promise<CachedToken> {
    const request: TokenRequest = {
      realm: auth.realm!,
      service: auth.service,
      scopes,
      username: auth.credentials?.username,
      secret: auth.credentials?.secret,
    };
    const fetchOptions: TokenFetchOptions = {
      client,
      headers: this.#options.headers,
      retry: this.#options.retry,
      timeouts: this.#options.timeouts,
      signal,
      logger: this.#options.logger,
    };
    let response: TokenResponse;
    if (request.secret) {
      try {
        response = await fetchTokenWithOAuth(
          request,
          this.#options.clientId ?? "tainerd-client",
          fetchOptions,
        );
      } catch (err) {
        const status = (err as { status?: number }).status;
        const fallback = status === 404 || status === 401 || status === 400 ||
          (status === 405 && !!request.username);
        if (!fallback) throw err;
        this.#options.logger?.debug("OAuth token request refused, trying GET", {
          realm: request.realm,
          status,
        });
        response = await fetchToken(request, fetchOptions);
      }
    } else {
      response = await fetchToken(request, fetchOptions);
    }
    // Renew a little early: the token must still be valid when the registry checks it.
    const lifetime = Math.max(response.expiresIn, 60) * 1000;
    return { header: `Bearer ${response.token}`, expiresAt: this.#now() + lifetime * 0.9 };
  }

  /**
   * Learns from a 401: sets up the host's scheme from the challenge, or drops a stale token.
   * False when retrying cannot help (credentials refused, no credentials for Basic, a fresh
   * token refused).
   */
  async unauthorized(
    url: URL,
    response: Response,
    used: AuthorizationUsed | undefined,
    scopes: readonly string[],
  ): Promise<boolean> {
    const host = url.host;
    for (const challenge of parseChallenges(response.headers)) {
      if (challenge.scheme === "bearer") {
        const realm = challenge.params.realm;
        if (!realm) continue;
        try {
          new URL(realm);
        } catch {
          throw new TainerdError(
            "Unavailable",
            `Cannot authenticate to ${host}: invalid token realm ${JSON.stringify(realm)}`,
          );
        }
        const challengeScopes = (challenge.params.scope ?? "").split(" ").filter(Boolean);
        const existing = this.#hosts.get(host);
        if (existing?.scheme === "bearer" && used) {
          const known = mergeScopes(scopes, existing.scopes);
          const missing = challengeScopes.filter((s) => !known.includes(s));
          if (missing.length > 0) {
            existing.scopes = mergeScopes(existing.scopes, missing);
            existing.realm = realm;
            existing.service = challenge.params.service;
            return true;
          }
          const key = this.#key(host, known);
          this.#tokens.delete(key);
          // A token fetched for this very request was refused: asking again will not help.
          return !used.fresh;
        }
        const credentials = await this.#credentials(host);
        this.#hosts.set(host, {
          scheme: "bearer",
          realm,
          service: challenge.params.service,
          scopes: challengeScopes,
          credentials,
        });
        return true;
      }
      if (challenge.scheme === "basic") {
        if (used) return false;
        const credentials = await this.#credentials(host);
        if (!credentials?.username || !credentials.secret) return false;
        this.#hosts.set(host, { scheme: "basic", scopes: [], credentials });
        return true;
      }
    }
    return false;
  }

  async #credentials(host: string): Promise<Credentials | undefined> {
    const provider = this.#options.credentials;
    if (!provider) return undefined;
    const c = await provider(host);
    return c && (c.username || c.secret) ? c : undefined;
  }
}
