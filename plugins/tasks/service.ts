/**
 * The tasks service (`containerd.services.tasks.v1.Tasks`): tasks of containers, run by the
 * runtime manager's shims.
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Tasks } from "../../api/gen/containerd/services/tasks/v1/tasks_pb.ts";
import {
  type Process,
  ProcessSchema,
  Status,
} from "../../api/gen/containerd/types/task/task_pb.ts";
import type { StateResponse } from "../../api/gen/containerd/runtime/v2/task/shim_pb.ts";
import { MetricSchema } from "../../api/gen/containerd/types/metrics_pb.ts";
import { namespaceRequired } from "../../server/context.ts";
import type { GrpcService } from "../../server/service.ts";
import { invalidArgument, isNotFound, notImplemented } from "../errdefs.ts";
import { containersStorePlugin } from "../containers/plugin.ts";
import { objectAdaptor, parseAll } from "../filters/mod.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { runtimePlugin } from "../runtime/plugin.ts";

function processOf(containerId: string, s: StateResponse): Process {
  return create(ProcessSchema, {
    containerId,
    id: s.execId || containerId,
    pid: s.pid,
    status: s.status,
    stdin: s.stdin,
    stdout: s.stdout,
    stderr: s.stderr,
    terminal: s.terminal,
    exitStatus: s.exitStatus,
    exitedAt: s.exitedAt,
  });
}

/** `io.containerd.grpc.v1.tasks`. */
export const tasksService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "tasks",
  requires: [PluginType.Runtime, PluginType.Service, PluginType.Event],
  init: (ic) => {
    const runtime = ic.get(runtimePlugin);
    const containers = ic.get(containersStorePlugin);
    return {
      register(router) {
        router.service(Tasks, {
          create: async (req, ctx) => {
            const ns = namespaceRequired(ctx);
            const c = containers.get(ns, req.containerId);
            if (req.checkpoint) {
              throw notImplemented("Restoring a task from a checkpoint is not supported yet");
            }
            const name = c.runtime.name;
            // tainerd's shim for the runc runtimes, else the runtime's shim binary
            // (containerd's resolution); a missing binary fails here, before any bundle.
            runtime.resolve(name);
            if (!c.spec) throw invalidArgument(`Container "${c.id}" has no spec`);
            const t = await runtime.create(ns, c.id, {
              spec: c.spec.value,
              rootfs: req.rootfs,
              stdin: req.stdin,
              stdout: req.stdout,
              stderr: req.stderr,
              terminal: req.terminal,
              runtime: name,
              runtimeOptions: c.runtime.options,
              taskOptions: req.options,
            });
            return { containerId: c.id, pid: t.pid };
          },
          start: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            const r = await t.task.start({ id: req.containerId, execId: req.execId });
            return { pid: r.pid };
          },
          delete: async (req, ctx) => {
            const ns = namespaceRequired(ctx);
            const r = await runtime.delete(ns, req.containerId);
            return {
              id: req.containerId,
              pid: r.pid,
              exitStatus: r.exitStatus,
              exitedAt: r.exitedAt ? timestampFromDate(r.exitedAt) : undefined,
            };
          },
          deleteProcess: async (req, ctx) => {
            if (!req.execId) throw invalidArgument("An exec id is required to delete a process");
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            const r = await t.task.delete({ id: req.containerId, execId: req.execId });
            return { id: req.execId, pid: r.pid, exitStatus: r.exitStatus, exitedAt: r.exitedAt };
          },
          get: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            const st = await t.task.state({ id: req.containerId, execId: req.execId });
            return { process: processOf(req.containerId, st) };
          },
          list: async (req, ctx) => {
            const ns = namespaceRequired(ctx);
            const filter = parseAll(req.filter ? [req.filter] : []);
            const tasks: Process[] = [];
            for (const t of runtime.list(ns)) {
              try {
                const st = await t.task.state({ id: t.id }, { timeoutMs: 2000 });
                const p = processOf(t.id, st);
                if (
                  filter.match(objectAdaptor({
                    fields: { id: t.id, status: Status[p.status]?.toLowerCase() },
                  }))
                ) tasks.push(p);
              } catch (err) {
                if (!isNotFound(err)) ic.log.warn(`cannot get the state of task ${t.id}: ${err}`);
              }
            }
            return { tasks };
          },
          kill: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            await t.task.kill({
              id: req.containerId,
              execId: req.execId,
              signal: req.signal,
              all: req.all,
            });
            return {};
          },
          exec: async (req, ctx) => {
            if (!req.execId) throw invalidArgument("An exec id is required");
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            await t.task.exec({
              id: req.containerId,
              execId: req.execId,
              terminal: req.terminal,
              stdin: req.stdin,
              stdout: req.stdout,
              stderr: req.stderr,
              spec: req.spec,
            });
            return {};
          },
          resizePty: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            await t.task.resizePty({
              id: req.containerId,
              execId: req.execId,
              width: req.width,
              height: req.height,
            });
            return {};
          },
          closeIO: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            await t.task.closeIO({ id: req.containerId, execId: req.execId, stdin: req.stdin });
            return {};
          },
          pause: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            await t.task.pause({ id: req.containerId });
            return {};
          },
          resume: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            await t.task.resume({ id: req.containerId });
            return {};
          },
          listPids: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            const r = await t.task.pids({ id: req.containerId });
            return { processes: r.processes };
          },
          checkpoint: () => {
            throw notImplemented("Checkpoint needs CRIU support, which tainerd does not have yet");
          },
          update: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            await t.task.update({
              id: req.containerId,
              resources: req.resources,
              annotations: req.annotations,
            });
            return {};
          },
          metrics: async (req, ctx) => {
            // as containerd's getTasksMetrics: a task whose shim cannot give its statistics
            // is left out (and logged unless it is gone), never failing the whole call
            const ns = namespaceRequired(ctx);
            const filter = parseAll(req.filters);
            const matching = runtime.list(ns).filter((t) =>
              filter.match(objectAdaptor({ fields: { id: t.id, namespace: ns } }))
            );
            const collected = await Promise.all(matching.map(async (t) => {
              const timestamp = timestampFromDate(new Date());
              try {
                const r = await t.task.stats({ id: t.id }, { timeoutMs: 10_000 });
                return create(MetricSchema, { timestamp, id: t.id, data: r.stats });
              } catch (err) {
                if (!isNotFound(err)) {
                  ic.log.warn(`cannot collect the metrics of task ${t.id}: ${err}`);
                }
                return undefined;
              }
            }));
            return { metrics: collected.filter((m) => m !== undefined) };
          },
          wait: async (req, ctx) => {
            const t = runtime.get(namespaceRequired(ctx), req.containerId);
            const r = await t.task.wait({ id: req.containerId, execId: req.execId });
            return { exitStatus: r.exitStatus, exitedAt: r.exitedAt };
          },
        });
      },
    };
  },
};
