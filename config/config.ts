/**
 * The daemon's TOML config, with containerd's keys where they exist (version 2 layout):
 * `version`, `root`, `state`, `[grpc]`, `[ttrpc]`, `[debug]`, `[metrics]`, `[cgroup]`,
 * `[timeouts]`, `disabled_plugins`, `required_plugins` and `[plugins."<type>.<id>"]`.
 * Unknown keys and wrong types are errors that name the key.
 *
 * @module
 */

import { parse as parseToml, stringify as stringifyToml } from "smol-toml";
import { invalidArgument, notFound } from "../plugins/errdefs.ts";
import { isLogLevel } from "../log.ts";
import { mergeConfig, pluginUri, type Registration } from "../plugins/plugin.ts";

/** The daemon's API listener. */
export interface GrpcConfig {
  address: string;
  uid: number;
  gid: number;
  max_recv_message_size: number;
  max_send_message_size: number;
}

/** Debug settings. */
export interface DebugConfig {
  address: string;
  uid: number;
  gid: number;
  level: string;
  format: string;
}

/** The whole config. */
export interface Config {
  version: number;
  root: string;
  state: string;
  temp: string;
  oom_score: number;
  disabled_plugins: string[];
  required_plugins: string[];
  grpc: GrpcConfig;
  ttrpc: { address: string; uid: number; gid: number };
  debug: DebugConfig;
  metrics: { address: string; grpc_histogram: boolean };
  cgroup: { path: string };
  timeouts: Record<string, string>;
  /** Raw plugin sections by `type.id`, validated when each plugin inits. */
  plugins: Record<string, Record<string, unknown>>;
}

/** Default root directory. */
export const DEFAULT_ROOT = "/var/lib/tainerd";
/** Default state directory. */
export const DEFAULT_STATE = "/run/tainerd";
/** Default API socket. */
export const DEFAULT_ADDRESS = "/run/tainerd/tainerd.sock";
/** Default config file. */
export const DEFAULT_CONFIG_PATH = "/etc/tainerd/config.toml";

/** The default config, without plugin sections. */
export function defaultConfig(): Config {
  return {
    version: 2,
    root: DEFAULT_ROOT,
    state: DEFAULT_STATE,
    temp: "",
    oom_score: 0,
    disabled_plugins: [],
    required_plugins: [],
    grpc: {
      address: DEFAULT_ADDRESS,
      uid: 0,
      gid: 0,
      max_recv_message_size: 16 * 1024 * 1024,
      max_send_message_size: 16 * 1024 * 1024,
    },
    ttrpc: { address: "", uid: 0, gid: 0 },
    debug: { address: "", uid: 0, gid: 0, level: "", format: "" },
    metrics: { address: "", grpc_histogram: false },
    cgroup: { path: "" },
    timeouts: {
      "io.containerd.timeout.shim.cleanup": "5s",
      "io.containerd.timeout.shim.load": "5s",
      "io.containerd.timeout.shim.shutdown": "3s",
      "io.containerd.timeout.task.state": "2s",
    },
    plugins: {},
  };
}

function isTable(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/**
 * Parses config TOML text and validates it against the defaults: every key must be known
 * and of the default's type. Plugin sections are only checked to be tables here.
 */
export function parseConfig(text: string, source = "config"): Config {
  let raw: Record<string, unknown>;
  try {
    raw = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    const msg = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw invalidArgument(`Cannot parse ${source}: ${msg}`);
  }
  const { plugins, timeouts, ...rest } = raw;
  const base = defaultConfig();
  const { plugins: _p, timeouts: defTimeouts, ...baseRest } = base;
  let merged: Omit<Config, "plugins" | "timeouts">;
  try {
    merged = mergeConfig(rest, baseRest, "");
  } catch (err) {
    throw invalidArgument(`Invalid ${source}: ${(err as Error).message}`);
  }
  const cfg: Config = { ...merged, timeouts: { ...defTimeouts }, plugins: {} };
  if (cfg.version !== 2) {
    throw invalidArgument(
      `Config key version must be 2 (containerd's version 2 layout), not ${cfg.version}`,
    );
  }
  if (timeouts !== undefined) {
    if (!isTable(timeouts)) throw invalidArgument(`Config key timeouts must be a table`);
    for (const [k, v] of Object.entries(timeouts)) {
      if (typeof v !== "string") {
        throw invalidArgument(`Config key timeouts."${k}" must be a string`);
      }
      cfg.timeouts[k] = v;
    }
  }
  if (plugins !== undefined) {
    if (!isTable(plugins)) throw invalidArgument(`Config key plugins must be a table`);
    for (const [k, v] of Object.entries(plugins)) {
      if (!isTable(v)) throw invalidArgument(`Config key plugins."${k}" must be a table`);
      cfg.plugins[k] = v;
    }
  }
  if (cfg.debug.level !== "" && !isLogLevel(cfg.debug.level)) {
    throw invalidArgument(`Config key debug.level has an unknown level "${cfg.debug.level}"`);
  }
  return cfg;
}

/**
 * Loads the config file at `path`. A missing file gives the defaults when `optional`
 * (the default path), NotFound otherwise.
 */
export async function loadConfig(path: string, optional: boolean): Promise<Config> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      if (optional) return defaultConfig();
      throw notFound(`Cannot read config file "${path}": not found`);
    }
    throw invalidArgument(`Cannot read config file "${path}": ${(err as Error).message}`);
  }
  return parseConfig(text, `config file "${path}"`);
}

/** The full default config as TOML, with every builtin plugin's default section. */
export function formatDefaultConfig(registrations: readonly Registration[]): string {
  const cfg = defaultConfig();
  for (const r of registrations) {
    if (r.config) cfg.plugins[pluginUri(r)] = r.config() as Record<string, unknown>;
  }
  return stringifyToml(cfg) + "\n";
}
