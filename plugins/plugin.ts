/**
 * The plugin model, as containerd's `plugin` package: a {@link Registration} describes a
 * plugin (type, id, what it requires, its default config, how to init it); the
 * {@link PluginSet} initialises registrations in dependency order and records each result
 * (instance, skip or error) for introspection.
 *
 * @module
 */

import { failedPrecondition, invalidArgument, notFound, TainerdError } from "./errdefs.ts";
import type { Platform } from "./platforms.ts";
import type { Logger } from "../log.ts";

/** The plugin types tainerd knows, named as containerd names them. */
export const PluginType = {
  Internal: "io.containerd.internal.v1",
  Runtime: "io.containerd.runtime.v2",
  Service: "io.containerd.service.v1",
  GRPC: "io.containerd.grpc.v1",
  Snapshot: "io.containerd.snapshotter.v1",
  Content: "io.containerd.content.v1",
  Metadata: "io.containerd.metadata.v1",
  Differ: "io.containerd.differ.v1",
  GC: "io.containerd.gc.v1",
  Event: "io.containerd.event.v1",
  Lease: "io.containerd.lease.v1",
} as const;

/** Requires every other plugin type: the plugin is initialised last. */
export const ALL_PLUGINS = "*";

/** What a plugin publishes about itself, shown by introspection. */
export interface PluginMeta {
  /** Platforms the plugin supports (snapshotters, runtimes). */
  platforms: Platform[];
  /** Key/value facts, e.g. a snapshotter's root directory. */
  exports: Record<string, string>;
  /** Capabilities, e.g. a snapshotter's "remap-ids". */
  capabilities: string[];
}

/** Describes one plugin. `T` is the type of the instance its init returns. */
export interface Registration<T = unknown, C = unknown> {
  /** Plugin type, e.g. `io.containerd.grpc.v1`. */
  readonly type: string;
  /** Plugin id, unique within its type. */
  readonly id: string;
  /** Plugin types initialised before this one; `"*"` for all others. */
  readonly requires?: readonly string[];
  /** Returns the plugin's default config; user config is validated against its shape. */
  readonly config?: () => C;
  /**
   * Validates and completes the user's `[plugins."type.id"]` section. Without it, the section
   * is merged over the default config and must have the same keys and value types.
   */
  readonly parseConfig?: (raw: Record<string, unknown>, defaults: C, where: string) => C;
  /** Creates the instance. Throw {@link skipPlugin} to skip, anything else to fail. */
  readonly init: (ic: InitContext<C>) => Promise<T> | T;
}

/** The full identifier of a registration: `type.id`. */
export function pluginUri(r: { type: string; id: string }): string {
  return `${r.type}.${r.id}`;
}

/** Thrown by a plugin's init to skip itself; the message says why. */
export class SkipPluginError extends Error {
  constructor(reason: string) {
    // ctr recognises skipped plugins by this suffix, as containerd's ErrSkipPlugin.
    super(`${reason}: skip plugin`);
    this.name = "SkipPluginError";
  }
}

/** Makes the error a plugin throws to skip itself. */
export function skipPlugin(reason: string): SkipPluginError {
  return new SkipPluginError(reason);
}

/** The state of one plugin after initialisation. */
export interface PluginRecord {
  readonly registration: Registration;
  readonly meta: PluginMeta;
  /** "ok", "skip" or "error". */
  status: "ok" | "skip" | "error" | "pending";
  /** The instance, when status is "ok". */
  instance?: unknown;
  /** The init error, when status is "skip" or "error". */
  error?: Error;
}

/** Everything a plugin's init may use. */
export interface InitContext<C = unknown> {
  /** The plugin's own root directory: `<root>/<type>.<id>` (created on demand by the plugin). */
  readonly root: string;
  /** The plugin's own state directory: `<state>/<type>.<id>`. */
  readonly state: string;
  /** The daemon's root and state directories. */
  readonly daemonRoot: string;
  readonly daemonState: string;
  /** The daemon's API socket address. */
  readonly address: string;
  /** The daemon's ttrpc socket address (shims publish events there). */
  readonly ttrpcAddress: string;
  /** The plugin's config section, validated and merged over its defaults. */
  readonly config: C;
  /** Metadata the plugin may fill during init. */
  readonly meta: PluginMeta;
  /** A logger tagged with the plugin's id. */
  readonly log: Logger;
  /** The instance of another (already initialised) plugin. */
  get<T>(registration: Registration<T>): T;
  /** The first initialised instance of the given type. */
  getByType<T = unknown>(type: string): T;
  /** All initialised instances of a type, by id. */
  getAll<T = unknown>(type: string): Map<string, T>;
  /** All plugin records, in init order (for introspection). */
  records(): readonly PluginRecord[];
}

/**
 * Orders registrations so every plugin comes after the types it requires, in registration
 * order otherwise (as containerd's plugin.Graph). Throws InvalidArgument on a cycle or on two
 * registrations with the same type and id.
 */
export function orderRegistrations(registrations: readonly Registration[]): Registration[] {
  const seen = new Set<string>();
  for (const r of registrations) {
    const uri = pluginUri(r);
    if (!r.type || !r.id) throw invalidArgument(`Plugin "${uri}" must have a type and an id`);
    if (seen.has(uri)) throw invalidArgument(`Plugin "${uri}" is registered twice`);
    seen.add(uri);
  }
  const ordered: Registration[] = [];
  const done = new Set<Registration>();
  const visiting = new Set<Registration>();
  const visit = (r: Registration, path: string[]) => {
    if (done.has(r)) return;
    if (visiting.has(r)) {
      throw invalidArgument(
        `Plugin dependency cycle: ${[...path, pluginUri(r)].join(" -> ")}`,
      );
    }
    visiting.add(r);
    for (const req of r.requires ?? []) {
      const deps = req === ALL_PLUGINS
        ? registrations.filter((o) =>
          o.type !== r.type && !(o.requires ?? []).includes(ALL_PLUGINS)
        )
        : registrations.filter((o) => o.type === req);
      for (const d of deps) if (d !== r) visit(d, [...path, pluginUri(r)]);
    }
    visiting.delete(r);
    done.add(r);
    ordered.push(r);
  };
  for (const r of registrations) visit(r, []);
  return ordered;
}

/** Options for {@link PluginSet.initAll}. */
export interface InitOptions {
  daemonRoot: string;
  daemonState: string;
  address: string;
  /** The daemon's ttrpc socket address. */
  ttrpcAddress?: string;
  /** Raw `[plugins."type.id"]` sections from the config file. */
  pluginConfigs: Record<string, Record<string, unknown>>;
  /** `type.id` (or bare id) of plugins not to load. */
  disabled: readonly string[];
  /** `type.id` of plugins whose failure must stop the daemon. */
  required: readonly string[];
  log: Logger;
}

/** Validates a config section against the shape of the default config. */
export function mergeConfig<C>(raw: Record<string, unknown>, defaults: C, where: string): C {
  if (defaults === null || typeof defaults !== "object" || Array.isArray(defaults)) {
    throw invalidArgument(`Config section ${where} takes no keys`);
  }
  const out: Record<string, unknown> = { ...(defaults as Record<string, unknown>) };
  for (const [key, value] of Object.entries(raw)) {
    const path = where ? `${where}.${key}` : key;
    if (!(key in out)) throw invalidArgument(`Unknown config key ${path}`);
    const def = out[key];
    out[key] = checkType(value, def, path);
  }
  return out as C;
}

function typeName(v: unknown): string {
  if (Array.isArray(v)) return "array";
  if (v instanceof Date) return "datetime";
  return typeof v;
}

function checkType(value: unknown, def: unknown, path: string): unknown {
  const want = typeName(def);
  const got = typeName(value);
  if (def === undefined || def === null) return value;
  if (want === "number" && got === "bigint") return Number(value);
  if (want !== got) {
    throw invalidArgument(`Config key ${path} must be a ${want}, not a ${got}`);
  }
  if (want === "object") {
    return mergeConfig(value as Record<string, unknown>, def, path);
  }
  return value;
}

/** Initialises registrations and keeps their records. */
export class PluginSet {
  readonly #records: PluginRecord[] = [];

  /** The records, in init order. */
  get records(): readonly PluginRecord[] {
    return this.#records;
  }

  /** The instance of an initialised plugin; throws NotFound or FailedPrecondition. */
  get<T>(registration: Registration<T>): T {
    return this.#instance(registration.type, registration.id) as T;
  }

  /** All initialised ("ok") instances of a type, by id. */
  getAll<T>(type: string): Map<string, T> {
    const out = new Map<string, T>();
    for (const r of this.#records) {
      if (r.registration.type === type && r.status === "ok") {
        out.set(r.registration.id, r.instance as T);
      }
    }
    return out;
  }

  #instance(type: string, id?: string): unknown {
    const matches = this.#records.filter((r) =>
      r.registration.type === type && (id === undefined || r.registration.id === id)
    );
    const what = id === undefined ? `of type "${type}"` : `"${type}.${id}"`;
    if (matches.length === 0) throw notFound(`No plugin ${what} is loaded`);
    const ok = matches.find((r) => r.status === "ok");
    if (ok) return ok.instance;
    const failed = matches[0];
    throw failedPrecondition(
      `Plugin ${what} is not available: ${failed.error?.message ?? failed.status}`,
    );
  }

  /**
   * Initialises every registration in dependency order. A plugin that skips or fails is
   * recorded; the daemon goes on unless the plugin is required, in which case this throws.
   */
  async initAll(registrations: readonly Registration[], opts: InitOptions): Promise<void> {
    const disabled = new Set(opts.disabled);
    const enabled = registrations.filter((r) => !disabled.has(pluginUri(r)) && !disabled.has(r.id));
    for (const req of opts.required) {
      if (!registrations.some((r) => pluginUri(r) === req)) {
        throw invalidArgument(`Required plugin "${req}" is not a known plugin`);
      }
      if (disabled.has(req)) throw invalidArgument(`Required plugin "${req}" is disabled`);
    }
    for (const key of Object.keys(opts.pluginConfigs)) {
      if (!registrations.some((r) => pluginUri(r) === key)) {
        throw invalidArgument(`Unknown plugin in config: plugins."${key}"`);
      }
    }
    const ordered = orderRegistrations(enabled);
    for (const reg of ordered) {
      const uri = pluginUri(reg);
      const meta: PluginMeta = { platforms: [], exports: {}, capabilities: [] };
      const record: PluginRecord = { registration: reg, meta, status: "pending" };
      this.#records.push(record);
      const log = opts.log.child({ plugin: uri });
      try {
        const defaults = reg.config ? reg.config() : ({} as unknown);
        const raw = opts.pluginConfigs[uri] ?? {};
        const where = `plugins."${uri}"`;
        const config = reg.parseConfig
          ? reg.parseConfig(raw, defaults, where)
          : reg.config
          ? mergeConfig(raw, defaults, where)
          : mergeConfig(raw, {}, where);
        const ic: InitContext = {
          root: `${opts.daemonRoot}/${uri}`,
          state: `${opts.daemonState}/${uri}`,
          daemonRoot: opts.daemonRoot,
          daemonState: opts.daemonState,
          address: opts.address,
          ttrpcAddress: opts.ttrpcAddress ?? `${opts.address}.ttrpc`,
          config,
          meta,
          log,
          get: (r) => this.get(r),
          getByType: <T>(type: string) => this.#instance(type) as T,
          getAll: <T>(type: string) => this.getAll<T>(type),
          records: () => this.#records,
        };
        log.debug("loading plugin");
        record.instance = await reg.init(ic);
        record.status = "ok";
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        record.error = e;
        if (e instanceof SkipPluginError) {
          record.status = "skip";
          log.info(`skipping plugin: ${e.message}`);
        } else {
          record.status = "error";
          log.warn(`failed to load plugin: ${e.message}`);
        }
        if (opts.required.includes(uri)) {
          throw new TainerdError(
            "FailedPrecondition",
            `Required plugin "${uri}" failed to load: ${e.message}`,
            { cause: e },
          );
        }
      }
    }
  }

  /**
   * Tells every instance with a `serving()` method that the API socket answers (plugins that
   * call the daemon's own API, like CRI, start their work there). Failures are logged: the
   * daemon stays up, the plugin reports its state through its own API.
   */
  async servingAll(log: Logger): Promise<void> {
    for (const r of this.#records) {
      const inst = r.instance as { serving?: () => unknown } | undefined;
      if (r.status === "ok" && inst && typeof inst.serving === "function") {
        try {
          await inst.serving();
        } catch (err) {
          log.warn(`plugin ${pluginUri(r.registration)} failed to start serving: ${String(err)}`);
        }
      }
    }
  }

  /** Closes every instance that has a `close()` method, in reverse init order. */
  async closeAll(log: Logger): Promise<void> {
    for (const r of [...this.#records].reverse()) {
      const inst = r.instance as { close?: () => unknown } | undefined;
      if (r.status === "ok" && inst && typeof inst.close === "function") {
        try {
          await inst.close();
        } catch (err) {
          log.warn(`closing plugin ${pluginUri(r.registration)} failed: ${String(err)}`);
        }
      }
    }
  }
}
