/**
 * The restart monitor, as containerd's `runtime/restart/monitor` (with 1.7's policies): the
 * containers labelled `containerd.io/restart.status=running` are kept running. Every interval,
 * after the daemon starts and after each task exit, each namespace's labelled containers are
 * reconciled: a missing or stopped task is deleted and a new one created and started from the
 * container (its snapshot's mounts, or the spec's root for a container without a snapshot),
 * its stdio going to the log path (or `file://` log URI), else nowhere. `stopped` kills the
 * task. A container that cannot be started (its snapshot gone, a bad label) is reported once
 * and left alone until the container is updated.
 *
 * @module
 */

import { Status } from "../../api/gen/containerd/types/task/task_pb.ts";
import type { Logger } from "../../log.ts";
import { invalidArgument, isNotFound, notFound } from "../errdefs.ts";
import type { Container } from "../containers/store.ts";

/** The desired status: `running` or `stopped`. */
export const STATUS_LABEL = "containerd.io/restart.status";
/** The restart policy: `always` (default), `on-failure[:N]`, `unless-stopped`, `no`. */
export const POLICY_LABEL = "containerd.io/restart.policy";
/** How often the container was restarted (written by the monitor). */
export const COUNT_LABEL = "containerd.io/restart.count";
/** `true` when the container was stopped on purpose (`unless-stopped` then leaves it). */
export const EXPLICITLY_STOPPED_LABEL = "containerd.io/restart.explicitly-stopped";
/** A log URI for the task's stdio: `file:///path` (or `binary://…`, not supported yet). */
export const LOG_URI_LABEL = "containerd.io/restart.loguri";
/** A log file for the task's stdio (deprecated in containerd for the log URI). */
export const LOG_PATH_LABEL = "containerd.io/restart.logpath";

/** A restart policy. */
export interface Policy {
  name: "always" | "on-failure" | "unless-stopped" | "no";
  /** For on-failure: the most restarts, 0 for no limit. */
  maxRetries: number;
}

/** Parses a policy label as containerd's `restart.NewPolicy` (`""` means always). */
export function parsePolicy(text: string): Policy {
  const [name, ...rest] = text.split(":");
  switch (name) {
    case "":
    case "always":
    case "no":
    case "unless-stopped":
      if (rest.length > 0) {
        throw invalidArgument(`Restart policy "${name}" does not take a max retry count`);
      }
      return { name: name === "" ? "always" : name, maxRetries: 0 };
    case "on-failure": {
      if (rest.length === 0) return { name, maxRetries: 0 };
      const n = rest.join(":");
      if (!/^\d+$/.test(n)) throw invalidArgument(`Invalid max retry count "${n}"`);
      return { name, maxRetries: Number(n) };
    }
    default:
      throw invalidArgument(
        `Restart policy "${text}" is not supported (always, on-failure[:N], unless-stopped, no)`,
      );
  }
}

/** Whether a task that exited with `exitStatus` is restarted (containerd's `Reconcile`). */
export function shouldRestart(
  policy: Policy,
  exitStatus: number,
  labels: Record<string, string>,
): boolean {
  switch (policy.name) {
    case "always":
      return true;
    case "on-failure": {
      const raw = labels[COUNT_LABEL] ?? "";
      if (raw !== "" && !/^\d+$/.test(raw)) return false;
      const count = raw === "" ? 0 : Number(raw);
      return exitStatus !== 0 && (policy.maxRetries === 0 || count < policy.maxRetries);
    }
    case "unless-stopped":
      return labels[EXPLICITLY_STOPPED_LABEL]?.toLowerCase() !== "true";
    case "no":
      return false;
  }
}

/** The stdio target of a restarted task: a `file://` URI, or "" for none. */
export function logTarget(labels: Record<string, string>): string {
  const uri = labels[LOG_URI_LABEL] ?? "";
  if (uri !== "") {
    const m = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(uri);
    if (m?.[1] === "file") return uri;
    if (m?.[1] === "binary") {
      throw invalidArgument(`Log URI "${uri}": binary:// logging is not supported yet`);
    }
    throw invalidArgument(`Log URI "${uri}": only file:// is supported`);
  }
  const path = labels[LOG_PATH_LABEL] ?? "";
  if (path === "") return "";
  if (!path.startsWith("/")) throw invalidArgument(`Log path "${path}" is not absolute`);
  return `file://${path.split("/").map(encodeURIComponent).join("/")}`;
}

/** A mount of a container's rootfs. */
export interface RootMount {
  type: string;
  source: string;
  options: string[];
}

/** A task as the monitor sees it. */
export interface TaskView {
  status: Status;
  exitStatus: number;
}

/** What the monitor drives (in-process plugin instances in the daemon). */
export interface MonitorBackend {
  namespaces(): string[];
  containers(ns: string): Container[];
  /** Sets (or with "" removes) labels of a container. */
  setLabels(ns: string, id: string, labels: Record<string, string>): void;
  /** The task's state, undefined when the container has none. */
  task(ns: string, id: string): Promise<TaskView | undefined>;
  /** SIGKILLs every process of the task, waits for it to stop and deletes it. */
  kill(ns: string, id: string): Promise<void>;
  deleteTask(ns: string, id: string): Promise<void>;
  /** The mounts of the container's snapshot; NotFound when it is gone. */
  mounts(ns: string, c: Container): Promise<RootMount[]>;
  /** Creates and starts a task; returns its pid. */
  start(ns: string, c: Container, rootfs: RootMount[], stdio: string): Promise<number>;
}

/** How long a new container without a task is left to the client that created it. */
const NEW_CONTAINER_GRACE_MS = 5000;

/** Consecutive start failures after which a container is given up (until it is updated). */
const MAX_FAILURES = 3;

interface Trouble {
  /** The container's update time when the trouble was seen. */
  updatedAt: number;
  failures: number;
  gaveUp: boolean;
}

/** The reconcile loop. */
export class RestartMonitor {
  readonly #backend: MonitorBackend;
  readonly #log: Logger;
  readonly #intervalMs: number;
  /** Last exit status seen per `ns/id` (from exit events). */
  readonly #exits = new Map<string, number>();
  readonly #trouble = new Map<string, Trouble>();
  #timer?: ReturnType<typeof setTimeout>;
  #running?: Promise<void>;
  #again = false;
  #closed = false;

  constructor(backend: MonitorBackend, intervalMs: number, log: Logger) {
    this.#backend = backend;
    this.#intervalMs = intervalMs > 0 ? intervalMs : 10_000;
    this.#log = log;
  }

  /** Starts the periodic loop (the first pass runs after `firstDelayMs`). */
  start(firstDelayMs = 0): void {
    this.#schedule(firstDelayMs);
  }

  #schedule(ms: number): void {
    if (this.#closed) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.trigger().finally(() => {
        if (this.#timer === undefined) this.#schedule(this.#intervalMs);
      });
    }, ms);
  }

  /** Records a task exit and reconciles soon. */
  exited(ns: string, id: string, exitStatus: number): void {
    this.#exits.set(`${ns}/${id}`, exitStatus);
    if (!this.#closed) this.trigger().catch(() => {});
  }

  /** Runs a reconcile pass now (or right after the one running). */
  trigger(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      try {
        do {
          this.#again = false;
          await this.reconcile();
        } while (this.#again && !this.#closed);
      } finally {
        this.#running = undefined;
      }
    })();
    return this.#running;
  }

  /** One pass over every namespace. */
  async reconcile(): Promise<void> {
    let namespaces: string[];
    try {
      namespaces = this.#backend.namespaces();
    } catch (err) {
      this.#log.error(`reconcile: ${(err as Error).message}`);
      return;
    }
    await Promise.all(namespaces.map(async (ns) => {
      let containers: Container[];
      try {
        containers = this.#backend.containers(ns).filter((c) => STATUS_LABEL in c.labels);
      } catch (err) {
        this.#log.error(`monitor for changes: ${(err as Error).message}`, { namespace: ns });
        return;
      }
      await Promise.all(containers.map((c) => this.#one(ns, c)));
    }));
  }

  async #one(ns: string, c: Container): Promise<void> {
    if (this.#closed) return;
    const key = `${ns}/${c.id}`;
    const log = this.#log.child({ namespace: ns, id: c.id });
    const desired = c.labels[STATUS_LABEL];
    const updatedAt = c.updatedAt.getTime();
    let trouble = this.#trouble.get(key);
    if (trouble && trouble.updatedAt !== updatedAt) {
      this.#trouble.delete(key);
      trouble = undefined;
    }
    if (trouble?.gaveUp) return;
    const fail = (err: unknown, final: boolean) => {
      const t = trouble ?? { updatedAt, failures: 0, gaveUp: false };
      this.#trouble.set(key, t);
      t.failures++;
      t.gaveUp = final || t.failures >= MAX_FAILURES;
      const msg = (err as Error).message ?? String(err);
      if (t.gaveUp) {
        log.warn(`restart monitor gives up on the container until it is updated: ${msg}`);
      } else log.warn(`restart failed (attempt ${t.failures}): ${msg}`);
    };
    try {
      const task = await this.#backend.task(ns, c.id);
      if (desired === "stopped") {
        if (task && task.status !== Status.STOPPED) {
          log.info("restart monitor: stopping the task (status label is stopped)");
          await this.#backend.kill(ns, c.id);
        }
        return;
      }
      if (desired !== "running") return;
      if (task) {
        // Running, or between create and start (a client starting it), or paused: leave it.
        if (task.status !== Status.STOPPED && task.status !== Status.UNKNOWN) return;
      } else if (
        !this.#exits.has(key) && Date.now() - c.createdAt.getTime() < NEW_CONTAINER_GRACE_MS
      ) {
        return; // just created: its client is about to create the task (`ctr run -d`)
      }
      let policy: Policy;
      try {
        policy = parsePolicy(c.labels[POLICY_LABEL] ?? "");
      } catch (err) {
        fail(err, true);
        return;
      }
      // No task (e.g. it died while the daemon was down): the last exit seen, else a failure.
      const exitStatus = task?.exitStatus ?? this.#exits.get(key) ?? 255;
      if (!shouldRestart(policy, exitStatus, c.labels)) return;
      let stdio: string;
      try {
        stdio = logTarget(c.labels);
      } catch (err) {
        fail(err, true);
        return;
      }
      let rootfs: RootMount[] = [];
      if (c.snapshotKey) {
        try {
          rootfs = await this.#backend.mounts(ns, c);
        } catch (err) {
          if (isNotFound(err)) {
            fail(
              notFound(
                `the snapshot "${c.snapshotKey}" (${c.snapshotter}) of the container is gone: ${
                  (err as Error).message
                }`,
              ),
              true,
            );
            return;
          }
          throw err;
        }
      }
      if (task) await this.#backend.deleteTask(ns, c.id);
      if (this.#closed) return;
      const pid = await this.#backend.start(ns, c, rootfs, stdio);
      const count = Number(c.labels[COUNT_LABEL] ?? "0") || 0;
      this.#backend.setLabels(ns, c.id, { [COUNT_LABEL]: String(count + 1) });
      this.#exits.delete(key);
      // Our own label update changes updatedAt; keep no trouble across a success.
      this.#trouble.delete(key);
      log.info("restart monitor: restarted the task", {
        pid,
        count: count + 1,
        policy: policy.name,
      });
    } catch (err) {
      if (isNotFound(err) && !this.#exists(ns, c.id)) return; // removed meanwhile
      fail(err, false);
    }
  }

  #exists(ns: string, id: string): boolean {
    try {
      return this.#backend.containers(ns).some((c) => c.id === id);
    } catch {
      return false;
    }
  }

  /** Stops the loop (running tasks are left alone). */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#running?.catch(() => {});
  }
}
