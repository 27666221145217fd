/**
 * `tainerd containers …` and `tainerd tasks …`: list, inspect and remove containers; list,
 * kill, remove and exec into tasks — with ctr's flags and output.
 *
 * @module
 */

import { Command } from "commander";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Containers } from "../api/gen/containerd/services/containers/v1/containers_pb.ts";
import { Tasks } from "../api/gen/containerd/services/tasks/v1/tasks_pb.ts";
import { Status } from "../api/gen/containerd/types/task/task_pb.ts";
import type { TainerdClient } from "../client/client.ts";
import { isNotFound } from "../plugins/errdefs.ts";
import { signalNumber } from "../sys/libc.ts";
import { withEnv } from "../oci/spec.ts";
import { deleteContainer, runAttached } from "./run.ts";
import { formatTable } from "./table.ts";

/** Runs `fn` with a client of the daemon the global options name. */
export type WithClient = (fn: (c: TainerdClient) => Promise<void>) => Promise<void>;

/** The type URL containerd stores process specs under. */
export const PROCESS_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process";

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
    .description("manage containers");
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
