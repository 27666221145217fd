/**
 * The shim's `containerd.task.v2.Task` service, as containerd's runc v2 task service
 * (`runtime/v2/runc/task/service.go`): a map of containers by id (one shim can hold several),
 * the Task RPCs over them, exit handling and the task events.
 *
 * Events follow containerd's order: `Start` holds the event lock while it runs `runc start` and
 * publishes `/tasks/start`, and an exit takes the same lock before it records the status and
 * publishes `/tasks/exit`, so an exit never precedes the start it follows. Each process's exit
 * is recorded and published once. Exits of a container already deleted are not published.
 *
 * @module
 */

import { create, toBinary } from "@bufbuild/protobuf";
import { AnySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  TaskCreateSchema,
  TaskDeleteSchema,
  TaskExecAddedSchema,
  TaskExecStartedSchema,
  TaskExitSchema,
  TaskOOMSchema,
  TaskPausedSchema,
  TaskResumedSchema,
  TaskStartSchema,
} from "../api/gen/containerd/events/task_pb.ts";
import { ProcessDetailsSchema } from "../api/gen/containerd/runtime/v2/runc/options/oci_pb.ts";
import type { Task } from "../api/gen/containerd/runtime/v2/task/shim_pb.ts";
import { Status } from "../api/gen/containerd/types/task/task_pb.ts";
import type { Logger } from "../log.ts";
import {
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  notImplemented,
} from "../plugins/errdefs.ts";
import { validateIdentifier } from "../plugins/identifiers.ts";
import type { ServiceImpl } from "../ttrpc/server.ts";
import { VERSION } from "../version.ts";
import { type Cgroup, cgroupFromSpec, loadCgroup, parseMountinfo } from "./cgroups.ts";
import { type Container, createContainer, shouldKillAllOnExit } from "./container.ts";
import { ExecProcess, InitProcess, type Process, type ProcessState } from "./process.ts";
import { type EventPublisher, Topics } from "./publisher.ts";
import type { Exit, Reaper } from "./reaper.ts";
import { cgroupStats } from "./stats.ts";
import { OomWatcher } from "./oom.ts";

/** Options of {@linkcode TaskService}. */
export interface TaskServiceOptions {
  /** The namespace the shim serves (its `-namespace` flag). */
  namespace: string;
  /** The state directory (default runc root: `<stateDir>/runc/<namespace>`). */
  stateDir: string;
  publisher: EventPublisher;
  reaper: Reaper;
  log: Logger;
  /** Called when `Shutdown` finds no container left: the shim should exit. */
  /** No container left and Shutdown was called; `now`: exit without lingering. */
  onShutdown: (now: boolean) => void;
}

/** A FIFO lock (one holder at a time). */
class Mutex {
  #tail: Promise<void> = Promise.resolve();

  async lock(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((resolve) => release = resolve);
    const previous = this.#tail;
    this.#tail = previous.then(() => next);
    await previous;
    return release;
  }
}

const STATUS: Record<ProcessState, Status> = {
  created: Status.CREATED,
  running: Status.RUNNING,
  pausing: Status.PAUSING,
  paused: Status.PAUSED,
  stopped: Status.STOPPED,
  deleted: Status.UNKNOWN,
};

function timestamp(date: Date | undefined) {
  return date === undefined ? undefined : timestampFromDate(date);
}

/** The Task service of one shim. */
export class TaskService {
  readonly #opts: TaskServiceOptions;
  readonly #containers = new Map<string, Container>();
  readonly #creating = new Set<string>();
  readonly #events = new Mutex();
  /** Each container's cgroup, found when its init was created (containerd's `Cgroup()`). */
  readonly #cgroups = new Map<string, Cgroup>();
  readonly #log: Logger;
  /** Publishes `/tasks/oom` when a container's memory cgroup hits its limit (cgroup v1). */
  readonly #oom: OomWatcher;

  constructor(opts: TaskServiceOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.#oom = new OomWatcher(
      (id) => this.#publish(Topics.oom, TaskOOMSchema, { containerId: id }),
      (id, err) => this.#log.warn("cannot watch the container for OOM", { id, error: `${err}` }),
    );
  }

  /** How many containers the shim holds (or is creating). */
  get size(): number {
    return this.#containers.size + this.#creating.size;
  }

  /** The ids of the containers the shim holds. */
  ids(): string[] {
    return [...this.#containers.keys()];
  }

  #container(id: string): Container {
    const c = this.#containers.get(id);
    if (!c) {
      throw notFound(
        `Cannot get task "${id}" in namespace "${this.#opts.namespace}": not created in this shim`,
      );
    }
    return c;
  }

  /** Records the cgroup of a just-created container's init, from `/proc/<pid>/cgroup`. */
  async #loadCgroup(c: Container): Promise<void> {
    if (c.init.pid <= 0) return;
    try {
      this.#cgroups.set(c.id, await loadCgroup(c.init.pid));
    } catch (err) {
      this.#log.warn("cannot find the cgroup of the container", { id: c.id, error: `${err}` });
    }
  }

  /**
   * The container's cgroup: the one recorded at creation, else (its init gone, or the
   * shim unable to read it then) the spec's `linux.cgroupsPath` resolved as runc does.
   */
  async #cgroupOf(c: Container): Promise<Cgroup | undefined> {
    const known = this.#cgroups.get(c.id);
    if (known) return known;
    const state = c.init.state();
    if (c.init.pid > 0 && (state === "created" || state === "running" || state === "paused")) {
      await this.#loadCgroup(c);
      const found = this.#cgroups.get(c.id);
      if (found) return found;
    }
    try {
      const spec = JSON.parse(await Deno.readTextFile(`${c.bundle}/config.json`));
      const path = spec?.linux?.cgroupsPath;
      if (typeof path !== "string") return undefined;
      const [mountinfo, self] = await Promise.all([
        Deno.readTextFile("/proc/self/mountinfo"),
        Deno.readTextFile("/proc/self/cgroup"),
      ]);
      const cg = cgroupFromSpec(path, parseMountinfo(mountinfo), self);
      if (cg) this.#cgroups.set(c.id, cg);
      return cg;
    } catch (err) {
      this.#log.warn("cannot resolve the cgroup of the container", { id: c.id, error: `${err}` });
      return undefined;
    }
  }

  #publish = <S extends Parameters<EventPublisher["publish"]>[1]>(
    topic: string,
    schema: S,
    event: Parameters<EventPublisher["publish"]>[2],
  ) => this.#opts.publisher.publish(topic, schema, event as never);

  /** Records an exit (once), kills the rest of a container without a pid namespace, publishes. */
  #onExit = async (p: Process, exit: Exit): Promise<void> => {
    const release = await this.#events.lock();
    try {
      const container = [...this.#containers.values()].find((c) =>
        c.init === p || c.execs.get(p.id) === p
      );
      if (p instanceof InitProcess && p.exit === null && await shouldKillAllOnExit(p.bundle)) {
        await p.killAll().catch((err) =>
          this.#log.warn("cannot kill the processes left in the container", {
            id: p.id,
            error: `${err}`,
          })
        );
        // the killed processes were re-parented to the shim: collect them
        this.#opts.reaper.sweepSoon();
      }
      if (!p.setExited(exit)) return;
      this.#log.debug("process exited", { id: p.id, pid: exit.pid, status: exit.status });
      if (container === undefined) return;
      this.#publish(Topics.exit, TaskExitSchema, {
        containerId: container.id,
        id: p.id,
        pid: exit.pid,
        exitStatus: exit.status,
        exitedAt: timestampFromDate(exit.exitedAt),
      });
    } finally {
      release();
    }
  };

  /** The ttrpc handlers. */
  handlers(): ServiceImpl<typeof Task> {
    return {
      state: ({ id, execId }) => {
        const c = this.#container(id);
        const p = c.process(execId);
        return {
          id: p.id,
          bundle: c.bundle,
          pid: p.pid,
          status: STATUS[p.state()],
          stdin: p.stdio.stdin,
          stdout: p.stdio.stdout,
          stderr: p.stdio.stderr,
          terminal: p.stdio.terminal,
          exitStatus: p.exitStatus,
          exitedAt: timestamp(p.exit?.exitedAt),
          execId,
        };
      },

      create: async (req) => {
        if (this.#containers.has(req.id) || this.#creating.has(req.id)) {
          throw alreadyExists(`Cannot create task "${req.id}": it already exists in this shim`);
        }
        this.#creating.add(req.id);
        let c: Container;
        try {
          c = await createContainer(req, {
            namespace: this.#opts.namespace,
            stateDir: this.#opts.stateDir,
            reaper: this.#opts.reaper,
            log: this.#log,
            onExit: this.#onExit,
          });
          this.#containers.set(req.id, c);
          await this.#loadCgroup(c);
          // Watch for OOM kills from creation on: a container that blows its limit at once
          // could be killed before Start returned, and its event would be lost.
          const cgroup = this.#cgroups.get(req.id);
          if (cgroup) this.#oom.add(req.id, cgroup);
        } finally {
          this.#creating.delete(req.id);
        }
        this.#publish(Topics.create, TaskCreateSchema, {
          containerId: req.id,
          bundle: req.bundle,
          rootfs: req.rootfs,
          io: {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
          },
          checkpoint: req.checkpoint,
          pid: c.init.pid,
        });
        return { pid: c.init.pid };
      },

      start: async ({ id, execId }) => {
        const c = this.#container(id);
        const p = c.process(execId);
        const release = await this.#events.lock();
        try {
          await p.start();
          if (execId === "") {
            this.#publish(Topics.start, TaskStartSchema, { containerId: id, pid: p.pid });
          } else {
            this.#publish(Topics.execStarted, TaskExecStartedSchema, {
              containerId: id,
              execId,
              pid: p.pid,
            });
          }
        } finally {
          release();
        }
        return { pid: p.pid };
      },

      delete: async ({ id, execId }) => {
        const c = this.#container(id);
        const p = c.process(execId);
        await p.delete();
        if (execId !== "") {
          c.execs.delete(execId);
        } else {
          this.#containers.delete(id);
          this.#cgroups.delete(id);
          this.#oom.remove(id);
          this.#publish(Topics.delete, TaskDeleteSchema, {
            containerId: id,
            pid: p.pid,
            exitStatus: p.exitStatus,
            exitedAt: timestamp(p.exit?.exitedAt),
          });
        }
        return { pid: p.pid, exitStatus: p.exitStatus, exitedAt: timestamp(p.exit?.exitedAt) };
      },

      pids: async ({ id }) => {
        const c = this.#container(id);
        const pids = await c.init.pids();
        return {
          processes: pids.map((pid) => {
            const exec = [...c.execs.values()].find((e) => e.pid === pid);
            return {
              pid,
              info: exec === undefined ? undefined : create(AnySchema, {
                typeUrl: ProcessDetailsSchema.typeName,
                value: toBinary(
                  ProcessDetailsSchema,
                  create(ProcessDetailsSchema, {
                    execId: exec.id,
                  }),
                ),
              }),
            };
          }),
        };
      },

      pause: async ({ id }) => {
        const c = this.#container(id);
        await c.init.pause();
        this.#publish(Topics.paused, TaskPausedSchema, { containerId: id });
        return {};
      },

      resume: async ({ id }) => {
        const c = this.#container(id);
        await c.init.resume();
        this.#publish(Topics.resumed, TaskResumedSchema, { containerId: id });
        return {};
      },

      checkpoint: ({ id }) => {
        this.#container(id);
        throw notImplemented(`Cannot checkpoint task "${id}": checkpointing is not supported yet`);
      },

      kill: async ({ id, execId, signal, all }) => {
        const p = this.#container(id).process(execId);
        await p.kill(signal, all);
        return {};
      },

      exec: (req) => {
        const c = this.#container(req.id);
        validateIdentifier(req.execId, "exec");
        if (c.execs.has(req.execId) || c.reserved.has(req.execId)) {
          throw alreadyExists(`Cannot exec "${req.execId}" in task "${req.id}": id already in use`);
        }
        const state = c.init.state();
        if (state !== "created" && state !== "running") {
          throw failedPrecondition(`Cannot exec in a ${state} container "${req.id}"`);
        }
        if (req.spec === undefined || req.spec.value.length === 0) {
          throw invalidArgument(`Cannot exec "${req.execId}" in task "${req.id}": no process spec`);
        }
        let spec: Record<string, unknown>;
        try {
          spec = JSON.parse(new TextDecoder().decode(req.spec.value));
          if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
            throw new TypeError("not a JSON object");
          }
        } catch (err) {
          throw invalidArgument(
            `Cannot exec "${req.execId}" in task "${req.id}": the process spec is not valid ` +
              `JSON: ${(err as Error).message}`,
          );
        }
        const exec = new ExecProcess({
          id: req.execId,
          parent: c.init,
          spec,
          stdio: {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
          },
          reaper: this.#opts.reaper,
          log: this.#log.child({ id: req.id, exec: req.execId }),
          onExit: this.#onExit,
        });
        c.execs.set(req.execId, exec);
        this.#publish(Topics.execAdded, TaskExecAddedSchema, {
          containerId: req.id,
          execId: req.execId,
        });
        return {};
      },

      resizePty: ({ id, execId, width, height }) => {
        this.#container(id).process(execId).resize(width, height);
        return {};
      },

      closeIO: ({ id, execId, stdin }) => {
        const p = this.#container(id).process(execId);
        if (stdin) p.closeStdin();
        return {};
      },

      update: async ({ id, resources }) => {
        const c = this.#container(id);
        if (resources === undefined || resources.value.length === 0) {
          throw invalidArgument(`Cannot update task "${id}": no resources given`);
        }
        await c.init.update(resources.value);
        return {};
      },

      wait: async ({ id, execId }) => {
        const p = this.#container(id).process(execId);
        const exit = await p.wait();
        return { exitStatus: exit.status, exitedAt: timestampFromDate(exit.exitedAt) };
      },

      stats: async ({ id }) => {
        const c = this.#container(id);
        const cgroup = await this.#cgroupOf(c);
        if (cgroup === undefined) {
          throw notFound(`Cannot get the stats of task "${id}": its cgroup does not exist`);
        }
        try {
          return { stats: await cgroupStats(cgroup) };
        } catch (err) {
          if (err instanceof Deno.errors.NotFound) {
            throw notFound(`Cannot get the stats of task "${id}": its cgroup does not exist`);
          }
          throw err;
        }
      },

      connect: ({ id }) => ({
        shimPid: Deno.pid,
        taskPid: this.#containers.get(id)?.init.pid ?? 0,
        version: VERSION,
      }),

      shutdown: (req) => {
        if (this.size === 0) this.#opts.onShutdown(req.now);
        return {};
      },
    };
  }
}
