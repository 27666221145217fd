/**
 * `io.containerd.internal.v1.restart`: the restart monitor (see {@link RestartMonitor}),
 * driving the in-process container store, snapshot store and runtime manager.
 *
 * @module
 */

import { fromBinary } from "@bufbuild/protobuf";
import { TaskExitSchema } from "../../api/gen/containerd/events/task_pb.ts";
import { Status } from "../../api/gen/containerd/types/task/task_pb.ts";
import { containersStorePlugin } from "../containers/plugin.ts";
import { isNotFound, notFound } from "../errdefs.ts";
import { exchangePlugin } from "../events/plugin.ts";
import { parseGoDuration } from "../gc/scheduler.ts";
import { namespacesStorePlugin } from "../namespaces/plugin.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { runtimePlugin } from "../runtime/plugin.ts";
import { snapshotsStorePlugin } from "../snapshots/plugin.ts";
import { type MonitorBackend, RestartMonitor } from "./monitor.ts";

/** `[plugins."io.containerd.internal.v1.restart"]`. */
export interface RestartConfig {
  /** How often every labelled container is checked (a Go duration). */
  interval: string;
}

/** The default config: every 10 s. */
export function defaultRestartConfig(): RestartConfig {
  return { interval: "10s" };
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `io.containerd.internal.v1.restart`. */
export const restartPlugin: Registration<RestartMonitor, RestartConfig> = {
  type: PluginType.Internal,
  id: "restart",
  requires: [PluginType.Event, PluginType.Service, PluginType.Runtime],
  config: defaultRestartConfig,
  init: (ic) => {
    const intervalMs = parseGoDuration(ic.config.interval);
    const runtime = ic.get(runtimePlugin);
    const containers = ic.get(containersStorePlugin);
    const namespaces = ic.get(namespacesStorePlugin);
    const snapshots = ic.get(snapshotsStorePlugin);
    const exchange = ic.get(exchangePlugin);
    const taskState = async (ns: string, id: string) => {
      if (!runtime.has(ns, id)) return undefined;
      try {
        const st = await runtime.get(ns, id).task.state({ id }, { timeoutMs: 5000 });
        return { status: st.status, exitStatus: st.exitStatus };
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    };
    const backend: MonitorBackend = {
      namespaces: () => namespaces.list().map((n) => n.name),
      containers: (ns) => containers.list(ns),
      setLabels: (ns, id, labels) => {
        const c = containers.get(ns, id);
        containers.update(
          ns,
          { ...c, labels: { ...c.labels, ...labels } },
          Object.keys(labels).map((k) => `labels.${k}`),
        );
      },
      task: taskState,
      kill: async (ns, id) => {
        await runtime.get(ns, id).task.kill({ id, signal: 9, all: true });
        const deadline = Date.now() + 10_000;
        while (Date.now() < deadline) {
          const st = await taskState(ns, id);
          if (!st) return;
          if (st.status === Status.STOPPED) break;
          await delay(50);
        }
        await runtime.delete(ns, id);
      },
      deleteTask: async (ns, id) => {
        await runtime.delete(ns, id);
      },
      mounts: async (ns, c) => {
        if (!snapshots.has(c.snapshotter)) {
          throw notFound(`Snapshotter "${c.snapshotter}" is not loaded`);
        }
        const ms = await snapshots.snapshotter(c.snapshotter).mounts(ns, c.snapshotKey);
        return ms.map((m) => ({ type: m.type, source: m.source, options: [...(m.options ?? [])] }));
      },
      start: async (ns, c, rootfs, stdio) => {
        runtime.resolve(c.runtime.name);
        if (!c.spec) throw notFound(`Container "${c.id}" has no spec`);
        const t = await runtime.create(ns, c.id, {
          spec: c.spec.value,
          rootfs,
          stdin: "",
          stdout: stdio,
          stderr: stdio,
          terminal: false,
          runtime: c.runtime.name,
          runtimeOptions: c.runtime.options,
        });
        const r = await t.task.start({ id: c.id });
        return r.pid;
      },
    };
    const monitor = new RestartMonitor(backend, intervalMs, ic.log);
    // Exits re-trigger a pass at once rather than waiting for the interval.
    const abort = new AbortController();
    (async () => {
      for await (
        const e of exchange.subscribe((e) => e.topic === "/tasks/exit", abort.signal)
      ) {
        try {
          const exit = fromBinary(TaskExitSchema, e.event.value);
          if (exit.id && exit.id !== exit.containerId) continue; // an exec'd process
          monitor.exited(e.namespace, exit.containerId, exit.exitStatus);
        } catch (err) {
          ic.log.warn(`cannot decode a task exit: ${(err as Error).message}`);
        }
      }
    })();
    // The first pass once every plugin has settled (the daemon is up).
    const ready = () => ic.records().every((r) => r.status !== "pending");
    (async () => {
      const deadline = Date.now() + 30_000;
      while (!ready() && Date.now() < deadline) await delay(50);
      monitor.start(0);
    })();
    const close = monitor.close.bind(monitor);
    return Object.assign(monitor, {
      close: async () => {
        abort.abort();
        await close();
      },
    });
  },
};
