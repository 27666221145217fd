/**
 * `tainerd containers …` and `tainerd tasks …`: create, list, inspect, label and remove
 * containers; start, list, inspect, signal, pause, resume, measure, attach to, remove and
 * exec into tasks — with ctr's flags and output.
 *
 * @module
 */

import { Command } from "commander";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import * as cgroupsV1 from "../api/gen/io/containerd/cgroups/v1/metrics_pb.ts";
import * as cgroupsV2 from "../api/gen/io/containerd/cgroups/v2/metrics_pb.ts";
import { Containers } from "../api/gen/containerd/services/containers/v1/containers_pb.ts";
import { Tasks } from "../api/gen/containerd/services/tasks/v1/tasks_pb.ts";
import { Status } from "../api/gen/containerd/types/task/task_pb.ts";
import type { TainerdClient } from "../client/client.ts";
import { isNotFound } from "../plugins/errdefs.ts";
import { signalNumber } from "../sys/libc.ts";
import { PROCESS_SPEC_TYPE_URL, withEnv } from "../oci/spec.ts";
import {
  addSpecOptions,
  createContainer,
  deleteContainer,
  runAttached,
  type RunOptions,
  runTask,
} from "./run.ts";
import { TaskIO } from "./run_io.ts";
import { formatTable, parseLabelArgs } from "./table.ts";

/** Runs `fn` with a client of the daemon the global options name. */
export type WithClient = (fn: (c: TainerdClient) => Promise<void>) => Promise<void>;

/** The type URL containerd stores process specs under. */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function out(text: string): void {
  const bytes = encoder.encode(text);
  for (let off = 0; off < bytes.length;) off += Deno.stdout.writeSync(bytes.subarray(off));
}

function warn(text: string): void {
  Deno.stderr.writeSync(encoder.encode(`tainerd: ${text}\n`));
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

function statusName(s: Status): string {
  return (Status[s] ?? "UNKNOWN").toUpperCase();
}

async function taskStatus(c: TainerdClient, id: string): Promise<Status | undefined> {
  try {
    const { process } = await c.service(Tasks).get({ containerId: id });
    return process?.status;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

/** `tainerd containers …`. */
export function containersCommand(withClient: WithClient): Command {
  const cmd = new Command("containers").alias("container").alias("c")
    .description("manage containers").enablePositionalOptions();
  cmd.command("ls").alias("list")
    .description("list containers")
    .argument("[filters...]")
    .option("-q, --quiet", "print only the container ids")
    .action((filters: string[], o: { quiet?: boolean }) =>
      withClient(async (c) => {
        const { containers } = await c.service(Containers).list({ filters });
        if (o.quiet) {
          out(containers.map((x) => x.id + "\n").join(""));
          return;
        }
        out(formatTable([
          ["CONTAINER", "IMAGE", "RUNTIME"],
          ...containers.map((x) => [x.id, x.image || "-", x.runtime?.name ?? ""]),
        ]));
      })
    );
  addSpecOptions(
    cmd.command("create")
      .description("create a container from an image (as ctr containers create)")
      .argument("<image>", "the image")
      .argument("<id>", "the container id")
      .argument("[command...]", "the command and its arguments (default: the image's)")
      .option("-t, --tty", "allocate a terminal"),
  )
    .passThroughOptions()
    .action((image: string, id: string, args: string[], o: RunOptions) =>
      withClient(async (c) => {
        await createContainer(c, image, id, args, o);
      })
    );
  cmd.command("label")
    .description("set and clear labels of a container (key= clears)")
    .argument("<id>")
    .argument("[labels...]", "labels as key=value")
    .action((id: string, labels: string[]) =>
      withClient(async (c) => {
        const parsed = parseLabelArgs(labels);
        const { container } = await c.service(Containers).update({
          container: { id, labels: parsed },
          updateMask: { paths: Object.keys(parsed).map((k) => `labels.${k}`) },
        });
        const set = Object.entries(container?.labels ?? {}).map(([k, v]) => `${k}=${v}`);
        out(set.join(",") + "\n");
      })
    );
  cmd.command("info")
    .description("print a container's record as JSON")
    .argument("<id>")
    .action((id: string) =>
      withClient(async (c) => {
        const { container: x } = await c.service(Containers).get({ id });
        if (!x) throw new Error(`No container "${id}"`);
        let spec: unknown = undefined;
        try {
          spec = x.spec ? JSON.parse(decoder.decode(x.spec.value)) : undefined;
        } catch { /* shown raw below */ }
        out(
          JSON.stringify(
            {
              ID: x.id,
              Labels: x.labels,
              Image: x.image,
              Runtime: { Name: x.runtime?.name ?? "" },
              SnapshotKey: x.snapshotKey,
              Snapshotter: x.snapshotter,
              CreatedAt: x.createdAt ? timestampDate(x.createdAt).toISOString() : undefined,
              UpdatedAt: x.updatedAt ? timestampDate(x.updatedAt).toISOString() : undefined,
              Extensions: Object.fromEntries(
                Object.entries(x.extensions).map(([k, v]) => [k, { type_url: v.typeUrl }]),
              ),
              Spec: spec,
            },
            null,
            4,
          ) + "\n",
        );
      })
    );
  cmd.command("rm").alias("delete").alias("del").alias("remove")
    .description("remove containers (a stopped task is removed too) and their snapshots")
    .argument("<ids...>")
    .option("--keep-snapshot", "do not remove the container's snapshot")
    .action((ids: string[], o: { keepSnapshot?: boolean }) =>
      withClient(async (c) => {
        let failed = 0;
        for (const id of ids) {
          try {
            const status = await taskStatus(c, id);
            if (status !== undefined) {
              if (status !== Status.STOPPED && status !== Status.CREATED) {
                throw new Error(`cannot delete a non stopped container: ${statusName(status)}`);
              }
              await c.service(Tasks).delete({ containerId: id });
            }
            if (o.keepSnapshot) await c.service(Containers).delete({ id });
            else await deleteContainer(c, id);
          } catch (err) {
            failed++;
            warn(`Cannot remove container "${id}": ${(err as Error).message}`);
          }
        }
        if (failed) Deno.exitCode = 1;
      })
    );
  return cmd;
}

/** `tainerd tasks …`. */
export function tasksCommand(withClient: WithClient): Command {
  const cmd = new Command("tasks").alias("task").alias("t").description("manage tasks")
    .enablePositionalOptions();
  cmd.command("ls").alias("list")
    .description("list tasks")
    .option("-q, --quiet", "print only the task ids")
    .action((o: { quiet?: boolean }) =>
      withClient(async (c) => {
        const { tasks } = await c.service(Tasks).list({});
        if (o.quiet) {
          out(tasks.map((t) => t.id + "\n").join(""));
          return;
        }
        out(formatTable([
          ["TASK", "PID", "STATUS"],
          ...tasks.map((t) => [t.id, String(t.pid), statusName(t.status)]),
        ]));
      })
    );
  cmd.command("start")
    .description("start a container's task; attached (exits with its status) unless -d")
    .argument("<id>", "the container")
    .option("-d, --detach", "start the task and return")
    .option("--null-io", "send the task's stdio to /dev/null")
    .action((id: string, o: { detach?: boolean; nullIo?: boolean }) =>
      startAction(withClient, id, o)
    );
  cmd.command("ps")
    .description("list the processes of a task")
    .argument("<id>", "the container")
    .action((id: string) =>
      withClient(async (c) => {
        const { processes } = await c.service(Tasks).listPids({ containerId: id });
        out(formatTable([
          ["PID", "INFO"],
          ...processes.map((p) => [String(p.pid), processInfo(p.info)]),
        ]));
      })
    );
  for (const [name, verb] of [["pause", "pause"], ["resume", "resume"]] as const) {
    cmd.command(name)
      .description(`${verb} a task's processes`)
      .argument("<id>", "the container")
      .action((id: string) =>
        withClient(async (c) => {
          await c.service(Tasks)[verb]({ containerId: id });
        })
      );
  }
  cmd.command("metrics").alias("metric")
    .description("print a task's cgroup metrics")
    .argument("<id>", "the container")
    .option("--format <format>", "table or json", "table")
    .action((id: string, o: { format: string }) =>
      withClient(async (c) => {
        const { metrics } = await c.service(Tasks).metrics({ filters: [`id==${id}`] });
        const m = metrics[0];
        if (!m?.data) throw new Error(`No metrics for task "${id}"`);
        out(
          formatMetrics(
            m.id,
            m.timestamp ? timestampDate(m.timestamp) : undefined,
            m.data,
            o.format,
          ),
        );
      })
    );
  cmd.command("attach")
    .description("attach to the stdio of a running task (created with FIFOs)")
    .argument("<id>", "the container")
    .action((id: string) => attachAction(withClient, id));
  cmd.command("kill")
    .description("signal a task (SIGTERM by default)")
    .argument("<id>")
    .option("-s, --signal <signal>", "the signal", "SIGTERM")
    .option("-a, --all", "signal every process of the container")
    .option("--exec-id <id>", "signal an exec'd process")
    .action((id: string, o: { signal: string; all?: boolean; execId?: string }) =>
      withClient(async (c) => {
        await c.service(Tasks).kill({
          containerId: id,
          execId: o.execId ?? "",
          signal: signalNumber(/^\d+$/.test(o.signal) ? Number(o.signal) : o.signal),
          all: o.all ?? false,
        });
      })
    );
  cmd.command("rm").alias("delete").alias("del").alias("remove")
    .description("remove stopped tasks (-f kills running ones first)")
    .argument("<ids...>")
    .option("-f, --force", "kill a running task, then remove it")
    .action((ids: string[], o: { force?: boolean }) =>
      withClient(async (c) => {
        const tasks = c.service(Tasks);
        let failed = 0;
        for (const id of ids) {
          try {
            const status = await taskStatus(c, id);
            if (status === undefined) throw new Error("no such task");
            if (status !== Status.STOPPED && status !== Status.CREATED) {
              if (!o.force) {
                throw new Error(`the task is ${statusName(status)}; kill it first or use --force`);
              }
              const waited = tasks.wait({ containerId: id }, { timeoutMs: 0 });
              await tasks.kill({ containerId: id, signal: 9, all: true });
              await waited;
            }
            await tasks.delete({ containerId: id });
            out(`${id}\n`);
          } catch (err) {
            failed++;
            warn(`Cannot remove task "${id}": ${(err as Error).message}`);
          }
        }
        if (failed) Deno.exitCode = 1;
      })
    );
  cmd.command("exec")
    .description("run another process in a running task; exits with its status")
    .argument("<id>", "the container")
    .argument("<command...>", "the command and its arguments")
    .requiredOption("--exec-id <id>", "the id of the new process")
    .option("-t, --tty", "allocate a terminal")
    .option("--cwd <dir>", "the working directory")
    .option("--env <K=V>", "an environment variable (repeatable)", collect)
    .option("-d, --detach", "start the process and return")
    .passThroughOptions()
    .action((id: string, args: string[], o: {
      execId: string;
      tty?: boolean;
      cwd?: string;
      env?: string[];
      detach?: boolean;
    }) => execAction(withClient, id, args, o));
  return cmd;
}

async function execAction(
  withClient: WithClient,
  id: string,
  args: string[],
  o: { execId: string; tty?: boolean; cwd?: string; env?: string[]; detach?: boolean },
): Promise<void> {
  let code = 0;
  await withClient(async (c) => {
    const tasks = c.service(Tasks);
    const { container } = await c.service(Containers).get({ id });
    if (!container?.spec) throw new Error(`Container "${id}" has no spec`);
    const spec = JSON.parse(decoder.decode(container.spec.value));
    const proc = { ...spec.process, args, terminal: o.tty ?? false };
    if (o.cwd) proc.cwd = o.cwd;
    if (o.env) {
      const holder = { process: { env: [...(proc.env ?? [])] } };
      withEnv(holder as Parameters<typeof withEnv>[0], o.env);
      proc.env = holder.process.env;
    }
    const specAny = {
      typeUrl: PROCESS_SPEC_TYPE_URL,
      value: encoder.encode(JSON.stringify(proc)),
    };
    const ids = { containerId: id, execId: o.execId };
    if (o.detach) {
      await tasks.exec({ ...ids, spec: specAny, terminal: false });
      await tasks.start(ids);
      return;
    }
    const exitCode = await runAttached(c, {
      ...ids,
      tty: o.tty ?? false,
      create: async (paths) => {
        await tasks.exec({ ...ids, ...paths, spec: specAny });
      },
      remove: async () => {
        await tasks.deleteProcess(ids);
      },
      cleanup: async (started) => {
        if (started) await tasks.kill({ ...ids, signal: 9 }).catch(() => {});
        await tasks.deleteProcess(ids).catch(() => {});
      },
    });
    code = exitCode;
  });
  // Stdin may still be read (a terminal never ends): leave now, with the process's status.
  if (!o.detach) Deno.exit(code);
}

/** The `INFO` column of `tasks ps` as ctr prints it: the runc shim's process details, else `-`. */
function processInfo(info: { typeUrl: string; value: Uint8Array } | undefined): string {
  if (!info?.value.length) return "-";
  // containerd.runc.v1.ProcessDetails { string exec_id = 1; }
  const v = info.value;
  if (v[0] === 0x0a && v.length >= 2 && v[1] + 2 <= v.length) {
    return `&ProcessDetails{ExecID:${
      decoder.decode(v.subarray(2, 2 + v[1]))
    },XXX_unrecognized:[],}`;
  }
  return info.typeUrl;
}

function formatMetrics(
  id: string,
  at: Date | undefined,
  data: { typeUrl: string; value: Uint8Array },
  format: string,
): string {
  const type = data.typeUrl.replace(/^.*\//, "");
  const rows: [string, string][] = [];
  let json: unknown;
  if (type === cgroupsV1.MetricsSchema.typeName) {
    const m = fromBinary(cgroupsV1.MetricsSchema, data.value);
    json = m;
    if (m.memory) {
      rows.push(["memory.usage_in_bytes", String(m.memory.usage?.usage ?? 0n)]);
      rows.push(["memory.limit_in_bytes", String(m.memory.usage?.limit ?? 0n)]);
      rows.push(["memory.stat.cache", String(m.memory.totalCache)]);
    }
    if (m.cpu) {
      rows.push(["cpuacct.usage", String(m.cpu.usage?.total ?? 0n)]);
      rows.push(["cpuacct.usage_percpu", `[${(m.cpu.usage?.perCpu ?? []).join(" ")}]`]);
    }
    if (m.pids) {
      rows.push(["pids.current", String(m.pids.current)]);
      rows.push(["pids.limit", String(m.pids.limit)]);
    }
  } else if (type === cgroupsV2.MetricsSchema.typeName) {
    const m = fromBinary(cgroupsV2.MetricsSchema, data.value);
    json = m;
    if (m.pids) {
      rows.push(["pids.current", String(m.pids.current)]);
      rows.push(["pids.limit", String(m.pids.limit)]);
    }
    if (m.cpu) {
      rows.push(["cpu.usage_usec", String(m.cpu.usageUsec)]);
      rows.push(["cpu.user_usec", String(m.cpu.userUsec)]);
      rows.push(["cpu.system_usec", String(m.cpu.systemUsec)]);
      rows.push(["cpu.nr_periods", String(m.cpu.nrPeriods)]);
      rows.push(["cpu.nr_throttled", String(m.cpu.nrThrottled)]);
      rows.push(["cpu.throttled_usec", String(m.cpu.throttledUsec)]);
    }
    if (m.memory) {
      rows.push(["memory.usage", String(m.memory.usage)]);
      rows.push(["memory.usage_limit", String(m.memory.usageLimit)]);
      rows.push(["memory.swap_usage", String(m.memory.swapUsage)]);
      rows.push(["memory.swap_limit", String(m.memory.swapLimit)]);
    }
  } else {
    throw new Error(`Cannot print metrics of type "${data.typeUrl}"`);
  }
  if (format === "json") {
    return JSON.stringify(
      json,
      (k, v) => k === "$typeName" ? undefined : typeof v === "bigint" ? Number(v) : v,
      2,
    ) + "\n";
  }
  return formatTable([["ID", "TIMESTAMP"], [id, at?.toISOString() ?? ""]]) + "\n" +
    formatTable([["METRIC", "VALUE"], ...rows]);
}

async function startAction(
  withClient: WithClient,
  id: string,
  o: { detach?: boolean; nullIo?: boolean },
): Promise<void> {
  let code = 0;
  await withClient(async (c) => {
    const { container } = await c.service(Containers).get({ id });
    const spec = container?.spec ? JSON.parse(decoder.decode(container.spec.value)) : {};
    const tty = spec.process?.terminal === true;
    code = await runTask(c, id, { detach: o.detach || o.nullIo, tty });
  });
  if (!o.detach && !o.nullIo) Deno.exit(code);
}

async function attachAction(withClient: WithClient, id: string): Promise<void> {
  let code = 0;
  await withClient(async (c) => {
    const tasks = c.service(Tasks);
    const { process } = await tasks.get({ containerId: id });
    if (!process) throw new Error(`No task "${id}"`);
    if (!process.stdout && !process.stdin) {
      throw new Error(`Cannot attach to task "${id}": it was started without stdio FIFOs`);
    }
    const waited = tasks.wait({ containerId: id }, { timeoutMs: 0 });
    waited.catch(() => {});
    const io = TaskIO.attach({
      stdin: process.stdin,
      stdout: process.stdout,
      stderr: process.terminal ? "" : process.stderr,
      terminal: process.terminal,
    });
    try {
      ({ exitStatus: code } = await waited);
      await io.wait();
    } finally {
      await io.close();
    }
  });
  Deno.exit(code);
}
