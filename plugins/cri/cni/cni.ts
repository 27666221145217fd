/**
 * The CNI layer of the CRI plugin: containerd's `go-cni` over `libcni`, in TypeScript.
 *
 * - Network configuration is loaded from a directory as libcni's `ConfFiles` and go-cni's
 *   `loadFromConfDir` do: `*.conflist`, `*.conf` and `*.json`, sorted by file name; a single
 *   plugin (`.conf`/`.json`) is wrapped into a list of one; at most `maxConfNum` networks are
 *   taken (default 1), the first being the default network on `eth0`, the next on `eth1`…
 *   The loopback network (`cni-loopback`, plugin `loopback`, interface `lo`) is added in front,
 *   as go-cni's `WithLoNetwork`. The directory is re-read whenever its listing or a file's
 *   mtime/size changes.
 * - {@linkcode Cni.setup} runs ADD for every network in order (loopback first), each network's
 *   plugins chained through `prevResult` exactly as the CNI spec and libcni's `AddNetworkList`
 *   do: environment `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
 *   `CNI_PATH`; stdin the plugin's configuration with `name` and `cniVersion` injected, and a
 *   `runtimeConfig` holding the runtime's capability arguments (`portMappings`, `bandwidth`,
 *   `dns`, …) that the plugin declares in its `capabilities`. The final result of each network is
 *   cached as libcni does (`<cacheDir>/results/<network>-<id>-<ifname>`, format `cniCacheV1`)
 *   and then merged like go-cni's `createResult`.
 * - {@linkcode Cni.teardown} runs DEL for the networks in reverse order and their plugins in
 *   reverse order, with the cached result as `prevResult` (CNI ≥ 0.4.0), and deletes the cache.
 *   A netns path that no longer names a namespace is passed as `CNI_NETNS=""`, as containerd
 *   does for a closed namespace, so that plugins still release their IPAM leases.
 * - Plugins are found in `binDirs` and run with `Deno.Command` (never through a shell), with a
 *   timeout. A plugin's error (`{"code","msg","details"}` on stdout) becomes a
 *   {@linkcode TainerdError} carrying its message.
 *
 * @module
 */

import {
  failedPrecondition,
  internal,
  invalidArgument,
  notFound,
  TainerdError,
} from "../../errdefs.ts";
import type { ErrorKind } from "../../errdefs.ts";
import { isNetns } from "./netns.ts";

/** go-cni's `DefaultNetDir`. */
export const DEFAULT_CONF_DIR = "/etc/cni/net.d";
/** go-cni's `DefaultCNIDir`. */
export const DEFAULT_BIN_DIR = "/opt/cni/bin";
/** libcni's `CacheDir`: results are kept under `<cacheDir>/results/`. */
export const DEFAULT_CACHE_DIR = "/var/lib/cni";
/** The default timeout of one plugin invocation, in milliseconds. */
export const DEFAULT_PLUGIN_TIMEOUT_MS = 120_000;
/** The name of the implicit loopback network (go-cni's `WithLoNetwork`). */
export const LOOPBACK_NETWORK_NAME = "cni-loopback";

/** Options of {@linkcode Cni}. */
export interface CniOptions {
  /** Directories searched, in order, for plugin binaries (`CNI_PATH`). */
  binDirs: string[];
  /** The directory holding `*.conflist`, `*.conf` and `*.json` network configurations. */
  confDir: string;
  /** How many configuration files to load (go-cni's `pluginMaxConfNum`); default 1. */
  maxConfNum?: number;
  /**
   * The interface name of the default network; default `"eth0"`. Further networks get the
   * same stem with their index (`eth1`, `eth2`, …).
   */
  ifName?: string;
  /** libcni's cache directory; results go to `<cacheDir>/results/`. Default `/var/lib/cni`. */
  cacheDir?: string;
  /** Timeout of one plugin invocation in milliseconds; default 120 000. */
  pluginTimeoutMs?: number;
  /** Whether to add the loopback network in front (go-cni's `WithLoNetwork`); default true. */
  loopback?: boolean;
}

/** A port to publish on the host: the `portMappings` capability argument. */
export interface PortMapping {
  /** The port on the host. */
  hostPort: number;
  /** The port inside the pod. */
  containerPort: number;
  /** The protocol, lower case. */
  protocol: "tcp" | "udp" | "sctp";
  /** The host address to bind; all addresses when absent or empty. */
  hostIP?: string;
}

/** Traffic shaping: the `bandwidth` capability argument (bits per second, bits). */
export interface BandwidthConfig {
  /** Ingress rate in bit/s. */
  ingressRate?: number;
  /** Ingress burst in bits. */
  ingressBurst?: number;
  /** Egress rate in bit/s. */
  egressRate?: number;
  /** Egress burst in bits. */
  egressBurst?: number;
}

/** The pod's DNS settings: the `dns` capability argument. */
export interface DnsConfig {
  /** Name server addresses. */
  servers?: string[];
  /** Search domains. */
  searches?: string[];
  /** resolv.conf options. */
  options?: string[];
}

/** Per-pod arguments of {@linkcode Cni.setup}, {@linkcode Cni.teardown} and {@linkcode Cni.check}. */
export interface NamespaceOptions {
  /**
   * `CNI_ARGS`, in order: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`,
   * `K8S_POD_UID`, `IgnoreUnknown` (`"1"`) as containerd's CRI plugin passes them.
   */
  args?: Record<string, string>;
  /** The `portMappings` capability argument. */
  portMappings?: PortMapping[];
  /** The `bandwidth` capability argument. */
  bandwidth?: BandwidthConfig;
  /** The `dns` capability argument. */
  dns?: DnsConfig;
  /** Further capability arguments by capability name (`cgroupPath`, `ipRanges`, …). */
  capabilityArgs?: Record<string, unknown>;
}

/** One loaded network: a configuration list and the interface it is attached as. */
export interface Network {
  /** The network name (`name` of the list). */
  name: string;
  /** The list's `cniVersion`. */
  cniVersion: string;
  /** The plugin configurations, in order. */
  plugins: Record<string, unknown>[];
  /** The list's `disableCheck`. */
  disableCheck: boolean;
  /** The interface name (`CNI_IFNAME`): `lo`, `eth0`, … */
  ifName: string;
  /** The file it came from; empty for the implicit loopback network. */
  source: string;
  /** The configuration list as JSON (what libcni caches as `config`). */
  bytes: string;
}

/** An IP address assigned to the pod. */
export interface IPConfig {
  /** The address with its prefix length, e.g. `"10.88.0.5/16"`. */
  address: string;
  /** The address alone, e.g. `"10.88.0.5"`. */
  ip: string;
  /** 4 or 6. */
  version: 4 | 6;
  /** The gateway, if the plugin reported one. */
  gateway?: string;
  /** The name of the interface it is on, if known. */
  interface?: string;
}

/** An interface a plugin reported. */
export interface InterfaceConfig {
  /** The interface name. */
  name: string;
  /** Its MAC address. */
  mac?: string;
  /** The netns path for interfaces inside the pod; absent for host-side interfaces. */
  sandbox?: string;
  /** Its MTU, if reported. */
  mtu?: number;
  /** The addresses on it. */
  ipConfigs: IPConfig[];
}

/** A route a plugin reported. */
export interface Route {
  /** The destination, e.g. `"0.0.0.0/0"`. */
  dst: string;
  /** The next hop. */
  gw?: string;
}

/** DNS settings a plugin reported. */
export interface DnsResult {
  /** Name servers. */
  nameservers?: string[];
  /** Local domain. */
  domain?: string;
  /** Search domains. */
  search?: string[];
  /** Options. */
  options?: string[];
}

/** The merged result of {@linkcode Cni.setup} (go-cni's `Result`). */
export interface CniResult {
  /** Interfaces by name (pod-side and host-side), with their addresses. */
  interfaces: Record<string, InterfaceConfig>;
  /** Every address, in the order the networks reported them. */
  ips: IPConfig[];
  /** Every route. */
  routes: Route[];
  /** DNS settings, one entry per network that reported some. */
  dns: DnsResult[];
  /** The raw final result of each network, in setup order. */
  raw: { network: string; ifName: string; result: Record<string, unknown> }[];
}

/** The configuration the instance runs with (go-cni's `GetConfig`), for CRI status. */
export interface CniConfigInfo {
  /** Plugin directories. */
  binDirs: string[];
  /** Configuration directory. */
  confDir: string;
  /** Loaded networks, loopback first. */
  networks: Network[];
}

const EXTENSIONS = [".conf", ".conflist", ".json"];
const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$/;
const LOOPBACK_CONF = {
  cniVersion: "0.3.1",
  name: LOOPBACK_NETWORK_NAME,
  plugins: [{ type: "loopback" }],
};

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Compares two CNI versions ("0.4.0" ≥ "0.3.1"); an empty version is 0.1.0. */
function versionAtLeast(v: string, min: string): boolean {
  const parse = (s: string) => (s || "0.1.0").split(".").map((p) => Number.parseInt(p, 10) || 0);
  const a = parse(v);
  const b = parse(min);
  for (let i = 0; i < 3; i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  }
  return true;
}

/**
 * Parses a configuration list (`.conflist`) as libcni's `ConfListFromBytes`.
 *
 * @throws {TainerdError} InvalidArgument when it is malformed
 */
export function parseConfList(text: string, source = ""): Omit<Network, "ifName"> {
  const where = source ? ` in ${source}` : "";
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw invalidArgument(`Cannot parse CNI configuration list${where}: ${errorMessage(err)}`);
  }
  if (!isObject(raw)) {
    throw invalidArgument(`Cannot parse CNI configuration list${where}: not a JSON object`);
  }
  const name = raw.name;
  if (typeof name !== "string" || name === "") {
    throw invalidArgument(`Invalid CNI configuration list${where}: no name`);
  }
  if (!NAME_RE.test(name)) {
    throw invalidArgument(`Invalid CNI configuration list${where}: invalid network name "${name}"`);
  }
  const cniVersion = typeof raw.cniVersion === "string" ? raw.cniVersion : "";
  const plugins = raw.plugins;
  if (!Array.isArray(plugins)) {
    throw invalidArgument(`Invalid CNI configuration list${where}: no 'plugins' key`);
  }
  if (plugins.length === 0) {
    throw invalidArgument(`Invalid CNI configuration list${where}: no plugins in list`);
  }
  plugins.forEach((p, i) => {
    if (!isObject(p)) {
      throw invalidArgument(`Invalid CNI configuration list${where}: plugin ${i} is not an object`);
    }
    checkPluginType(p, `plugin ${i}${where}`);
  });
  return {
    name,
    cniVersion,
    plugins: plugins as Json[],
    disableCheck: raw.disableCheck === true || raw.disableCheck === "true",
    source,
    bytes: text,
  };
}

/**
 * Parses a single-plugin configuration (`.conf`, `.json`) and wraps it into a list of one, as
 * libcni's `ConfFromBytes` + `ConfListFromConf`.
 *
 * @throws {TainerdError} InvalidArgument when it is malformed or has no `type`
 */
export function parseConf(text: string, source = ""): Omit<Network, "ifName"> {
  const where = source ? ` in ${source}` : "";
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw invalidArgument(`Cannot parse CNI configuration${where}: ${errorMessage(err)}`);
  }
  if (!isObject(raw)) {
    throw invalidArgument(`Cannot parse CNI configuration${where}: not a JSON object`);
  }
  if (typeof raw.type !== "string" || raw.type === "") {
    // Also catches a configuration list saved as .conf/.json, as go-cni does.
    throw invalidArgument(`Invalid CNI configuration${where}: network type not found`);
  }
  const list = {
    name: raw.name,
    cniVersion: typeof raw.cniVersion === "string" ? raw.cniVersion : "",
    plugins: [raw],
  };
  return { ...parseConfList(JSON.stringify(list), source), bytes: JSON.stringify(list) };
}

function checkPluginType(p: Json, what: string): void {
  const type = p.type;
  if (typeof type !== "string" || type === "") {
    throw invalidArgument(`Invalid CNI configuration: ${what} has no 'type'`);
  }
  if (type.includes("/") || type === "." || type === "..") {
    throw invalidArgument(`Invalid CNI configuration: ${what} has an invalid type "${type}"`);
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** libcni's `ValidateContainerID`. */
function validateContainerId(id: string): void {
  if (id === "") throw invalidArgument("Invalid CNI container ID: empty");
  if (!NAME_RE.test(id)) throw invalidArgument(`Invalid CNI container ID "${id}"`);
}

/** libcni's `ValidateInterfaceName`. */
function validateIfName(name: string): void {
  if (name === "" || name.length > 15 || name === "." || name === ".." || /[/:\s]/.test(name)) {
    throw invalidArgument(`Invalid CNI interface name "${name}"`);
  }
}

/** The runtime arguments of one invocation (libcni's `RuntimeConf`). */
interface RuntimeConf {
  containerId: string;
  netns: string;
  ifName: string;
  args: [string, string][];
  capabilityArgs: Record<string, unknown>;
}

/** libcni's `cachedInfo` (`kind: cniCacheV1`). */
interface CachedInfo {
  kind: string;
  containerId: string;
  config: string; // base64, as Go marshals []byte
  ifName: string;
  networkName: string;
  netns?: string;
  cniArgs?: [string, string][];
  capabilityArgs?: Record<string, unknown>;
  result?: Json;
}

/** The plugin error object of the CNI spec. */
interface PluginErrorBody {
  code?: number;
  msg?: string;
  details?: string;
}

/** The CNI error codes (spec "Error" section) mapped to error kinds. */
function kindOfCode(code: number | undefined): ErrorKind {
  switch (code) {
    case 3: // unknown container
      return "NotFound";
    case 4: // invalid environment variables
    case 6: // failed to decode content
    case 7: // invalid network config
      return "InvalidArgument";
    case 1: // incompatible CNI version
    case 2: // unsupported field in network configuration
      return "FailedPrecondition";
    case 11: // try again later
    case 50: // plugin not available
    case 51: // limited connectivity
      return "Unavailable";
    default:
      return "Internal";
  }
}

/**
 * containerd's go-cni: loads network configuration, and attaches a pod's network namespace to
 * the networks (ADD), detaches it (DEL) and checks it (CHECK) by running CNI plugins.
 */
export class Cni {
  readonly #binDirs: string[];
  readonly #confDir: string;
  readonly #maxConfNum: number;
  readonly #ifName: string;
  readonly #cacheDir: string;
  readonly #timeoutMs: number;
  readonly #loopback: boolean;
  #networks: Network[] = [];
  #loadError: TainerdError | null = null;
  #signature: string | null = null;

  constructor(options: CniOptions) {
    if (options.binDirs.length === 0) throw invalidArgument("CNI needs at least one binDir");
    this.#binDirs = [...options.binDirs];
    this.#confDir = options.confDir;
    this.#maxConfNum = Math.max(1, options.maxConfNum ?? 1);
    this.#ifName = options.ifName ?? "eth0";
    validateIfName(this.#ifName);
    this.#cacheDir = options.cacheDir ?? DEFAULT_CACHE_DIR;
    this.#timeoutMs = options.pluginTimeoutMs ?? DEFAULT_PLUGIN_TIMEOUT_MS;
    this.#loopback = options.loopback ?? true;
  }

  /** The interface name of the `i`-th configured network (`eth0`, `eth1`, …). */
  #ifNameOf(i: number): string {
    if (i === 0) return this.#ifName;
    return `${this.#ifName.replace(/\d+$/, "")}${i}`;
  }

  /** A cheap fingerprint of the configuration directory: names, sizes and mtimes. */
  async #fingerprint(): Promise<string> {
    const parts: string[] = [];
    try {
      for await (const e of Deno.readDir(this.#confDir)) {
        if (!EXTENSIONS.some((x) => e.name.endsWith(x))) continue;
        try {
          const st = await Deno.stat(`${this.#confDir}/${e.name}`);
          parts.push(`${e.name}:${st.size}:${st.mtime?.getTime() ?? 0}:${st.ino ?? 0}`);
        } catch {
          parts.push(`${e.name}:gone`);
        }
      }
    } catch (err) {
      return `error:${errorMessage(err)}`;
    }
    return parts.sort().join("\n");
  }

  /**
   * (Re)loads the configuration when the directory changed since the last load. Called by every
   * operation; call it directly to force a check.
   */
  async load(): Promise<void> {
    const signature = await this.#fingerprint();
    if (signature === this.#signature) return;
    this.#signature = signature;
    try {
      this.#networks = await this.#loadFromDir();
      this.#loadError = null;
    } catch (err) {
      this.#networks = this.#loopbackNetworks();
      this.#loadError = err instanceof TainerdError
        ? failedPrecondition(`cni plugin not initialized: ${err.message}`, { cause: err })
        : failedPrecondition(`cni plugin not initialized: ${errorMessage(err)}`, { cause: err });
    }
  }

  #loopbackNetworks(): Network[] {
    if (!this.#loopback) return [];
    const text = JSON.stringify(LOOPBACK_CONF);
    return [{ ...parseConfList(text), ifName: "lo" }];
  }

  async #loadFromDir(): Promise<Network[]> {
    let names: string[];
    try {
      names = [];
      for await (const e of Deno.readDir(this.#confDir)) {
        if (e.isDirectory) continue;
        if (EXTENSIONS.some((x) => e.name.endsWith(x))) names.push(e.name);
      }
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        throw failedPrecondition(`no network config found in ${this.#confDir}`);
      }
      throw internal(`Cannot read CNI config dir ${this.#confDir}: ${errorMessage(err)}`);
    }
    names.sort();
    const networks = this.#loopbackNetworks();
    let i = 0;
    for (const name of names) {
      const file = `${this.#confDir}/${name}`;
      const text = await Deno.readTextFile(file);
      const parsed = name.endsWith(".conflist") ? parseConfList(text, file) : parseConf(text, file);
      networks.push({ ...parsed, ifName: this.#ifNameOf(i) });
      i++;
      if (i === this.#maxConfNum) break;
    }
    if (i === 0) throw failedPrecondition(`no network config found in ${this.#confDir}`);
    return networks;
  }

  /**
   * Whether the CNI configuration is usable, as go-cni's `Status()`: resolves when a network
   * configuration is loaded, for CRI's `NetworkReady` condition.
   *
   * @throws {TainerdError} FailedPrecondition `cni plugin not initialized: …` otherwise
   */
  async status(): Promise<void> {
    await this.load();
    if (this.#loadError) throw this.#loadError;
  }

  /** The loaded configuration (go-cni's `GetConfig`), after a reload check. */
  async config(): Promise<CniConfigInfo> {
    await this.load();
    return {
      binDirs: [...this.#binDirs],
      confDir: this.#confDir,
      networks: this.#loadError ? [] : this.#networks.map((n) => ({ ...n })),
    };
  }

  /**
   * Attaches the network namespace at `netnsPath` of sandbox `id` to every network (ADD):
   * loopback first, then the default network's plugin chain.
   *
   * @throws {TainerdError} FailedPrecondition when no configuration is loaded or a plugin binary
   *   is missing; the plugin's own message (classified by its CNI error code) when one fails
   */
  async setup(id: string, netnsPath: string, opts: NamespaceOptions = {}): Promise<CniResult> {
    validateContainerId(id);
    await this.status();
    const results: CniResult["raw"] = [];
    for (const net of this.#networks) {
      const rt = this.#runtimeConf(id, netnsPath, net.ifName, opts);
      const result = await this.#addNetworkList(net, rt);
      results.push({ network: net.name, ifName: net.ifName, result });
    }
    return mergeResults(results);
  }

  /**
   * Detaches sandbox `id` from every network (DEL), in reverse order. A `netnsPath` that no longer
   * names a network namespace (or is empty) is passed as `CNI_NETNS=""`, so that plugins still
   * release what they hold. Deleting twice, or after the namespace is gone, succeeds.
   *
   * @throws {TainerdError} FailedPrecondition when no configuration is loaded; a plugin's error
   */
  async teardown(id: string, netnsPath: string, opts: NamespaceOptions = {}): Promise<void> {
    validateContainerId(id);
    await this.status();
    const netns = isNetns(netnsPath) ? netnsPath : "";
    for (const net of [...this.#networks].reverse()) {
      const cached = await this.#readCache(net.name, id, net.ifName);
      const rt = this.#runtimeConf(id, netns, net.ifName, opts, cached);
      try {
        await this.#delNetworkList(net, rt, cached);
      } catch (err) {
        // go-cni's Remove: a plugin that finds nothing to delete (or no netns) is not a failure.
        const msg = errorMessage(err);
        if ((netns === "" && msg.includes("no such file or directory")) || /not found/.test(msg)) {
          await this.#deleteCache(net.name, id, net.ifName);
          continue;
        }
        throw err;
      }
    }
  }

  /**
   * Checks that sandbox `id` is still attached as set up (CHECK), for networks of CNI ≥ 0.4.0
   * that do not set `disableCheck`.
   *
   * @throws {TainerdError} NotFound when there is no cached result for a network; a plugin's error
   */
  async check(id: string, netnsPath: string, opts: NamespaceOptions = {}): Promise<void> {
    validateContainerId(id);
    await this.status();
    for (const net of this.#networks) {
      if (net.disableCheck || !versionAtLeast(net.cniVersion, "0.4.0")) continue;
      const cached = await this.#readCache(net.name, id, net.ifName);
      if (!cached?.result) {
        throw notFound(`Cannot check network "${net.name}" of "${id}": no cached result`);
      }
      const rt = this.#runtimeConf(id, netnsPath, net.ifName, opts);
      for (const plugin of net.plugins) {
        await this.#invoke("CHECK", net, plugin, rt, cached.result);
      }
    }
  }

  #runtimeConf(
    id: string,
    netns: string,
    ifName: string,
    opts: NamespaceOptions,
    cached?: CachedInfo | null,
  ): RuntimeConf {
    const capabilityArgs: Record<string, unknown> = { ...opts.capabilityArgs };
    if (opts.portMappings !== undefined) capabilityArgs.portMappings = opts.portMappings;
    if (opts.bandwidth !== undefined) capabilityArgs.bandwidth = opts.bandwidth;
    if (opts.dns !== undefined) capabilityArgs.dns = opts.dns;
    let args: [string, string][] = Object.entries(opts.args ?? {});
    // On DEL without arguments (e.g. after a restart), reuse those of the ADD.
    if (cached && opts.args === undefined && cached.cniArgs) args = cached.cniArgs;
    const caps = Object.keys(capabilityArgs).length === 0 && cached?.capabilityArgs
      ? { ...cached.capabilityArgs }
      : capabilityArgs;
    return { containerId: id, netns, ifName, args, capabilityArgs: caps };
  }

  async #addNetworkList(net: Network, rt: RuntimeConf): Promise<Json> {
    let prev: Json | undefined;
    for (const plugin of net.plugins) {
      prev = await this.#invoke("ADD", net, plugin, rt, prev);
    }
    const result = prev ?? {};
    await this.#writeCache(net, rt, result);
    return result;
  }

  async #delNetworkList(net: Network, rt: RuntimeConf, cached: CachedInfo | null): Promise<void> {
    const prev = versionAtLeast(net.cniVersion, "0.4.0") ? cached?.result : undefined;
    for (const plugin of [...net.plugins].reverse()) {
      await this.#invoke("DEL", net, plugin, rt, prev);
    }
    await this.#deleteCache(net.name, rt.containerId, rt.ifName);
  }

  /** libcni's `buildOneConfig`: name, cniVersion, prevResult and runtimeConfig injected. */
  #buildConfig(net: Network, plugin: Json, rt: RuntimeConf, prev: Json | undefined): Json {
    const conf: Json = { ...plugin, name: net.name, cniVersion: net.cniVersion };
    if (prev !== undefined) conf.prevResult = prev;
    const runtimeConfig: Json = {};
    if (isObject(plugin.capabilities)) {
      for (const [cap, supported] of Object.entries(plugin.capabilities)) {
        if (supported === true && cap in rt.capabilityArgs) {
          runtimeConfig[cap] = rt.capabilityArgs[cap];
        }
      }
    }
    if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
    return conf;
  }

  /** libcni's `FindInPath`. */
  async #findPlugin(type: string): Promise<string> {
    for (const dir of this.#binDirs) {
      const path = `${dir.replace(/\/+$/, "")}/${type}`;
      try {
        const st = await Deno.stat(path);
        if (st.isFile && ((st.mode ?? 0o111) & 0o111) !== 0) return path;
      } catch {
        // not in this directory
      }
    }
    throw failedPrecondition(
      `failed to find plugin "${type}" in path [${this.#binDirs.join(" ")}]`,
    );
  }

  /**
   * Runs one plugin for `command` and returns its parsed result (ADD), or an empty object.
   *
   * @throws {TainerdError} with the plugin's message when it fails or does not answer in time
   */
  async #invoke(
    command: "ADD" | "DEL" | "CHECK",
    net: Network,
    plugin: Json,
    rt: RuntimeConf,
    prev: Json | undefined,
  ): Promise<Json> {
    const type = plugin.type as string;
    const what = `plugin type="${type}" name="${net.name}" failed (${command.toLowerCase()})`;
    const path = await this.#findPlugin(type);
    const stdin = new TextEncoder().encode(
      JSON.stringify(this.#buildConfig(net, plugin, rt, prev)),
    );
    const child = new Deno.Command(path, {
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: rt.containerId,
        CNI_NETNS: rt.netns,
        CNI_IFNAME: rt.ifName,
        CNI_ARGS: rt.args.map(([k, v]) => `${k}=${v}`).join(";"),
        CNI_PATH: this.#binDirs.join(":"),
      },
    }).spawn();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
    }, this.#timeoutMs);
    let output: Deno.CommandOutput;
    try {
      const writer = child.stdin.getWriter();
      await writer.write(stdin).catch(() => {}); // a plugin may exit without reading
      await writer.close().catch(() => {});
      output = await child.output();
    } finally {
      clearTimeout(timer);
    }
    if (timedOut) {
      throw new TainerdError(
        "DeadlineExceeded",
        `${what}: no answer within ${this.#timeoutMs} ms`,
      );
    }
    const stdout = new TextDecoder().decode(output.stdout).trim();
    const stderr = new TextDecoder().decode(output.stderr).trim();
    if (!output.success) {
      let body: PluginErrorBody | null = null;
      try {
        const parsed = JSON.parse(stdout);
        if (isObject(parsed)) body = parsed as PluginErrorBody;
      } catch {
        // not JSON
      }
      if (body && typeof body.msg === "string") {
        const msg = body.details ? `${body.msg}; ${body.details}` : body.msg;
        throw new TainerdError(kindOfCode(body.code), `${what}: ${msg}`);
      }
      const detail = stderr || stdout;
      throw internal(
        detail
          ? `${what}: netplugin failed: ${JSON.stringify(detail)}`
          : `${what}: netplugin failed with no error message: exit code ${output.code}`,
      );
    }
    if (command !== "ADD") return {};
    let result: unknown;
    try {
      result = JSON.parse(stdout);
    } catch (err) {
      throw internal(`${what}: cannot parse its result: ${errorMessage(err)}`);
    }
    if (!isObject(result)) throw internal(`${what}: its result is not a JSON object`);
    return result;
  }

  #cachePath(network: string, id: string, ifName: string): string {
    return `${this.#cacheDir}/results/${network}-${id}-${ifName}`;
  }

  async #writeCache(net: Network, rt: RuntimeConf, result: Json): Promise<void> {
    const info: CachedInfo = {
      kind: "cniCacheV1",
      containerId: rt.containerId,
      config: btoa(String.fromCharCode(...new TextEncoder().encode(net.bytes))),
      ifName: rt.ifName,
      networkName: net.name,
      netns: rt.netns || undefined,
      cniArgs: rt.args.length > 0 ? rt.args : undefined,
      capabilityArgs: Object.keys(rt.capabilityArgs).length > 0 ? rt.capabilityArgs : undefined,
      result,
    };
    const dir = `${this.#cacheDir}/results`;
    const path = this.#cachePath(net.name, rt.containerId, rt.ifName);
    const tmp = `${path}.tmp-${crypto.randomUUID()}`;
    try {
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      await Deno.writeTextFile(tmp, JSON.stringify(info), { mode: 0o600 });
      await Deno.rename(tmp, path);
    } catch (err) {
      await Deno.remove(tmp).catch(() => {});
      throw internal(`Cannot cache CNI result at ${path}: ${errorMessage(err)}`, { cause: err });
    }
  }

  async #readCache(network: string, id: string, ifName: string): Promise<CachedInfo | null> {
    const path = this.#cachePath(network, id, ifName);
    try {
      const info = JSON.parse(await Deno.readTextFile(path));
      if (!isObject(info) || info.kind !== "cniCacheV1") return null;
      if (info.result !== undefined && !isObject(info.result)) return null;
      return info as unknown as CachedInfo;
    } catch {
      return null; // missing or corrupt: DEL goes on without prevResult, as libcni
    }
  }

  async #deleteCache(network: string, id: string, ifName: string): Promise<void> {
    await Deno.remove(this.#cachePath(network, id, ifName)).catch(() => {});
  }
}

function ipVersion(ip: string): 4 | 6 {
  return ip.includes(":") ? 6 : 4;
}

/** Converts a result of any CNI version to the 1.0.0 shape (interfaces, ips, routes, dns). */
function toCurrent(
  r: Json,
  ifName: string,
): { interfaces: Json[]; ips: Json[]; routes: Json[]; dns?: Json } {
  const version = typeof r.cniVersion === "string" ? r.cniVersion : "";
  if (versionAtLeast(version, "0.3.0")) {
    return {
      interfaces: Array.isArray(r.interfaces) ? r.interfaces.filter(isObject) : [],
      ips: Array.isArray(r.ips) ? r.ips.filter(isObject) : [],
      routes: Array.isArray(r.routes) ? r.routes.filter(isObject) : [],
      dns: isObject(r.dns) ? r.dns : undefined,
    };
  }
  // 0.1.0 / 0.2.0: ip4/ip6 with their routes; the addresses belong to the requested interface.
  const interfaces: Json[] = [{ name: ifName }];
  const ips: Json[] = [];
  const routes: Json[] = [];
  for (const key of ["ip4", "ip6"]) {
    const ipc = r[key];
    if (!isObject(ipc)) continue;
    ips.push({ address: ipc.ip, gateway: ipc.gateway, interface: 0 });
    if (Array.isArray(ipc.routes)) routes.push(...ipc.routes.filter(isObject));
  }
  return { interfaces, ips, routes, dns: isObject(r.dns) ? r.dns : undefined };
}

/** go-cni's `createResult`: the networks' results merged by interface name. */
function mergeResults(raw: CniResult["raw"]): CniResult {
  const out: CniResult = { interfaces: {}, ips: [], routes: [], dns: [], raw };
  for (const { ifName, result } of raw) {
    const cur = toCurrent(result, ifName);
    for (const i of cur.interfaces) {
      const name = String(i.name ?? "");
      out.interfaces[name] = {
        name,
        mac: typeof i.mac === "string" ? i.mac : undefined,
        sandbox: typeof i.sandbox === "string" && i.sandbox !== "" ? i.sandbox : undefined,
        mtu: typeof i.mtu === "number" ? i.mtu : undefined,
        ipConfigs: out.interfaces[name]?.ipConfigs ?? [],
      };
    }
    for (const ip of cur.ips) {
      const address = String(ip.address ?? "");
      const bare = address.split("/")[0];
      const idx = typeof ip.interface === "number" ? ip.interface : undefined;
      const iface = idx !== undefined ? cur.interfaces[idx] : undefined;
      const conf: IPConfig = {
        address,
        ip: bare,
        version: ipVersion(bare),
        gateway: typeof ip.gateway === "string" && ip.gateway !== "" ? ip.gateway : undefined,
        interface: iface ? String(iface.name) : undefined,
      };
      out.ips.push(conf);
      if (conf.interface !== undefined) out.interfaces[conf.interface]?.ipConfigs.push(conf);
    }
    for (const r of cur.routes) {
      if (typeof r.dst !== "string") continue;
      out.routes.push({ dst: r.dst, gw: typeof r.gw === "string" ? r.gw : undefined });
    }
    if (cur.dns && Object.keys(cur.dns).length > 0) out.dns.push(cur.dns as DnsResult);
  }
  return out;
}

/** The pod's addresses as containerd's CRI plugin picks them (`selectPodIPs`). */
export interface PodIPs {
  /** The primary address (no prefix length): the first IPv4 unless IPv6 is preferred. */
  ip: string;
  /** The other addresses of the interface. */
  additionalIPs: string[];
  /** The first IPv4 address, if any. */
  ipv4?: string;
  /** The first IPv6 address, if any. */
  ipv6?: string;
}

/**
 * The pod's addresses on interface `ifName` (default `eth0`) of a {@linkcode Cni.setup} result,
 * as containerd's CRI plugin selects them: the first IPv4 is primary (the first IPv6 when
 * `preferIPv6`), the rest are additional.
 *
 * @throws {TainerdError} NotFound when the interface has no address
 */
export function podIPs(result: CniResult, ifName = "eth0", preferIPv6 = false): PodIPs {
  const configs = result.interfaces[ifName]?.ipConfigs ?? [];
  if (configs.length === 0) {
    throw notFound(`Cannot find a pod IP: interface "${ifName}" has no address in the CNI result`);
  }
  const ips = configs.map((c) => c.ip);
  const ipv4 = configs.find((c) => c.version === 4)?.ip;
  const ipv6 = configs.find((c) => c.version === 6)?.ip;
  const primary = (preferIPv6 ? ipv6 ?? ipv4 : ipv4 ?? ipv6) ?? ips[0];
  return { ip: primary, additionalIPs: ips.filter((ip) => ip !== primary), ipv4, ipv6 };
}
