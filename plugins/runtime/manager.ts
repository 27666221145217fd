/**
 * The runtime v2 manager, as containerd's `runtime/v2`: one bundle per task under
 * `<state>/io.containerd.runtime.v2.task/<ns>/<id>`, a shim started for it with containerd's
 * shim v2 contract (`shim … start` prints the ttrpc address), and `containerd.task.v2.Task`
 * spoken to the shim over ttrpc. On daemon start it reconnects to the shims of existing
 * bundles; shims that are gone are cleaned up with their `delete` action and their exit is
 * published.
 *
 * Containers of one group (spec annotation `io.containerd.runc.v2.group` or
 * `io.kubernetes.cri.sandbox-id`) share one shim: their tasks share the shim's address and one
 * ttrpc connection, released when the group's last task is deleted; a lost connection marks
 * every task of that shim dead.
 *
 * The shim is tainerd's own (`tainerd shim …`) for the runc runtimes, or an external shim
 * binary (containerd's `containerd-shim-runc-v2`, …) resolved as containerd does (see
 * `binary.ts`); an external shim is run exactly as containerd runs it (same flags, `GOMAXPROCS`,
 * `TTRPC_ADDRESS`, options on stdin, the `log` FIFO in the bundle) and its path is kept in the
 * bundle's `shim-binary-path` for the reconnect after a daemon restart.
 *
 * @module
 */

import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { AnySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type CreateTaskRequestSchema,
  DeleteResponseSchema,
  Task,
} from "../../api/gen/containerd/runtime/v2/task/shim_pb.ts";
import { TaskDeleteSchema, TaskExitSchema } from "../../api/gen/containerd/events/task_pb.ts";
import type { MountSchema } from "../../api/gen/containerd/types/mount_pb.ts";
import type { Logger } from "../../log.ts";
import {
  launchShim,
  selfCommand,
  SHARED_SHIM_GROUP,
  SHIM_IDLE_TIMEOUT_ENV,
} from "../../shim/main.ts";
import { parseGoDuration } from "../gc/scheduler.ts";
import { OptionsSchema } from "../../api/gen/containerd/runtime/v2/runc/options/oci_pb.ts";
import { cloexecAll } from "../../sys/libc.ts";
import { createTtrpcClient, TtrpcClient, type TtrpcServiceClient } from "../../ttrpc/client.ts";
import { alreadyExists, failedPrecondition, internal, notFound } from "../errdefs.ts";
import type { Exchange } from "../events/exchange.ts";
import { validateIdentifier } from "../identifiers.ts";
import { defaultRuntimeConfig, resolveShimBinary, type RuntimeConfig } from "./binary.ts";
import { ShimLog } from "./shim_log.ts";

/** The bundle file naming an external shim binary, as containerd 1.6's. */
const SHIM_BINARY_FILE = "shim-binary-path";

/** A protobuf Any. */
export interface AnyValue {
  typeUrl: string;
  value: Uint8Array;
}

/** What a task is created from. */
export interface CreateOptions {
  /** The OCI spec as JSON bytes (the container's spec Any value). */
  spec: Uint8Array;
  rootfs: MessageInitShape<typeof MountSchema>[];
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  /** The runtime name, e.g. `io.containerd.runc.v2`. */
  runtime: string;
  /** The container's runtime options (sent to the shim's `start` on stdin). */
  runtimeOptions?: AnyValue;
  /** Options of this task's create (runc Options). */
  taskOptions?: AnyValue;
}

/** A running shim serving one task (a grouped shim serves several). */
export class ShimTask {
  readonly namespace: string;
  readonly id: string;
  readonly bundle: string;
  readonly address: string;
  readonly client: TtrpcClient;
  readonly task: TtrpcServiceClient<typeof Task>;
  /** The init process's pid, as the shim's Create reported it (0 for reconnected tasks). */
  pid = 0;
  /** The external shim binary, or null for tainerd's own shim. */
  readonly binary: string | null;
  /** The drained `log` FIFO of an external shim. */
  shimLog?: ShimLog;
  /** Set once the task is deleted or its shim is gone. */
  closed = false;
  readonly #release: () => void;
  #released = false;

  constructor(
    namespace: string,
    id: string,
    bundle: string,
    address: string,
    client: TtrpcClient,
    binary: string | null = null,
    release: () => void = () => client.close(),
  ) {
    this.namespace = namespace;
    this.id = id;
    this.bundle = bundle;
    this.address = address;
    this.client = client;
    this.binary = binary;
    this.task = createTtrpcClient(Task, client);
    this.#release = release;
  }

  /**
   * Lets go of the shim (it keeps running) and closes the log FIFO; the connection, shared by
   * the tasks of one shim, closes with its last task.
   */
  close(): void {
    this.closed = true;
    this.shimLog?.close();
    if (this.#released) return;
    this.#released = true;
    this.#release();
  }
}

/** One ttrpc connection to a shim, shared by the tasks it serves. */
interface ShimConnection {
  address: string;
  client: Promise<TtrpcClient>;
  tasks: Set<ShimTask>;
  /** Tasks between looking the connection up and joining it: it must not close meanwhile. */
  joining: number;
}

/** Options for {@link RuntimeManager}. */
export interface RuntimeManagerOptions {
  /** `<root>/io.containerd.runtime.v2.task`. */
  root: string;
  /** `<state>/io.containerd.runtime.v2.task`. */
  state: string;
  /** The daemon's state directory (shims put their sockets under it). */
  daemonState: string;
  /** The daemon's gRPC address (passed as `-address`). */
  address: string;
  /** The daemon's ttrpc address (shims forward events there). */
  ttrpcAddress: string;
  events: Exchange;
  log: Logger;
  /** The plugin config (shim binaries per runtime); default: tainerd's shim for runc. */
  config?: RuntimeConfig;
  /** How long a shim may take to answer on reconnect. */
  loadTimeoutMs?: number;
}

const decoder = new TextDecoder();

/** Tasks and their shims. */
export class RuntimeManager {
  readonly #opts: RuntimeManagerOptions;
  readonly #tasks = new Map<string, ShimTask>();
  readonly #creating = new Set<string>();
  /** Connections by shim address. */
  readonly #conns = new Map<string, ShimConnection>();
  /** Shared shims left with no task (kept warm): shut down with the daemon. */
  readonly #idle = new Set<string>();

  constructor(opts: RuntimeManagerOptions) {
    this.#opts = opts;
  }

  /**
   * The external shim binary serving `runtime`, or null for tainerd's own shim.
   *
   * @throws {TainerdError} NotFound when the runtime's shim binary does not exist
   */
  resolve(runtime: string): string | null {
    return resolveShimBinary(runtime, this.#opts.config ?? defaultRuntimeConfig());
  }

  #key(ns: string, id: string): string {
    return `${ns}/${id}`;
  }

  /** The bundle directory of a task. */
  bundlePath(ns: string, id: string): string {
    return `${this.#opts.state}/${ns}/${id}`;
  }

  /** The task; NotFound when it has none. */
  get(ns: string, id: string): ShimTask {
    const t = this.#tasks.get(this.#key(ns, id));
    if (!t) throw notFound(`No task for container "${id}" in namespace "${ns}"`);
    return t;
  }

  /** Whether the container has a task. */
  has(ns: string, id: string): boolean {
    return this.#tasks.has(this.#key(ns, id));
  }

  /** The tasks of a namespace. */
  list(ns: string): ShimTask[] {
    return [...this.#tasks.values()].filter((t) => t.namespace === ns);
  }

  /** Every task. */
  all(): ShimTask[] {
    return [...this.#tasks.values()];
  }

  /** Creates the bundle, starts a shim and creates the task in it. */
  async create(ns: string, id: string, opts: CreateOptions): Promise<ShimTask> {
    validateIdentifier(ns, "namespace");
    validateIdentifier(id, "container");
    const key = this.#key(ns, id);
    if (this.#tasks.has(key) || this.#creating.has(key)) {
      throw alreadyExists(`Container "${id}" in namespace "${ns}" already has a task`);
    }
    const binary = this.resolve(opts.runtime);
    this.#creating.add(key);
    const bundle = this.bundlePath(ns, id);
    let shim: ShimTask | undefined;
    let shimLog: ShimLog | undefined;
    try {
      await this.#newBundle(ns, id, opts.spec);
      if (binary !== null) {
        await Deno.writeTextFile(`${bundle}/${SHIM_BINARY_FILE}`, binary, { mode: 0o600 });
        shimLog = this.#openShimLog(ns, id, bundle);
      }
      const address = await this.#startShim(binary, ns, id, bundle, opts.runtimeOptions);
      this.#idle.delete(address);
      shim = await this.#connect(ns, id, bundle, address, binary);
      shim.shimLog = shimLog;
      const req: MessageInitShape<typeof CreateTaskRequestSchema> = {
        id,
        bundle,
        rootfs: opts.rootfs,
        terminal: opts.terminal,
        stdin: opts.stdin,
        stdout: opts.stdout,
        stderr: opts.stderr,
        options: opts.taskOptions ?? opts.runtimeOptions,
      };
      shim.pid = (await shim.task.create(req)).pid;
      this.#tasks.set(key, shim);
      return shim;
    } catch (err) {
      if (shim) {
        shim.closed = true;
        await shim.task.shutdown({ id, now: true }).catch(() => {});
        shim.close();
      }
      await this.#runShimDelete(binary, ns, id, bundle).catch(() => {});
      shimLog?.close();
      await this.#removeBundle(ns, id);
      throw err;
    } finally {
      this.#creating.delete(key);
    }
  }

  /** Deletes the task: the shim's Delete, its shutdown, then the bundle. */
  async delete(
    ns: string,
    id: string,
  ): Promise<{ pid: number; exitStatus: number; exitedAt?: Date }> {
    const t = this.get(ns, id);
    const res = await t.task.delete({ id });
    t.closed = true;
    this.#tasks.delete(this.#key(ns, id));
    // A grouped shim exits only once it serves no container any more (a shared one may stay
    // warm for the next container).
    await t.task.shutdown({ id }).catch(() => {});
    const last = ![...this.#tasks.values()].some((o) => o.address === t.address);
    if (last && t.binary === null) this.#idle.add(t.address);
    t.close();
    await this.#removeBundle(ns, id);
    return {
      pid: res.pid,
      exitStatus: res.exitStatus,
      exitedAt: res.exitedAt
        ? new Date(Number(res.exitedAt.seconds) * 1000 + res.exitedAt.nanos / 1e6)
        : undefined,
    };
  }

  async #newBundle(ns: string, id: string, spec: Uint8Array): Promise<void> {
    const bundle = this.bundlePath(ns, id);
    const work = `${this.#opts.root}/${ns}/${id}`;
    await Deno.mkdir(`${this.#opts.state}/${ns}`, { recursive: true, mode: 0o711 });
    await Deno.mkdir(`${this.#opts.root}/${ns}`, { recursive: true, mode: 0o711 });
    try {
      await Deno.mkdir(bundle, { mode: 0o700 });
    } catch (err) {
      if (err instanceof Deno.errors.AlreadyExists) {
        throw alreadyExists(`The bundle of container "${id}" in namespace "${ns}" exists`);
      }
      throw err;
    }
    await Deno.mkdir(work, { recursive: true, mode: 0o711 });
    await Deno.symlink(work, `${bundle}/work`);
    await Deno.mkdir(`${bundle}/rootfs`, { mode: 0o711 });
    await Deno.writeFile(`${bundle}/config.json`, spec, { mode: 0o666 });
  }

  async #removeBundle(ns: string, id: string): Promise<void> {
    const bundle = this.bundlePath(ns, id);
    // The rootfs must not be mounted any more: never delete through a mount.
    try {
      const mounts = await Deno.readTextFile("/proc/self/mountinfo");
      if (mounts.includes(` ${bundle}/rootfs `)) {
        this.#opts.log.warn("bundle rootfs still mounted; leaving the bundle", { bundle });
        return;
      }
    } catch {
      // No mountinfo: go on.
    }
    await Deno.remove(bundle, { recursive: true }).catch(() => {});
    await Deno.remove(`${this.#opts.root}/${ns}/${id}`, { recursive: true }).catch(() => {});
  }

  #openShimLog(ns: string, id: string, bundle: string): ShimLog | undefined {
    try {
      return ShimLog.open(bundle, this.#opts.log.child({ namespace: ns, id, source: "shim" }));
    } catch (err) {
      this.#opts.log.warn("cannot open the shim log FIFO", {
        namespace: ns,
        id,
        error: (err as Error).message,
      });
      return undefined;
    }
  }

  /** The shim command line, as containerd's `shim.Command` for an external binary. */
  #shimArgs(
    binary: string | null,
    ns: string,
    id: string,
    extra: string[],
  ): { command: string; args: string[] } {
    const self = binary === null ? selfCommand() : { command: binary, args: [] };
    return {
      command: self.command,
      args: [
        ...self.args,
        ...(binary === null ? ["shim"] : []),
        "-namespace",
        ns,
        "-address",
        this.#opts.address,
        "-publish-binary",
        Deno.execPath(),
        "-id",
        id,
        ...extra,
      ],
    };
  }

  #shimEnv(binary: string | null): Record<string, string> {
    // containerd's environment for a shim (Go shims: at most two OS threads).
    if (binary !== null) return { TTRPC_ADDRESS: this.#opts.ttrpcAddress, GOMAXPROCS: "2" };
    // Shim sockets live in <dir>/s/<64 hex>; a unix socket path has at most 106 bytes, so a
    // long state directory falls back to /run/tainerd (the hash keeps daemons apart).
    // runc's state always stays under this daemon's state directory.
    const env: Record<string, string> = {
      TTRPC_ADDRESS: this.#opts.ttrpcAddress,
      TAINERD_STATE_DIR: this.#opts.daemonState,
      // A shim handles little traffic: a 1 MiB young generation (V8's default is 16) takes
      // ~6 MiB off every shim's resident memory. An operator's own (non-empty) flags win: an
      // empty DENO_V8_FLAGS would make deno refuse to start.
      DENO_V8_FLAGS: Deno.env.get("DENO_V8_FLAGS") || SHIM_V8_FLAGS,
    };
    if (`${this.#opts.daemonState}/s/`.length + 64 > 106) env.TAINERD_SOCKET_DIR = "/run/tainerd";
    return env;
  }

  async #startShim(
    binary: string | null,
    ns: string,
    id: string,
    bundle: string,
    runtimeOptions?: AnyValue,
  ): Promise<string> {
    // The shim outlives the daemon: it must not inherit the daemon's sockets.
    cloexecAll();
    if (binary === null) {
      // tainerd's own shim: do the `start` action's work in-process (one program start per
      // container instead of two).
      const env = this.#shimEnv(null);
      let shimCgroup = "";
      if (runtimeOptions && runtimeOptions.typeUrl.endsWith(OptionsSchema.typeName)) {
        shimCgroup = fromBinary(OptionsSchema, runtimeOptions.value).shimCgroup;
      }
      const config = this.#opts.config ?? defaultRuntimeConfig();
      if (config.shim_group === "namespace") {
        env[SHIM_IDLE_TIMEOUT_ENV] = String(parseGoDuration(config.shim_idle_timeout));
      }
      try {
        return await launchShim({
          namespace: ns,
          id,
          address: this.#opts.address,
          publishBinary: Deno.execPath(),
          bundle,
          shimCgroup,
          defaultGroup: config.shim_group === "namespace" ? SHARED_SHIM_GROUP : undefined,
          env,
          socketDir: env.TAINERD_SOCKET_DIR ?? env.TAINERD_STATE_DIR,
        }, this.#opts.log.child({ namespace: ns, id }));
      } catch (err) {
        throw internal(
          `Cannot start the shim of container "${id}": ${(err as Error).message}`,
          { cause: err },
        );
      }
    }
    const { command, args } = this.#shimArgs(binary, ns, id, ["start"]);
    const child = new Deno.Command(command, {
      args,
      cwd: bundle,
      env: this.#shimEnv(binary),
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = child.stdin.getWriter();
    if (runtimeOptions) {
      await w.write(toBinary(AnySchema, create(AnySchema, runtimeOptions)));
    }
    await w.close();
    const out = await child.output();
    const stdout = decoder.decode(out.stdout).trim();
    if (!out.success) {
      const msg = (decoder.decode(out.stderr).trim() || stdout).split("\n").pop() ?? "";
      throw internal(`Cannot start the shim of container "${id}": ${msg || `exit ${out.code}`}`);
    }
    if (!stdout.startsWith("unix://")) {
      throw internal(`The shim of container "${id}" printed no address: ${stdout}`);
    }
    return stdout;
  }

  async #connect(
    ns: string,
    id: string,
    bundle: string,
    address: string,
    binary: string | null,
  ): Promise<ShimTask> {
    let conn = this.#conns.get(address);
    if (!conn) {
      const c: ShimConnection = {
        address,
        client: TtrpcClient.connect(address.slice("unix://".length)),
        tasks: new Set(),
        joining: 0,
      };
      conn = c;
      this.#conns.set(address, c);
      c.client.then(
        (client) => client.done.then(() => this.#lost(c)),
        () => {
          if (this.#conns.get(address) === c) this.#conns.delete(address);
        },
      );
    }
    const c = conn;
    // The last task of the connection may leave while this one waits for it: the connection
    // closes only when no task uses it and none is joining (else a new task was handed a
    // client that was being closed, and its calls failed "closed by the client").
    const closeIfUnused = (client: TtrpcClient) => {
      if (c.tasks.size > 0 || c.joining > 0) return;
      if (this.#conns.get(address) === c) this.#conns.delete(address);
      client.close();
    };
    c.joining++;
    let client: TtrpcClient;
    try {
      client = await c.client;
    } finally {
      c.joining--;
    }
    if (client.closed) {
      closeIfUnused(client);
      throw internal(`The connection to the shim of "${id}" is closed`);
    }
    const t: ShimTask = new ShimTask(ns, id, bundle, address, client, binary, () => {
      c.tasks.delete(t);
      closeIfUnused(client);
    });
    c.tasks.add(t);
    return t;
  }

  /** A shim connection ended: every live task it served is dead; clean each bundle. */
  #lost(c: ShimConnection): void {
    if (this.#conns.get(c.address) === c) this.#conns.delete(c.address);
    for (const t of [...c.tasks]) {
      if (t.closed) continue;
      const key = this.#key(t.namespace, t.id);
      // A task being created or loaded is not registered yet: its caller cleans it up.
      const registered = this.#tasks.get(key) === t;
      t.close();
      if (!registered) continue;
      this.#opts.log.warn("shim connection lost", { namespace: t.namespace, id: t.id });
      this.#tasks.delete(key);
      void this.#cleanupDeadShim(t.binary, t.namespace, t.id, t.bundle);
    }
  }

  /** Runs the shim's `delete` action on a bundle and parses its DeleteResponse. */
  async #runShimDelete(binary: string | null, ns: string, id: string, bundle: string) {
    const { command, args } = this.#shimArgs(binary, ns, id, ["-bundle", bundle, "delete"]);
    const out = await new Deno.Command(command, {
      args,
      cwd: bundle,
      env: this.#shimEnv(binary),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw internal(
        `The shim delete of container "${id}" failed: ${decoder.decode(out.stderr).trim()}`,
      );
    }
    return fromBinary(DeleteResponseSchema, out.stdout);
  }

  /** A shim died: clean its bundle, publish the exit and the delete. */
  async #cleanupDeadShim(
    binary: string | null,
    namespace: string,
    id: string,
    bundle: string,
  ): Promise<void> {
    const t = { namespace, id, bundle };
    let pid = 0;
    let status = 255;
    let exitedAt = new Date();
    try {
      const res = await this.#runShimDelete(binary, t.namespace, t.id, t.bundle);
      pid = res.pid;
      status = res.exitStatus;
      if (res.exitedAt) {
        exitedAt = new Date(Number(res.exitedAt.seconds) * 1000 + res.exitedAt.nanos / 1e6);
      }
    } catch (err) {
      this.#opts.log.warn("cleaning up a dead shim failed", {
        namespace: t.namespace,
        id: t.id,
        error: (err as Error).message,
      });
    }
    await this.#removeBundle(t.namespace, t.id);
    const ts = timestampFromDate(exitedAt);
    this.#opts.events.publish(
      t.namespace,
      "/tasks/exit",
      TaskExitSchema,
      create(TaskExitSchema, {
        containerId: t.id,
        id: t.id,
        pid,
        exitStatus: status,
        exitedAt: ts,
      }),
    );
    this.#opts.events.publish(
      t.namespace,
      "/tasks/delete",
      TaskDeleteSchema,
      create(TaskDeleteSchema, {
        containerId: t.id,
        id: t.id,
        pid,
        exitStatus: status,
        exitedAt: ts,
      }),
    );
  }

  /**
   * Reconnects to the shims of the bundles left by a previous daemon, in parallel with short
   * timeouts; bundles whose shim is gone are cleaned up (exit published).
   */
  async load(): Promise<void> {
    const timeout = this.#opts.loadTimeoutMs ?? 5000;
    const jobs: Promise<void>[] = [];
    let nsDirs: Deno.DirEntry[] = [];
    try {
      nsDirs = [...Deno.readDirSync(this.#opts.state)].filter((e) => e.isDirectory);
    } catch {
      return;
    }
    for (const nsDir of nsDirs) {
      const ns = nsDir.name;
      for (const e of Deno.readDirSync(`${this.#opts.state}/${ns}`)) {
        if (!e.isDirectory) continue;
        const id = e.name;
        jobs.push(this.#loadOne(ns, id, timeout));
      }
    }
    await Promise.all(jobs);
  }

  async #loadOne(ns: string, id: string, timeoutMs: number): Promise<void> {
    const bundle = this.bundlePath(ns, id);
    let address = "";
    try {
      address = (await Deno.readTextFile(`${bundle}/address`)).trim();
    } catch {
      // No address: the shim never came up.
    }
    let binary: string | null = null;
    try {
      binary = (await Deno.readTextFile(`${bundle}/${SHIM_BINARY_FILE}`)).trim() || null;
    } catch {
      // tainerd's own shim
    }
    const log = this.#opts.log.child({ namespace: ns, id });
    if (address) {
      try {
        // Bundles of one grouped shim share its connection (see #connect).
        const connecting = this.#connect(ns, id, bundle, address, binary);
        const t = await withTimeout(
          connecting,
          timeoutMs,
          `connect to the shim of "${id}"`,
        ).catch((err) => {
          connecting.then((late) => late.close(), () => {});
          throw err;
        });
        try {
          await t.task.connect({ id }, { timeoutMs });
          if (t.closed) throw internal(`The connection to the shim of "${id}" was lost`);
          if (binary !== null) t.shimLog = this.#openShimLog(ns, id, bundle);
          this.#tasks.set(this.#key(ns, id), t);
          log.info("reconnected to shim", binary === null ? {} : { binary });
          return;
        } catch (err) {
          t.close();
          throw err;
        }
      } catch (err) {
        log.warn(`shim unreachable, cleaning up: ${(err as Error).message}`);
      }
    }
    await this.#cleanupDeadShim(binary, ns, id, bundle);
  }

  /**
   * Closes connections to every shim (the shims and their containers keep running); shared
   * shims kept warm with no container are told to exit now.
   */
  async close(): Promise<void> {
    await Promise.all([...this.#idle].map(async (address) => {
      if ([...this.#tasks.values()].some((t) => t.address === address)) return;
      try {
        const client = await withTimeout(
          TtrpcClient.connect(address.slice("unix://".length)),
          1000,
          "connect to an idle shim",
        );
        try {
          await createTtrpcClient(Task, client).shutdown({ id: "", now: true }, {
            timeoutMs: 1000,
          }).catch(() => {});
        } finally {
          client.close();
        }
      } catch {
        // Gone already.
      }
    }));
    this.#idle.clear();
    for (const t of this.#tasks.values()) t.close();
    this.#tasks.clear();
    for (const c of this.#conns.values()) c.client.then((client) => client.close(), () => {});
    this.#conns.clear();
  }
}

/** V8 flags of tainerd's own shims (through `DENO_V8_FLAGS`) unless the daemon has some. */
export const SHIM_V8_FLAGS = "--max-semi-space-size=1,--expose-gc";

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(
        () => reject(failedPrecondition(`Timed out after ${ms}ms: ${what}`)),
        ms,
      );
    }),
  ]);
}
