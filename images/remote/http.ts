/**
 * HTTP for the registry client: transports with per-host TLS (system CAs plus extra CAs,
 * client certificates, skip-verify), and {@link send}, one request with everything a registry
 * conversation needs around it: authorization, redirects (never forwarding credentials to
 * another origin, as blob storage redirects do), retries with backoff on 408/429/5xx and on
 * dropped connections, a time limit for the response headers and an idle limit for the body.
 *
 * Two transports implement {@link HttpClient}: Deno's `fetch` with `Deno.createHttpClient`
 * (the default: HTTP/2, native TLS), and `node:http`/`node:https`, used when certificate
 * verification is off, which `Deno.createHttpClient` cannot do per client.
 *
 * @module
 */

import http from "node:http";
import https from "node:https";
import { rootCertificates } from "node:tls";
import { canceled, type ErrorKind, TainerdError } from "../../plugins/errdefs.ts";
import type { Logger } from "../../log.ts";
import { discard } from "./errors.ts";

/** TLS settings of a transport. */
export interface TlsOptions {
  /** Extra trusted CA certificates, PEM text; added to the system's. */
  caCerts?: string[];
  /** Client certificates (PEM text) presented to servers that ask for one. */
  clientCerts?: { cert: string; key: string }[];
  /** Do not verify server certificates. */
  skipVerify?: boolean;
  /** Trust the system CA bundle (`/etc/ssl/certs/ca-certificates.crt`…); default true. */
  systemCAs?: boolean;
}

/** One HTTP exchange as a transport sees it; redirects are never followed by transports. */
export interface HttpRequest {
  method: string;
  url: URL;
  headers: Headers;
  body?: Uint8Array | ReadableStream<Uint8Array> | null;
  signal?: AbortSignal;
}

/** A transport: sends one request and returns the response with a streaming body. */
export interface HttpClient {
  /** Which implementation this is. */
  readonly kind: "fetch" | "node";
  /** Sends `request`; rejects on network failures, resolves on any HTTP status. */
  send(request: HttpRequest): Promise<Response>;
  /** Releases pooled connections. */
  close(): void;
}

const SYSTEM_BUNDLES = [
  "/etc/ssl/certs/ca-certificates.crt",
  "/etc/pki/tls/certs/ca-bundle.crt",
  "/etc/ssl/ca-bundle.pem",
  "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
  "/etc/ssl/cert.pem",
];

let systemBundle: string | null | undefined;

/** The system CA bundle (PEM), read once; null when none is found. */
export function systemCABundle(): string | null {
  if (systemBundle !== undefined) return systemBundle;
  systemBundle = null;
  for (const path of SYSTEM_BUNDLES) {
    try {
      systemBundle = Deno.readTextFileSync(path);
      break;
    } catch {
      // Try the next location.
    }
  }
  return systemBundle;
}

const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

class FetchHttpClient implements HttpClient {
  readonly kind = "fetch" as const;
  #client: Deno.HttpClient | undefined;

  constructor(tls: TlsOptions) {
    const caCerts: string[] = [];
    if (tls.systemCAs !== false) {
      const bundle = systemCABundle();
      if (bundle) caCerts.push(bundle);
    }
    caCerts.push(...(tls.caCerts ?? []));
    const pair = tls.clientCerts?.[0];
    if (caCerts.length > 0 || pair) {
      this.#client = Deno.createHttpClient(
        pair ? { caCerts, cert: pair.cert, key: pair.key } : { caCerts },
      );
    }
  }

  async send(request: HttpRequest): Promise<Response> {
    if (!request.headers.has("accept-encoding")) request.headers.set("accept-encoding", "identity");
    const init: RequestInit & { client?: Deno.HttpClient } = {
      method: request.method,
      headers: request.headers,
      body: (request.body ?? undefined) as BodyInit | undefined,
      redirect: "manual",
      signal: request.signal,
    };
    if (this.#client) init.client = this.#client;
    return await fetch(request.url, init);
  }

  close(): void {
    this.#client?.close();
    this.#client = undefined;
  }
}

class NodeHttpClient implements HttpClient {
  readonly kind = "node" as const;
  readonly #httpAgent: http.Agent;
  readonly #httpsAgent: https.Agent;

  constructor(tls: TlsOptions) {
    const ca: string[] = [];
    if (tls.caCerts?.length) {
      // node's `ca` replaces the default roots; keep them, as the fetch transport does.
      ca.push(...rootCertificates);
      if (tls.systemCAs !== false) {
        const bundle = systemCABundle();
        if (bundle) ca.push(bundle);
      }
      ca.push(...tls.caCerts);
    }
    const pair = tls.clientCerts?.[0];
    this.#httpAgent = new http.Agent({ keepAlive: false });
    this.#httpsAgent = new https.Agent({
      keepAlive: false,
      rejectUnauthorized: !tls.skipVerify,
      ...(ca.length ? { ca } : {}),
      ...(pair ? { cert: pair.cert, key: pair.key } : {}),
    });
  }

  send(request: HttpRequest): Promise<Response> {
    return new Promise<Response>((resolve, reject) => {
      const isHttps = request.url.protocol === "https:";
      const headers: Record<string, string> = {};
      request.headers.forEach((value, key) => headers[key] = value);
      headers["accept-encoding"] ??= "identity";
      const body = request.body;
      if (body instanceof Uint8Array) headers["content-length"] = String(body.byteLength);
      const req = (isHttps ? https : http).request(request.url, {
        method: request.method,
        headers,
        agent: isHttps ? this.#httpsAgent : this.#httpAgent,
      });
      const onAbort = () => req.destroy(abortReason(request.signal));
      if (request.signal?.aborted) {
        reject(abortReason(request.signal));
        return;
      }
      request.signal?.addEventListener("abort", onAbort, { once: true });
      req.on("error", (err) => {
        request.signal?.removeEventListener("abort", onAbort);
        reject(err);
      });
      req.on("response", (res) => {
        const responseHeaders = new Headers();
        for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
          responseHeaders.append(res.rawHeaders[i], res.rawHeaders[i + 1]);
        }
        const status = res.statusCode ?? 0;
        let stream: ReadableStream<Uint8Array> | null = null;
        if (request.method === "HEAD" || NULL_BODY_STATUSES.has(status)) {
          res.resume();
          res.on("end", () => request.signal?.removeEventListener("abort", onAbort));
        } else {
          stream = nodeBodyStream(res, () => {
            request.signal?.removeEventListener("abort", onAbort);
          });
        }
        resolve(
          new Response(stream, { status, statusText: res.statusMessage, headers: responseHeaders }),
        );
      });
      if (body instanceof ReadableStream) {
        pipeBody(body, req).catch((err) => req.destroy(err));
      } else {
        req.end(body ?? undefined);
      }
    });
  }

  close(): void {
    this.#httpAgent.destroy();
    this.#httpsAgent.destroy();
  }
}

function abortReason(signal?: AbortSignal): Error {
  const reason = signal?.reason;
  return reason instanceof Error
    ? reason
    : new DOMException("The request was aborted", "AbortError");
}

async function pipeBody(body: ReadableStream<Uint8Array>, req: http.ClientRequest): Promise<void> {
  for await (const chunk of body) {
    if (!req.write(chunk)) {
      await new Promise<void>((resolve, reject) => {
        const done = () => {
          req.off("drain", done);
          req.off("close", closed);
          resolve();
        };
        const closed = () => {
          req.off("drain", done);
          reject(new Error("connection closed while sending the request body"));
        };
        req.on("drain", done);
        req.on("close", closed);
      });
    }
  }
  req.end();
}

function nodeBodyStream(
  res: http.IncomingMessage,
  finished: () => void,
): ReadableStream<Uint8Array> {
  let settled = false;
  return new ReadableStream<Uint8Array>({
    start(controller) {
      res.on("data", (chunk: Uint8Array) => {
        controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        if ((controller.desiredSize ?? 1) <= 0) res.pause();
      });
      res.on("end", () => {
        if (settled) return;
        settled = true;
        finished();
        if (res.complete) {
          controller.close();
        } else {
          controller.error(new Error("connection closed before the response body was complete"));
        }
      });
      const fail = (err?: Error) => {
        if (settled) return;
        settled = true;
        finished();
        controller.error(
          err ?? new Error("connection closed before the response body was complete"),
        );
      };
      res.on("error", fail);
      res.on("aborted", () => fail());
      res.on("close", () => {
        if (!res.complete) fail();
      });
    },
    pull() {
      res.resume();
    },
    cancel() {
      settled = true;
      finished();
      res.destroy();
    },
  }, { highWaterMark: 4 });
}

/** Transport selection for {@link createHttpClient}. */
export interface HttpClientOptions extends TlsOptions {
  /** Force a transport; by default `fetch`, or `node` when `skipVerify` is set. */
  transport?: "fetch" | "node";
}

/**
 * Creates a transport for the given TLS settings: `fetch` unless certificate verification is
 * off (or `node` is asked for).
 */
export function createHttpClient(options: HttpClientOptions = {}): HttpClient {
  const transport = options.transport ?? (options.skipVerify ? "node" : "fetch");
  if (transport === "fetch" && options.skipVerify) {
    throw new TainerdError(
      "InvalidArgument",
      "Cannot create an HTTP client: the fetch transport cannot skip certificate verification",
    );
  }
  return transport === "node" ? new NodeHttpClient(options) : new FetchHttpClient(options);
}

// ---------------------------------------------------------------------------------------------
// send(): one logical request, with auth, redirects, retries and timeouts.

/** What an authorizer put on a request, so a 401 can tell a stale token from bad credentials. */
export interface AuthorizationUsed {
  /** The `Authorization` header value sent. */
  header: string;
  /** Whether it was obtained for this request (rather than reused from a cache). */
  fresh: boolean;
}

/** The hooks {@link send} calls to authorize requests; implemented by `auth.ts`'s Authorizer. */
export interface RequestAuthorizer {
  /** The `Authorization` to send to `url`, if any is known for its host. */
  authorize(
    url: URL,
    scopes: readonly string[],
    client: HttpClient,
    signal?: AbortSignal,
  ): Promise<AuthorizationUsed | undefined>;
  /**
   * Learns from a 401 (its `WWW-Authenticate` challenges); true when retrying the request is
   * worth it (a new scheme was set up, or a stale token was dropped).
   */
  unauthorized(
    url: URL,
    response: Response,
    used: AuthorizationUsed | undefined,
    scopes: readonly string[],
  ): Promise<boolean>;
}

/** How often and how patiently to retry. */
export interface RetryPolicy {
  /** Attempts in all, the first included (1 = no retry). Default 5. */
  attempts: number;
  /** The first backoff delay in ms, doubled at each retry. Default 250. */
  minDelayMs: number;
  /** The longest backoff delay in ms. Default 5000. */
  maxDelayMs: number;
  /** The longest `Retry-After` honoured, in ms. Default 30000. */
  maxRetryAfterMs: number;
}

/** The default {@link RetryPolicy}. */
export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  attempts: 5,
  minDelayMs: 250,
  maxDelayMs: 5000,
  maxRetryAfterMs: 30000,
});

/** Time limits of a request. */
export interface Timeouts {
  /** The longest wait for the response headers, in ms. Default 60000. */
  headersMs: number;
  /** The longest wait for the next chunk of a response body, in ms. Default 60000. */
  idleMs: number;
}

/** The default {@link Timeouts}. */
export const DEFAULT_TIMEOUTS: Readonly<Timeouts> = Object.freeze({
  headersMs: 60000,
  idleMs: 60000,
});

/** A request body: bytes, or a factory called once per attempt (so retries can resend). */
export type RequestBody =
  | Uint8Array
  | (() => ReadableStream<Uint8Array> | Promise<ReadableStream<Uint8Array>>);

/** Options of {@link send}. */
export interface SendOptions {
  /** The transport. */
  client: HttpClient;
  method: string;
  url: URL | string;
  headers?: HeadersInit;
  body?: RequestBody | null;
  /** Authorization hooks; only applied on the request's own origin. */
  authorizer?: RequestAuthorizer;
  /** Token scopes the request needs (`repository:library/busybox:pull`). */
  scopes?: readonly string[];
  retry?: Partial<RetryPolicy>;
  timeouts?: Partial<Timeouts>;
  /** Statuses that are retried; default 408, 429, 500, 502, 503, 504. */
  retryStatuses?: ReadonlySet<number>;
  /** Follow redirects (default), or hand 3xx responses back. */
  redirect?: "follow" | "manual";
  signal?: AbortSignal;
  logger?: Logger;
}

/** The statuses retried by default. */
export const RETRY_STATUSES: ReadonlySet<number> = new Set([408, 429, 500, 502, 503, 504]);

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 10;

function origin(url: URL): string {
  return `${url.protocol}//${url.host}`;
}

/** Sleeps `ms`, rejecting early with a Canceled error when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(canceled("The operation was canceled"));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(canceled("The operation was canceled"));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The delay a `Retry-After` header asks for, in ms, or undefined. */
export function parseRetryAfter(
  value: string | null,
  now: number = Date.now(),
): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

function backoff(policy: RetryPolicy, retry: number): number {
  const base = Math.min(policy.maxDelayMs, policy.minDelayMs * 2 ** retry);
  // ±20% jitter, so many clients do not retry in lockstep.
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

function describeCause(err: unknown): string {
  const parts: string[] = [];
  let e: unknown = err;
  for (let depth = 0; e && depth < 5; depth++) {
    const message = e instanceof Error ? e.message : String(e);
    if (message && !parts.some((p) => p.includes(message))) parts.push(message);
    e = e instanceof Error ? e.cause : undefined;
  }
  return parts.join(": ") || String(err);
}

/**
 * Classifies a transport failure (the request never got a response, or its body broke off):
 * untrusted certificates and TLS/plain-HTTP mix-ups are FailedPrecondition with a hint;
 * refused, reset and dropped connections are Unavailable.
 */
export function networkError(err: unknown, method: string, url: URL | string): TainerdError {
  if (err instanceof TainerdError) return err;
  const detail = describeCause(err);
  const where = `Cannot ${method} ${url}`;
  if (
    /UnknownIssuer|unable to (verify|get local issuer)|self[- ]signed|certificate (verify|has expired|is not yet valid)|CERT_|NotValidForName|certificate.*(not valid|invalid)|BadSignature|UnsupportedCertVersion|invalid peer certificate/i
      .test(detail)
  ) {
    const specific = /invalid peer certificate: \w+/.exec(detail)?.[0] ?? detail;
    return new TainerdError(
      "FailedPrecondition",
      `${where}: the server's TLS certificate is not trusted (${specific}); ` +
        `add its CA to the host's configuration ("ca" in hosts.toml) or turn off verification ` +
        `("skip_verify", --skip-verify)`,
      { cause: err },
    );
  }
  if (
    /InvalidContentType|wrong version number|packet length too long|corrupt message|http request to an https/i
      .test(detail)
  ) {
    return new TainerdError(
      "FailedPrecondition",
      `${where}: TLS handshake failed (${detail}); the server may speak plain HTTP ` +
        `(use --plain-http or server = "http://…" in hosts.toml)`,
      { cause: err },
    );
  }
  if (/refused/i.test(detail)) {
    return new TainerdError("Unavailable", `${where}: connection refused`, { cause: err });
  }
  return new TainerdError("Unavailable", `${where}: ${detail}`, { cause: err });
}

function isRetryableError(err: TainerdError): boolean {
  return err.kind === "Unavailable" || err.kind === "DeadlineExceeded";
}

/**
 * Wraps a response body so that a read waiting longer than `idleMs` aborts the request, and
 * transport errors surface classified.
 */
function guardBody(
  response: Response,
  abort: AbortController,
  idleMs: number,
  method: string,
  url: URL,
  userSignal: AbortSignal | undefined,
): Response {
  if (!response.body) return response;
  const reader = response.body.getReader();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const finish = () => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      timer = setTimeout(() => {
        abort.abort(
          new TainerdError(
            "DeadlineExceeded",
            `Cannot ${method} ${url}: no data received for ${idleMs} ms`,
          ),
        );
      }, idleMs);
      try {
        const { done, value } = await reader.read();
        clearTimeout(timer);
        timer = undefined;
        if (done) {
          finish();
          controller.close();
        } else {
          controller.enqueue(value);
        }
      } catch (err) {
        finish();
        if (userSignal?.aborted) {
          controller.error(canceled(`Cannot ${method} ${url}: canceled`, { cause: err }));
          return;
        }
        const reason = abort.signal.aborted ? abort.signal.reason : err;
        controller.error(
          reason instanceof TainerdError ? reason : networkError(reason, method, url),
        );
      }
    },
    async cancel(reason) {
      finish();
      await reader.cancel(reason).catch(() => {});
    },
  }, { highWaterMark: 0 });
  return new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

async function attempt(
  options: SendOptions,
  url: URL,
  timeouts: Timeouts,
  authUsed: { value?: AuthorizationUsed },
): Promise<Response> {
  let method = options.method.toUpperCase();
  let body: RequestBody | null | undefined = options.body;
  let current = url;
  for (let hop = 0;; hop++) {
    const headers = new Headers(options.headers);
    if (options.authorizer && origin(current) === origin(url) && !headers.has("authorization")) {
      const used = await options.authorizer.authorize(
        current,
        options.scopes ?? [],
        options.client,
        options.signal,
      );
      authUsed.value = used;
      if (used) headers.set("authorization", used.header);
    }
    const abort = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal;
    const payload = typeof body === "function" ? await body() : body;
    if (payload instanceof Uint8Array && !headers.has("content-length")) {
      headers.set("content-length", String(payload.byteLength));
    }
    const timer = setTimeout(() => {
      abort.abort(
        new TainerdError(
          "DeadlineExceeded",
          `Cannot ${method} ${current}: no response within ${timeouts.headersMs} ms`,
        ),
      );
    }, timeouts.headersMs);
    let response: Response;
    try {
      response = await options.client.send({
        method,
        url: current,
        headers,
        body: payload,
        signal,
      });
    } catch (err) {
      if (options.signal?.aborted) {
        throw canceled(`Cannot ${method} ${current}: canceled`, { cause: err });
      }
      throw networkError(abort.signal.aborted ? abort.signal.reason : err, method, current);
    } finally {
      clearTimeout(timer);
    }
    options.logger?.debug("registry response", {
      method,
      url: current.href,
      status: response.status,
    });
    if (options.redirect !== "manual" && REDIRECT_STATUSES.has(response.status)) {
      const location = response.headers.get("location");
      await discard(response);
      if (!location) {
        throw new TainerdError(
          "Internal",
          `Cannot ${method} ${current}: redirect ${response.status} without a Location`,
        );
      }
      if (hop >= MAX_REDIRECTS) {
        throw new TainerdError(
          "Aborted",
          `Cannot ${method} ${url}: stopped after ${MAX_REDIRECTS} redirects`,
        );
      }
      const next = new URL(location, current);
      if (
        response.status === 303 ||
        ((response.status === 301 || response.status === 302) && method === "POST")
      ) {
        method = method === "HEAD" ? "HEAD" : "GET";
        body = null;
      }
      current = next;
      continue;
    }
    return guardBody(response, abort, timeouts.idleMs, method, current, options.signal);
  }
}

/**
 * Sends one registry request and returns the final response, whatever its status (callers turn
 * unsuccessful ones into errors with `responseError`). Around the exchange it:
 *
 * - adds `Authorization` from `authorizer` on the request's own origin, and after a 401 asks
 *   the authorizer whether a retry (new challenge, refreshed token) is worth it;
 * - follows redirects (up to 10), dropping credentials when the origin changes;
 * - retries 408/429/5xx (honouring `Retry-After`) and transport failures with exponential
 *   backoff, as long as the body can be produced again;
 * - limits the wait for the headers and, through the returned body, the wait for each chunk.
 *
 * @throws {TainerdError} Unavailable / FailedPrecondition / DeadlineExceeded for transport
 *   failures, Canceled when `signal` aborts.
 */
export async function send(options: SendOptions): Promise<Response> {
  const url = typeof options.url === "string" ? new URL(options.url) : options.url;
  const policy: RetryPolicy = { ...DEFAULT_RETRY, ...options.retry };
  const timeouts: Timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
  const retryStatuses = options.retryStatuses ?? RETRY_STATUSES;
  let retries = 0;
  let authRetries = 0;
  for (;;) {
    const authUsed: { value?: AuthorizationUsed } = {};
    let response: Response;
    try {
      response = await attempt(options, url, timeouts, authUsed);
    } catch (err) {
      const classified = err instanceof TainerdError ? err : networkError(err, options.method, url);
      if (
        classified.kind === "Canceled" || !isRetryableError(classified) ||
        retries + 1 >= policy.attempts
      ) {
        throw classified;
      }
      const delay = backoff(policy, retries++);
      options.logger?.debug("retrying after a transport error", {
        url: url.href,
        error: classified.message,
        delay_ms: delay,
      });
      await sleep(delay, options.signal);
      continue;
    }
    if (response.status === 401 && options.authorizer && authRetries < 2) {
      const retry = await options.authorizer.unauthorized(
        url,
        response,
        authUsed.value,
        options.scopes ?? [],
      );
      if (retry) {
        authRetries++;
        await discard(response);
        continue;
      }
      return response;
    }
    if (retryStatuses.has(response.status) && retries + 1 < policy.attempts) {
      const asked = parseRetryAfter(response.headers.get("retry-after"));
      const delay = asked !== undefined
        ? Math.min(asked, policy.maxRetryAfterMs)
        : backoff(policy, retries);
      retries++;
      await discard(response);
      options.logger?.debug("retrying after an unsuccessful status", {
        url: url.href,
        status: response.status,
        delay_ms: delay,
      });
      await sleep(delay, options.signal);
      continue;
    }
    return response;
  }
}

/** The error kind of a failure, or undefined when it is not a classified error. */
export function errorKind(err: unknown): ErrorKind | undefined {
  return err instanceof TainerdError ? err.kind : undefined;
}
