/**
 * Registry hosts: which endpoints serve a registry name, with which capabilities, TLS settings
 * and headers, read as containerd 1.6 reads them (`remotes/docker/config/hosts.go`):
 *
 * - a config directory per host, `<root>/<host>/hosts.toml` (for `host:port`, first
 *   `<root>/host_port_/`, then `<root>/host:port/`, then `<root>/_default/`);
 * - in `hosts.toml`, `[host."https://mirror"]` tables in file order (mirrors), then the
 *   top-level `server` (the upstream), each with `capabilities` (`pull`, `resolve`, `push`),
 *   `ca`, `client`, `skip_verify`, `header`, `override_path`;
 * - without `hosts.toml`, `*.crt` files in the directory are CAs and `*.cert`/`*.key` pairs are
 *   client certificates (docker's `certs.d` layout);
 * - defaults: `docker.io` is served by `https://registry-1.docker.io`; loopback hosts
 *   (`localhost`, `127.0.0.1`, `[::1]`) use plain HTTP unless the default scheme is `https`;
 *   everything else uses HTTPS unless `plainHttp` is set.
 *
 * @module
 */

import { basename, isAbsolute, join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { invalidArgument, TainerdError } from "../../plugins/errdefs.ts";
import type { Logger } from "../../log.ts";
import { Authorizer, type CredentialsProvider } from "./auth.ts";
import {
  createHttpClient,
  type HttpClient,
  type RetryPolicy,
  type Timeouts,
  type TlsOptions,
} from "./http.ts";

/** The default root of per-host configuration directories. */
export const DEFAULT_HOSTS_DIR = "/etc/tainerd/certs.d";

/** What a host may be used for. */
export type HostCapability = "pull" | "resolve" | "push";

const ALL_CAPABILITIES: readonly HostCapability[] = ["pull", "resolve", "push"];

/** One endpoint as configured (before TLS files are read). */
export interface HostConfig {
  /** `http` or `https`; "" for the default endpoint still to be filled in. */
  scheme: string;
  /** `host[:port]`; "" for the default endpoint still to be filled in. */
  host: string;
  /** The API root path, normally `/v2`. */
  path: string;
  capabilities: HostCapability[];
  /** CA certificate files (absolute paths). */
  caCerts: string[];
  /** Client certificate and key files; an empty key means the key is in the cert file. */
  clientPairs: [string, string][];
  /** Whether to skip certificate verification; undefined means the default. */
  skipVerify?: boolean;
  /** Extra request headers. */
  header: Record<string, string[]>;
}

function emptyHost(): HostConfig {
  return {
    scheme: "",
    host: "",
    path: "",
    capabilities: [...ALL_CAPABILITIES],
    caCerts: [],
    clientPairs: [],
    header: {},
  };
}

/**
 * The directory name containerd looks for first for `host:port`: `host_port_`. Other hosts
 * map to themselves.
 */
export function hostDirectory(host: string): string {
  const i = host.lastIndexOf(":");
  if (i > 0 && !host.endsWith("]")) return `${host.slice(0, i)}_${host.slice(i + 1)}_`;
  return host;
}

/** The candidate directories for `host` under `root`, in lookup order. */
export function hostPaths(root: string, host: string): string[] {
  const paths: string[] = [];
  const ch = hostDirectory(host);
  if (ch !== host) paths.push(join(root, ch));
  paths.push(join(root, host), join(root, "_default"));
  return paths;
}

/** Finds the configuration directory of `host` under `root`, or undefined. */
export function hostDirFromRoot(root: string): (host: string) => Promise<string | undefined> {
  return async (host: string) => {
    for (const path of hostPaths(root, host)) {
      try {
        const stat = await Deno.stat(path);
        if (stat.isDirectory) return path;
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) {
          throw new TainerdError("FailedPrecondition", `Cannot read ${path}: ${describe(err)}`, {
            cause: err,
          });
        }
      }
    }
    return undefined;
  };
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Whether `host` (`name[:port]`, `[v6]:port`) is a loopback host, as containerd's IsLocalhost. */
export function isLocalhost(host: string): boolean {
  let h = host;
  if (h.startsWith("[")) {
    const end = h.indexOf("]");
    h = end > 0 ? h.slice(1, end) : h;
  } else if (h.split(":").length === 2) {
    h = h.slice(0, h.indexOf(":"));
  }
  if (h === "localhost") return true;
  if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)) return true;
  return h === "::1" || /^(0{0,4}:){7}0{0,3}1$/.test(h) || h === "0:0:0:0:0:0:0:1";
}

function makeAbsolute(path: string, baseDir: string): string {
  return isAbsolute(path) ? path : join(baseDir, path);
}

function stringList(value: unknown, what: string, file: string): string[] {
  if (typeof value === "string") return [value];
  if (Array.isArray(value) && value.every((v) => typeof v === "string")) return value as string[];
  throw invalidArgument(`Invalid ${file}: "${what}" must be a string or a list of strings`);
}

function parseHostEntry(
  server: string,
  table: Record<string, unknown>,
  baseDir: string,
  file: string,
): HostConfig {
  const result = emptyHost();
  const overridePath = table.override_path;
  if (overridePath !== undefined && typeof overridePath !== "boolean") {
    throw invalidArgument(`Invalid ${file}: "override_path" must be a boolean`);
  }
  if (server !== "") {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(server) && !/^https?:\/\//i.test(server)) {
      throw invalidArgument(`Invalid ${file}: server ${JSON.stringify(server)} is not http(s)`);
    }
    const withScheme = server.startsWith("http") ? server : `https://${server}`;
    let url: URL;
    try {
      url = new URL(withScheme);
    } catch {
      throw invalidArgument(`Invalid ${file}: cannot parse server ${JSON.stringify(server)}`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw invalidArgument(`Invalid ${file}: server ${JSON.stringify(server)} is not http(s)`);
    }
    result.scheme = url.protocol.slice(0, -1);
    result.host = url.host;
    let path = url.pathname.replace(/\/+$/, "").replace(/\/{2,}/g, "/");
    if (path !== "") {
      if (!path.endsWith("/v2") && !overridePath) path += "/v2";
    } else if (!overridePath) {
      path = "/v2";
    }
    result.path = path;
  }
  if (table.skip_verify !== undefined) {
    if (typeof table.skip_verify !== "boolean") {
      throw invalidArgument(`Invalid ${file}: "skip_verify" must be a boolean`);
    }
    result.skipVerify = table.skip_verify;
  }
  if (table.capabilities !== undefined) {
    const caps = stringList(table.capabilities, "capabilities", file);
    if (caps.length > 0) {
      result.capabilities = [];
      for (const c of caps) {
        const lower = c.toLowerCase();
        if (!(ALL_CAPABILITIES as readonly string[]).includes(lower)) {
          throw invalidArgument(
            `Invalid ${file}: unknown capability ${
              JSON.stringify(c)
            } (expected pull, resolve or push)`,
          );
        }
        if (!result.capabilities.includes(lower as HostCapability)) {
          result.capabilities.push(lower as HostCapability);
        }
      }
    }
  }
  if (table.ca !== undefined) {
    result.caCerts = stringList(table.ca, "ca", file).map((p) => makeAbsolute(p, baseDir));
  }
  if (table.client !== undefined) {
    const client = table.client;
    const entries = typeof client === "string" ? [client] : client;
    if (!Array.isArray(entries)) {
      throw invalidArgument(`Invalid ${file}: "client" must be a path or a list of paths or pairs`);
    }
    for (const entry of entries) {
      if (typeof entry === "string") {
        result.clientPairs.push([makeAbsolute(entry, baseDir), ""]);
      } else if (
        Array.isArray(entry) && entry.length === 2 && entry.every((e) => typeof e === "string")
      ) {
        result.clientPairs.push([makeAbsolute(entry[0], baseDir), makeAbsolute(entry[1], baseDir)]);
      } else {
        throw invalidArgument(
          `Invalid ${file}: "client" entries must be a path or a [cert, key] pair`,
        );
      }
    }
  }
  if (table.header !== undefined) {
    if (typeof table.header !== "object" || table.header === null || Array.isArray(table.header)) {
      throw invalidArgument(`Invalid ${file}: "header" must be a table`);
    }
    for (const [key, value] of Object.entries(table.header as Record<string, unknown>)) {
      result.header[key] = stringList(value, `header.${key}`, file);
    }
  }
  return result;
}

/**
 * Parses a `hosts.toml`: the `[host."…"]` entries in file order, then the `server` entry
 * (whose host is "" when `server` is absent: the default endpoint, filled in later).
 * Relative certificate paths are resolved against `baseDir`.
 *
 * @throws {TainerdError} InvalidArgument naming the file and the bad key.
 */
export function parseHostsToml(text: string, baseDir: string, file = "hosts.toml"): HostConfig[] {
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    throw invalidArgument(`Invalid ${file}: ${describe(err)}`, { cause: err });
  }
  const hosts: HostConfig[] = [];
  const hostTables = doc.host;
  if (hostTables !== undefined) {
    if (typeof hostTables !== "object" || hostTables === null || Array.isArray(hostTables)) {
      throw invalidArgument(`Invalid ${file}: "host" must be a table of tables`);
    }
    // smol-toml keeps the keys in file order, which is the mirror order.
    for (const [server, table] of Object.entries(hostTables as Record<string, unknown>)) {
      if (typeof table !== "object" || table === null || Array.isArray(table)) {
        throw invalidArgument(`Invalid ${file}: host ${JSON.stringify(server)} must be a table`);
      }
      hosts.push(parseHostEntry(server, table as Record<string, unknown>, baseDir, file));
    }
  }
  const server = doc.server;
  if (server !== undefined && typeof server !== "string") {
    throw invalidArgument(`Invalid ${file}: "server" must be a string`);
  }
  hosts.push(parseHostEntry(server ?? "", doc, baseDir, file));
  return hosts;
}

/** Reads `*.crt` (CAs) and `*.cert` + `*.key` (client pairs) from a docker-style certs dir. */
async function loadCertFiles(dir: string): Promise<HostConfig[]> {
  const host = emptyHost();
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (!entry.isDirectory) names.push(entry.name);
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  names.sort();
  for (const name of names) {
    if (name.endsWith(".crt")) host.caCerts.push(join(dir, name));
    if (name.endsWith(".cert")) {
      const key = join(dir, `${name.slice(0, -5)}.key`);
      let keyPath = "";
      try {
        await Deno.stat(key);
        keyPath = key;
      } catch {
        // The key may be inside the cert file.
      }
      host.clientPairs.push([join(dir, name), keyPath]);
    }
  }
  return [host];
}

/**
 * Loads a host directory: its `hosts.toml`, or without one its certificate files.
 *
 * @throws {TainerdError} InvalidArgument when `hosts.toml` is malformed.
 */
export async function loadHostDir(dir: string): Promise<HostConfig[]> {
  const file = join(dir, "hosts.toml");
  let text = "";
  try {
    text = await Deno.readTextFile(file);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new TainerdError("FailedPrecondition", `Cannot read ${file}: ${describe(err)}`, {
        cause: err,
      });
    }
  }
  if (text.trim() === "") return await loadCertFiles(dir);
  return parseHostsToml(text, dir, file);
}

/** A usable endpoint: configuration plus its transport and authorizer. */
export interface RegistryHost {
  readonly scheme: "http" | "https";
  /** `host[:port]`. */
  readonly host: string;
  /** The API root path, `/v2` unless overridden. */
  readonly path: string;
  readonly capabilities: ReadonlySet<HostCapability>;
  /** Headers added to every request to this host. */
  readonly header: Headers;
  /** The transport, with this host's TLS settings. */
  readonly client: HttpClient;
  /** The authorizer shared by all hosts of a {@link RegistryHosts}. */
  readonly authorizer: Authorizer;
}

/** Whether `host` has every capability in `caps`. */
export function hasCapabilities(host: RegistryHost, ...caps: HostCapability[]): boolean {
  return caps.every((c) => host.capabilities.has(c));
}

/**
 * Whether `host` serves `refHost` as a mirror (so requests carry `?ns=<refHost>`), as
 * containerd's `isProxy`.
 */
export function isMirror(host: RegistryHost, refHost: string): boolean {
  if (refHost === host.host) return false;
  return !(refHost === "docker.io" && host.host === "registry-1.docker.io");
}

/** The base URL of a host's API: `https://host/v2`. */
export function hostBaseUrl(host: RegistryHost): string {
  return `${host.scheme}://${host.host}${host.path}`;
}

/** Options of {@link RegistryHosts}: containerd's `HostOptions` plus ctr's TLS flags. */
export interface HostOptions {
  /**
   * The root of per-host directories (`/etc/tainerd/certs.d`), or a function finding the
   * directory of a host. Without it only the defaults apply.
   */
  hostDir?: string | ((host: string) => Promise<string | undefined>);
  /** Credentials per host. */
  credentials?: CredentialsProvider;
  /** Use plain HTTP for hosts without configuration (ctr's `--plain-http`). */
  plainHttp?: boolean;
  /** Skip certificate verification unless a host says otherwise (ctr's `--skip-verify`). */
  skipVerify?: boolean;
  /** A CA file trusted instead of the system CAs (ctr's `--tlscacert`). */
  tlsCaCert?: string;
  /** A client certificate file (ctr's `--tlscert`); needs `tlsKey`. */
  tlsCert?: string;
  /** The key of `tlsCert` (ctr's `--tlskey`). */
  tlsKey?: string;
  /** Headers sent with every request, including token requests (`User-Agent`). */
  headers?: HeadersInit;
  retry?: Partial<RetryPolicy>;
  timeouts?: Partial<Timeouts>;
  /** Force a transport (tests); by default fetch, or node:https when skipping verification. */
  transport?: "fetch" | "node";
  logger?: Logger;
}

async function readFileText(path: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    throw invalidArgument(`Cannot read the ${what} ${path}: ${describe(err)}`, { cause: err });
  }
}

function checkPem(text: string, path: string, what: string, marker: RegExp): string {
  if (!marker.test(text)) {
    throw invalidArgument(`Cannot load the ${what} ${path}: no PEM ${what} in it`);
  }
  return text;
}

const CERT_PEM = /-----BEGIN CERTIFICATE-----/;
const KEY_PEM = /-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/;

/**
 * The hosts of every registry name, built from {@link HostOptions}. One instance per
 * resolver: it owns the transports (one per distinct TLS setting) and the authorizer (so
 * tokens are reused across resolves, fetches and pushes). Close it when done.
 */
export class RegistryHosts {
  readonly #options: HostOptions;
  readonly #hostDir?: (host: string) => Promise<string | undefined>;
  readonly #clients = new Map<string, HttpClient>();
  /** The authorizer shared by every host. */
  readonly authorizer: Authorizer;

  constructor(options: HostOptions = {}) {
    this.#options = options;
    if (typeof options.hostDir === "string") this.#hostDir = hostDirFromRoot(options.hostDir);
    else if (options.hostDir) this.#hostDir = options.hostDir;
    if ((options.tlsCert === undefined) !== (options.tlsKey === undefined)) {
      throw invalidArgument("Invalid TLS options: a client certificate and key go together");
    }
    this.authorizer = new Authorizer({
      credentials: options.credentials,
      headers: options.headers,
      retry: options.retry,
      timeouts: options.timeouts,
      logger: options.logger,
    });
  }

  /** The options this instance was built with. */
  get options(): Readonly<HostOptions> {
    return this.#options;
  }

  /** The configured endpoints for a registry name (`docker.io`, `host:5000`), in order. */
  async configs(host: string): Promise<HostConfig[]> {
    let configs: HostConfig[] = [];
    if (this.#hostDir) {
      const dir = await this.#hostDir(host);
      if (dir) {
        this.#options.logger?.debug("loading host directory", { dir, host: basename(dir) });
        configs = await loadHostDir(dir);
      }
    }
    if (configs.length === 0) configs = [emptyHost()];
    const last = configs[configs.length - 1];
    if (last.host === "") {
      const defaultScheme = this.#options.plainHttp ? "http" : "";
      if (host === "docker.io") {
        last.scheme = "https";
        last.host = "registry-1.docker.io";
      } else if (isLocalhost(host)) {
        last.host = host;
        if (defaultScheme === "" || defaultScheme === "http") {
          last.scheme = "http";
          last.skipVerify ??= true;
        } else {
          last.scheme = defaultScheme;
        }
      } else {
        last.host = host;
        last.scheme = defaultScheme || "https";
      }
      last.path = "/v2";
      last.capabilities = [...ALL_CAPABILITIES];
    }
    return configs;
  }

  /** The usable endpoints for a registry name, mirrors first, upstream last. */
  async lookup(host: string): Promise<RegistryHost[]> {
    const configs = await this.configs(host);
    const out: RegistryHost[] = [];
    for (const config of configs) {
      const header = new Headers(this.#options.headers);
      for (const [key, values] of Object.entries(config.header)) {
        header.delete(key);
        for (const v of values) header.append(key, v);
      }
      out.push({
        scheme: config.scheme === "http" ? "http" : "https",
        host: config.host,
        path: config.path,
        capabilities: new Set(config.capabilities),
        header,
        client: await this.#client(config),
        authorizer: this.authorizer,
      });
    }
    return out;
  }

  async #client(config: HostConfig): Promise<HttpClient> {
    const tls: TlsOptions = { caCerts: [], clientCerts: [], systemCAs: true };
    if (this.#options.tlsCaCert) {
      tls.systemCAs = false;
      tls.caCerts!.push(
        checkPem(
          await readFileText(this.#options.tlsCaCert, "CA certificate"),
          this.#options.tlsCaCert,
          "CA certificate",
          CERT_PEM,
        ),
      );
    }
    if (this.#options.tlsCert && this.#options.tlsKey) {
      tls.clientCerts!.push({
        cert: await readFileText(this.#options.tlsCert, "client certificate"),
        key: await readFileText(this.#options.tlsKey, "client key"),
      });
    }
    for (const path of config.caCerts) {
      tls.caCerts!.push(
        checkPem(await readFileText(path, "CA certificate"), path, "CA certificate", CERT_PEM),
      );
    }
    for (const [certPath, keyPath] of config.clientPairs) {
      const cert = await readFileText(certPath, "client certificate");
      const key = keyPath ? await readFileText(keyPath, "client key") : cert;
      checkPem(cert, certPath, "certificate", CERT_PEM);
      checkPem(key, keyPath || certPath, "private key", KEY_PEM);
      tls.clientCerts!.push({ cert, key });
    }
    tls.skipVerify = config.skipVerify ?? this.#options.skipVerify ?? false;
    // Plain-HTTP hosts never verify anything; do not let their skip flag pick another transport.
    if (config.scheme === "http") tls.skipVerify = this.#options.skipVerify ?? false;
    // Only the node transport can skip verification; a forced transport applies otherwise.
    const transport = tls.skipVerify ? "node" : (this.#options.transport ?? "fetch");
    const key = JSON.stringify([transport, tls]);
    let client = this.#clients.get(key);
    if (!client) {
      client = createHttpClient({ ...tls, transport });
      this.#clients.set(key, client);
    }
    return client;
  }

  /** Closes every transport. */
  close(): void {
    for (const client of this.#clients.values()) client.close();
    this.#clients.clear();
  }
}
