/**
 * The cgroups task monitor, `io.containerd.monitor.v1.cgroups`, and the Prometheus endpoint:
 * with `[metrics] address = "127.0.0.1:PORT"`, `GET /v1/metrics` answers the text format,
 * collected on scrape — each task's cgroup statistics from its shim (containerd's names and
 * labels), the API calls, the shims running, GC runs and process basics. Off unless an
 * address is configured. Pulls run client-side in tainerd, so the daemon counts none.
 *
 * @module
 */

import type { Config } from "../../config/config.ts";
import type { Logger } from "../../log.ts";
import { collectorFor } from "../metadata/gc.ts";
import { metadataPlugin } from "../metadata/plugin.ts";
import { type PluginSet, PluginType, type Registration } from "../plugin.ts";
import type { RuntimeManager } from "../runtime/manager.ts";
import { runtimePlugin } from "../runtime/plugin.ts";
import { debugPlugin, type DebugServer } from "../debug/plugin.ts";
import { addStats, FamilySet } from "./cgroups.ts";
import { daemonFamilies, type Family, recordGcRun, writeText } from "./registry.ts";

const STARTED = Date.now() / 1000;
/** How long one shim may take to answer Stats during a scrape. */
const STATS_TIMEOUT_MS = 5000;

/** Splits `host:port` / `[v6]:port`. */
export function parseHostPort(address: string): { hostname: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(address);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port < 65536)) {
    throw new Error(`Config key metrics.address "${address}" is not host:port`);
  }
  return { hostname: m[1] ?? (m[2] || "127.0.0.1"), port };
}

/** The monitor: collects on scrape and serves `/v1/metrics` once {@link listen} is called. */
export class CgroupsMonitor {
  readonly #runtime?: RuntimeManager;
  readonly #log: Logger;
  readonly #unsubscribe: () => void;
  #server?: Deno.HttpServer;

  constructor(runtime: RuntimeManager | undefined, log: Logger, unsubscribe: () => void) {
    this.#runtime = runtime;
    this.#log = log;
    this.#unsubscribe = unsubscribe;
  }

  /** Every family, in the text format. */
  async scrape(): Promise<string> {
    const tasks = this.#runtime?.all() ?? [];
    const set = new FamilySet();
    const stats = await Promise.all(tasks.map(async (t) => {
      try {
        const r = await t.task.stats({ id: t.id }, { timeoutMs: STATS_TIMEOUT_MS });
        return r.stats;
      } catch (err) {
        this.#log.debug(`cannot collect the metrics of task ${t.id}: ${err}`);
        return undefined;
      }
    }));
    tasks.forEach((t, i) => {
      const s = stats[i];
      if (s) addStats(set, t.id, t.namespace, s);
    });
    const mem = Deno.memoryUsage();
    let fds = NaN;
    try {
      fds = [...Deno.readDirSync("/proc/self/fd")].length;
    } catch { /* not Linux */ }
    const own: Family[] = [
      {
        name: "tainerd_shims_running",
        help: "Shim processes the daemon is connected to.",
        type: "gauge",
        samples: [{ labels: {}, value: new Set(tasks.map((t) => t.address)).size }],
      },
      {
        name: "tainerd_tasks",
        help: "Tasks the daemon knows.",
        type: "gauge",
        samples: [{ labels: {}, value: tasks.length }],
      },
      {
        name: "process_resident_memory_bytes",
        help: "Resident memory size in bytes.",
        type: "gauge",
        samples: [{ labels: {}, value: mem.rss }],
      },
      {
        name: "process_heap_bytes",
        help: "V8 heap used in bytes.",
        type: "gauge",
        samples: [{ labels: {}, value: mem.heapUsed }],
      },
      {
        name: "process_start_time_seconds",
        help: "Start time of the process since unix epoch in seconds.",
        type: "gauge",
        samples: [{ labels: {}, value: STARTED }],
      },
      {
        name: "process_open_fds",
        help: "Number of open file descriptors.",
        type: "gauge",
        samples: Number.isNaN(fds) ? [] : [{ labels: {}, value: fds }],
      },
    ];
    return writeText([...set.families(), ...daemonFamilies(), ...own]);
  }

  /** Serves `/v1/metrics` on `host:port`; an error (e.g. address taken) is logged, not thrown. */
  listen(address: string): void {
    let hp;
    try {
      hp = parseHostPort(address);
      this.#server = Deno.serve({
        ...hp,
        onListen: () => this.#log.info("metrics endpoint listening", { address }),
        onError: (err) => {
          this.#log.warn(`metrics endpoint: ${err}`);
          return new Response("internal error\n", { status: 500 });
        },
      }, async (req) => {
        const url = new URL(req.url);
        if (url.pathname !== "/v1/metrics") return new Response("not found\n", { status: 404 });
        if (req.method !== "GET" && req.method !== "HEAD") {
          return new Response("method not allowed\n", { status: 405 });
        }
        return new Response(await this.scrape(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      });
    } catch (err) {
      this.#log.error(`Cannot serve metrics on "${address}": ${(err as Error).message}`);
    }
  }

  async close(): Promise<void> {
    this.#unsubscribe();
    await this.#server?.shutdown();
    this.#server = undefined;
  }
}

/** `io.containerd.monitor.v1.cgroups`. */
export const cgroupsMonitorPlugin: Registration<CgroupsMonitor> = {
  type: "io.containerd.monitor.v1",
  id: "cgroups",
  requires: [PluginType.Runtime, PluginType.Metadata],
  init: (ic) => {
    let runtime: RuntimeManager | undefined;
    try {
      runtime = ic.get(runtimePlugin);
    } catch {
      ic.log.warn("no runtime: task metrics are not collected");
    }
    const unsubscribe = collectorFor(ic.get(metadataPlugin)).onCollected(() => recordGcRun());
    return new CgroupsMonitor(runtime, ic.log, unsubscribe);
  },
};

/** Starts the `[metrics]` and `[debug]` listeners configured, after the plugins' init. */
export async function startListeners(
  config: Config,
  plugins: PluginSet,
  log: Logger,
): Promise<void> {
  if (config.metrics.address) {
    const m = plugins.getAll<CgroupsMonitor>(cgroupsMonitorPlugin.type).get(
      cgroupsMonitorPlugin.id,
    );
    if (m) m.listen(config.metrics.address);
    else log.warn("metrics.address is set but the cgroups monitor plugin is not loaded");
  }
  if (config.debug.address) {
    const d = plugins.getAll<DebugServer>(debugPlugin.type).get(debugPlugin.id);
    if (d) await d.listen(config.debug.address, config.debug.uid, config.debug.gid);
    else log.warn("debug.address is set but the debug plugin is not loaded");
  }
}
