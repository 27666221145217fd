/**
 * The shim mode of tainerd, following containerd's shim v2 command-line contract
 * (`runtime/v2/shim/shim.go`) with io.containerd.runc.v2 semantics:
 *
 * ```
 * tainerd shim -namespace NS -address DAEMON_SOCK -publish-binary BIN -id ID
 *              [-bundle DIR] [-socket PATH] [-debug] [start|delete]
 * ```
 *
 * Flags are Go-style: one or two dashes, `-flag value` or `-flag=value`; parsing stops at the
 * first argument that is not a flag (the action). The environment gives `TTRPC_ADDRESS` (the
 * daemon's ttrpc socket, for events) and optionally `TAINERD_STATE_DIR` (default
 * `/run/tainerd`). The bundle is `-bundle`, else the working directory.
 *
 * - `start`: computes the socket address `unix://<state>/s/<sha256(address/ns/group)>` (group:
 *   the `io.containerd.runc.v2.group` or `io.kubernetes.cri.sandbox-id` annotation of the
 *   bundle's config.json, else the id; one shim serves a whole group), spawns the
 *   long-lived shim (this same program, with `-socket`) detached in its own session with the
 *   bundle as working directory, waits until the socket answers, writes the bundle's `address`
 *   file and prints the address on stdout. If a live shim already listens there, its address
 *   is reused. Runtime options (`containerd.runc.v1.Options` in an `Any`) may come on stdin;
 *   `shim_cgroup` is honoured.
 * - `delete`: cleans up after a dead shim: `runc delete --force ID`, unmounts `<bundle>/rootfs`,
 *   removes a dead socket, and prints a protobuf `containerd.task.v2.DeleteResponse`
 *   (`exit_status` 137 = 128 + SIGKILL, `exited_at` now, `pid` from `init.pid`).
 * - no action: serves `containerd.task.v2.Task` over ttrpc on `-socket` as a child subreaper,
 *   logging to the bundle's `log` (FIFO or file) when present, until `Shutdown` finds no task
 *   left or SIGTERM/SIGINT arrives.
 *
 * @module
 */

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AnySchema, timestampNow } from "@bufbuild/protobuf/wkt";
import { OptionsSchema } from "../api/gen/containerd/runtime/v2/runc/options/oci_pb.ts";
import { DeleteResponseSchema, Task } from "../api/gen/containerd/runtime/v2/task/shim_pb.ts";
import { Logger, type LogSink } from "../log.ts";
import { invalidArgument, TainerdError, unavailable } from "../plugins/errdefs.ts";
import {
  isErrno,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  O_WRONLY,
  open as openFd,
  setChildSubreaper,
  setsid,
  SIGNALS,
  write as writeFd,
} from "../sys/libc.ts";
import { unmountAll } from "../sys/mount.ts";
import { TtrpcServer } from "../ttrpc/server.ts";
import { IdleReclaimer } from "../sys/reclaim.ts";
import { isBundled, VERSION } from "../version.ts";
import {
  canConnect,
  readAddress,
  removeSocket,
  socketAddress,
  socketPath,
  stateDir,
  TTRPC_ADDRESS_ENV,
  writeAddress,
} from "./address.ts";
import { readBundleOptions, runcFor } from "./container.ts";
import { EventPublisher } from "./publisher.ts";
import { Reaper } from "./reaper.ts";
import { readPidFile } from "./runc.ts";
import { TaskService } from "./service.ts";

/** The shim's parsed command line. */
export interface ShimFlags {
  namespace: string;
  address: string;
  publishBinary: string;
  id: string;
  bundle: string;
  socket: string;
  debug: boolean;
  version: boolean;
  /** `start`, `delete`, or empty for the long-lived server. */
  action: string;
}

const STRING_FLAGS: Record<string, keyof ShimFlags> = {
  namespace: "namespace",
  address: "address",
  "publish-binary": "publishBinary",
  id: "id",
  bundle: "bundle",
  socket: "socket",
};
const BOOL_FLAGS: Record<string, keyof ShimFlags> = { debug: "debug", v: "version" };

/**
 * Parses the shim's flags the way Go's `flag` package does.
 *
 * @throws {TainerdError} InvalidArgument for an unknown flag, a missing value or an unknown
 * action
 */
export function parseShimFlags(args: readonly string[]): ShimFlags {
  const flags: ShimFlags = {
    namespace: "",
    address: "",
    publishBinary: "",
    id: "",
    bundle: "",
    socket: "",
    debug: false,
    version: false,
    action: "",
  };
  let i = 0;
  for (; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      i++;
      break;
    }
    if (!arg.startsWith("-") || arg === "-") break;
    const body = arg.replace(/^--?/, "");
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const inline = eq < 0 ? undefined : body.slice(eq + 1);
    if (name in BOOL_FLAGS) {
      let value = true;
      if (inline !== undefined) {
        if (!/^(1|0|t|f|true|false|TRUE|FALSE|True|False)$/.test(inline)) {
          throw invalidArgument(`Invalid boolean value "${inline}" for flag -${name}`);
        }
        value = /^(1|t|true)$/i.test(inline);
      }
      (flags as unknown as Record<string, unknown>)[BOOL_FLAGS[name]] = value;
    } else if (name in STRING_FLAGS) {
      let value = inline;
      if (value === undefined) {
        if (i + 1 >= args.length) throw invalidArgument(`Flag needs an argument: -${name}`);
        value = args[++i];
      }
      (flags as unknown as Record<string, unknown>)[STRING_FLAGS[name]] = value;
    } else {
      throw invalidArgument(`Flag provided but not defined: -${name}`);
    }
  }
  flags.action = args[i] ?? "";
  if (flags.action !== "" && flags.action !== "start" && flags.action !== "delete") {
    throw invalidArgument(`Unknown shim action "${flags.action}": expected start or delete`);
  }
  return flags;
}

const encoder = new TextEncoder();

function writeAllSync(file: { writeSync(p: Uint8Array): number }, data: Uint8Array): void {
  for (let off = 0; off < data.length;) off += file.writeSync(data.subarray(off));
}

/**
 * The command that re-executes this program as a shim (the caller appends `shim …`): the
 * compiled binary itself, a bundle as `deno run -A --no-config <bundle.js>` (its chunks beside
 * it), or the source as `deno run -A [--config <deno.json>] shim/main.ts` — this module, not
 * main.ts, whose dynamic imports made Deno analyse the whole CLI's graph at every shim start
 * (+170 ms from source).
 */
export function selfCommand(): { command: string; args: string[] } {
  if (Deno.build.standalone) return { command: Deno.execPath(), args: [] };
  const main = Deno.mainModule;
  if (isBundled()) {
    const path = main.startsWith("file:") ? decodeURIComponent(new URL(main).pathname) : main;
    return { command: Deno.execPath(), args: ["run", "-A", "--no-config", path] };
  }
  const args = ["run", "-A"];
  if (main.startsWith("file:")) {
    let dir = new URL(".", main).pathname.replace(/\/$/, "");
    while (dir !== "") {
      const found = ["deno.json", "deno.jsonc"].find((name) => {
        try {
          return Deno.statSync(`${dir}/${name}`).isFile;
        } catch {
          return false;
        }
      });
      if (found) {
        args.push("--config", `${dir}/${found}`);
        break;
      }
      dir = dir.slice(0, dir.lastIndexOf("/"));
    }
    args.push(import.meta.url);
  } else {
    args.push(main);
  }
  return { command: Deno.execPath(), args };
}

/** How long `start` waits for the new shim to answer on its socket. */
const START_TIMEOUT_MS = 20_000;

/** Reads runtime options from stdin (as containerd passes them to `start`), if any. */
async function readStartOptions(): Promise<Uint8Array> {
  if (Deno.stdin.isTerminal()) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  for await (const chunk of Deno.stdin.readable) chunks.push(chunk);
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/** Moves `pid` into the cgroup `path` (v2 unified, else every v1 hierarchy that has it). */
async function joinCgroup(path: string, pid: number, log: Logger): Promise<void> {
  const rel = path.replace(/^\/+/, "");
  const candidates: string[] = [];
  try {
    const info = await Deno.stat("/sys/fs/cgroup/cgroup.controllers");
    if (info.isFile) candidates.push(`/sys/fs/cgroup/${rel}`);
  } catch {
    for await (const e of Deno.readDir("/sys/fs/cgroup")) {
      if (e.isDirectory) candidates.push(`/sys/fs/cgroup/${e.name}/${rel}`);
    }
  }
  let joined = 0;
  for (const dir of candidates) {
    try {
      await Deno.writeTextFile(`${dir}/cgroup.procs`, `${pid}\n`);
      joined++;
    } catch {
      // hierarchy without that cgroup
    }
  }
  if (joined === 0) {
    throw invalidArgument(`Cannot move the shim into cgroup "${path}": no such cgroup`);
  }
  log.debug("shim moved into its cgroup", { cgroup: path, hierarchies: joined });
}

/** `start`: spawns the long-lived shim and returns its address. */
export async function startShim(flags: ShimFlags, log: Logger): Promise<string> {
  if (flags.id === "") throw invalidArgument("The shim needs a task id (-id)");
  const bundle = flags.bundle || Deno.cwd();
  const optionsAny = await readStartOptions();
  let shimCgroup = "";
  if (optionsAny.length > 0) {
    const any = fromBinary(AnySchema, optionsAny);
    if (any.typeUrl.endsWith(OptionsSchema.typeName)) {
      shimCgroup = fromBinary(OptionsSchema, any.value).shimCgroup;
    }
  }
  return await launchShim({
    namespace: flags.namespace,
    id: flags.id,
    address: flags.address,
    publishBinary: flags.publishBinary,
    bundle,
    debug: flags.debug,
    shimCgroup,
  }, log);
}

/** What {@link launchShim} needs. */
export interface LaunchOptions {
  namespace: string;
  id: string;
  /** The daemon's API address (part of the socket hash). */
  address: string;
  publishBinary: string;
  bundle: string;
  debug?: boolean;
  /** A cgroup to move the shim into (runc Options.shim_cgroup). */
  shimCgroup?: string;
  /** Environment for the shim (TTRPC_ADDRESS, TAINERD_STATE_DIR…), over the current one. */
  env?: Record<string, string>;
  /** The directory of shim sockets (default: from the environment). */
  socketDir?: string;
  /** The group of a container without a group annotation (default: its own id). */
  defaultGroup?: string;
}

/** The group of containers sharing one shim per namespace (runtime `shim_group`). */
export const SHARED_SHIM_GROUP = "tainerd-shared";

/** How long (ms) a shim with no container left stays up for the next one. */
export const SHIM_IDLE_TIMEOUT_ENV = "TAINERD_SHIM_IDLE_TIMEOUT_MS";

/** Launches in flight, by shim address: a group's shim is started once. */
const launching = new Map<string, Promise<unknown>>();

/** The spec annotations that put containers in one shim, as containerd's `groupLabels`. */
export const GROUP_ANNOTATIONS = ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"];

/**
 * The grouping id of a bundle: the value of the first {@link GROUP_ANNOTATIONS} annotation of
 * its `config.json`, else undefined (the container is its own group).
 */
export async function groupingOf(bundle: string): Promise<string | undefined> {
  let annotations: Record<string, unknown> = {};
  try {
    const spec = JSON.parse(await Deno.readTextFile(`${bundle}/config.json`));
    if (spec && typeof spec.annotations === "object" && spec.annotations !== null) {
      annotations = spec.annotations;
    }
  } catch {
    // no readable spec: the container is its own group
  }
  for (const key of GROUP_ANNOTATIONS) {
    const value = annotations[key];
    if (typeof value === "string" && value !== "") return value;
  }
  return undefined;
}

/**
 * Spawns the long-lived shim for a task (detached, in its own session), waits until it
 * answers on its socket and writes the bundle's `address` file: the work of the `start`
 * action. The daemon calls it in-process for tainerd's own shim, which saves one program
 * start per container; `start` (containerd's contract) calls it too.
 */
export async function launchShim(o: LaunchOptions, log: Logger): Promise<string> {
  const { bundle } = o;
  // One shim serves every container of a group (containerd's runc v2 manager: the first of
  // the group annotations found in config.json, else the container id).
  // Only a container without a group annotation goes to the default group: a CRI sandbox's
  // annotation names its own id, and its pod's containers must join it there.
  const grouping = (await groupingOf(bundle)) ?? o.defaultGroup ?? o.id;
  const address = o.socketDir
    ? socketAddress(o.address, o.namespace, grouping, o.socketDir)
    : socketAddress(o.address, o.namespace, grouping);
  // Concurrent creates of one group: the first starts the shim, the others wait and reuse it.
  for (let prev = launching.get(address); prev; prev = launching.get(address)) {
    await prev.catch(() => {});
  }
  const mine = launchAt(o, address, log);
  launching.set(address, mine);
  try {
    return await mine;
  } finally {
    if (launching.get(address) === mine) launching.delete(address);
  }
}

async function launchAt(o: LaunchOptions, address: string, log: Logger): Promise<string> {
  const { bundle } = o;
  const shimCgroup = o.shimCgroup ?? "";
  const path = socketPath(address);
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o711 });
  try {
    await Deno.lstat(path);
    if (await canConnect(address)) {
      await writeAddress(bundle, address);
      return address;
    }
    await removeSocket(address);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }

  const self = selfCommand();
  const args = [
    ...self.args,
    "shim",
    "-namespace",
    o.namespace,
    "-id",
    o.id,
    "-address",
    o.address,
    "-publish-binary",
    o.publishBinary,
    "-bundle",
    bundle,
    "-socket",
    path,
  ];
  if (o.debug) args.push("-debug");
  const child = new Deno.Command(self.command, {
    args,
    cwd: bundle,
    env: o.env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    detached: true,
  }).spawn();
  const chunks: Uint8Array[] = [];
  const reader = child.stderr.getReader();
  const collecting = (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        chunks.push(value);
      }
    } catch {
      // cancelled
    }
  })();
  let exited: Deno.CommandStatus | null = null;
  child.status.then((s) => exited = s);
  const deadline = Date.now() + START_TIMEOUT_MS;
  try {
    for (;;) {
      if (await canConnect(address)) break;
      if (exited !== null) {
        await collecting;
        const decoder = new TextDecoder();
        const text = chunks.map((c) => decoder.decode(c, { stream: true })).join("").trim();
        throw unavailable(
          `The shim exited with status ${(exited as Deno.CommandStatus).code} before serving` +
            (text ? `: ${text.split("\n").slice(-5).join("; ")}` : ""),
        );
      }
      if (Date.now() > deadline) {
        throw new TainerdError(
          "DeadlineExceeded",
          `The shim did not answer on ${path} within ${START_TIMEOUT_MS / 1000}s`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    if (shimCgroup !== "") await joinCgroup(shimCgroup, child.pid, log);
    await writeAddress(bundle, address);
  } catch (err) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await removeSocket(address).catch(() => {});
    throw err;
  } finally {
    await reader.cancel().catch(() => {});
    child.unref();
  }
  return address;
}

/** `delete`: cleans up a dead shim's bundle and returns the encoded DeleteResponse. */
export async function deleteShim(flags: ShimFlags, log: Logger): Promise<Uint8Array> {
  if (flags.id === "") throw invalidArgument("The shim needs a task id (-id)");
  const bundle = flags.bundle || Deno.cwd();
  const options = await readBundleOptions(bundle);
  const runc = runcFor(bundle, flags.namespace, options, stateDir());
  try {
    await runc.delete(flags.id, { force: true });
  } catch (err) {
    log.warn("failed to remove runc container", { id: flags.id, error: `${err}` });
  }
  try {
    await unmountAll(`${bundle}/rootfs`);
  } catch (err) {
    log.warn("failed to cleanup rootfs mount", { error: `${err}` });
  }
  let pid = 0;
  try {
    pid = await readPidFile(`${bundle}/init.pid`);
  } catch (err) {
    log.warn("failed to read init pid file", { error: `${err}` });
  }
  try {
    const address = await readAddress(bundle);
    if (address !== null && !await canConnect(address)) await removeSocket(address);
  } catch (err) {
    log.warn("failed to remove the shim socket", { error: `${err}` });
  }
  return toBinary(
    DeleteResponseSchema,
    create(DeleteResponseSchema, {
      pid,
      exitStatus: 128 + SIGNALS.SIGKILL,
      exitedAt: timestampNow(),
    }),
  );
}

/** A log sink writing to the bundle's `log` (a FIFO the daemon reads, or a file), if present. */
function bundleLogSink(bundle: string): LogSink | null {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(`${bundle}/log`);
  } catch {
    return null;
  }
  if (info.isFifo) {
    let fd: number;
    try {
      fd = openFd(`${bundle}/log`, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    } catch (err) {
      if (!isErrno(err, "ENXIO")) return null;
      // nobody reads yet: keep a read end too, so lines wait in the pipe for the daemon
      fd = openFd(`${bundle}/log`, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    }
    return (line) => {
      try {
        writeFd(fd, encoder.encode(line + "\n"));
      } catch {
        // full or gone: drop the line rather than block the shim
      }
    };
  }
  try {
    const file = Deno.openSync(`${bundle}/log`, { append: true });
    return (line) => {
      try {
        writeAllSync(file, encoder.encode(line + "\n"));
      } catch { /* disk full */ }
    };
  } catch {
    return null;
  }
}

/** The long-lived shim: serves the Task API until shut down. */
export async function serveShim(flags: ShimFlags, log: Logger): Promise<void> {
  const bundle = flags.bundle || Deno.cwd();
  // A grouped shim outlives the bundle it started in (its working directory): leave it, or
  // spawning runc fails once that bundle is removed. Every path the shim uses is absolute.
  Deno.chdir("/");
  try {
    setsid();
  } catch (err) {
    if (!isErrno(err, "EPERM")) throw err; // already a session or group leader
  }
  setChildSubreaper(true);
  const address = flags.socket !== ""
    ? `unix://${flags.socket}`
    : socketAddress(flags.address, flags.namespace, flags.id);
  const path = socketPath(address);

  const publisher = new EventPublisher({
    address: Deno.env.get(TTRPC_ADDRESS_ENV) ?? "",
    namespace: flags.namespace,
    log,
  });
  const reaper = new Reaper(log);
  reaper.startSweeping();
  let requestShutdown!: () => void;
  const shutdownRequested = new Promise<void>((resolve) => requestShutdown = resolve);
  // A shared shim (runtime shim_group) may stay up, empty, for the next container.
  const idleMs = Number(Deno.env.get(SHIM_IDLE_TIMEOUT_ENV) ?? "0") || 0;
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  const service: TaskService = new TaskService({
    namespace: flags.namespace,
    stateDir: stateDir(),
    publisher,
    reaper,
    log,
    onShutdown: (now) => {
      if (now || idleMs <= 0) return requestShutdown();
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        if (service.size === 0) {
          // No new connection may pick this shim any more.
          removeSocket(address).catch(() => {}).finally(() => requestShutdown());
        }
      }, idleMs);
    },
  });
  // Memory back to the host after each burst of calls (V8 flag --expose-gc comes from the
  // daemon; without it, only glibc's arenas are trimmed).
  const reclaimer = new IdleReclaimer();
  const server = new TtrpcServer({
    onError: (err) => log.warn("ttrpc server error", { error: `${err}` }),
    onRequest: () => reclaimer.touch(),
  });
  server.register(Task, service.handlers());
  reclaimer.touch();

  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o711 });
  let listener: Deno.Listener;
  try {
    listener = Deno.listen({ transport: "unix", path });
  } catch (err) {
    if (!(err instanceof Deno.errors.AddrInUse) || await canConnect(address)) throw err;
    await removeSocket(address);
    listener = Deno.listen({ transport: "unix", path });
  }
  await Deno.chmod(path, 0o600);

  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(sig, () => {
      log.info("caught exit signal", { signal: sig });
      requestShutdown();
    });
  }
  // A stray error must not take the containers' shim down.
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    log.error("unhandled rejection", { error: `${e.reason}` });
  });
  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    log.error("uncaught exception", { error: `${e.error ?? e.message}` });
  });

  log.info("shim serving", { socket: path, pid: Deno.pid, bundle });
  const serving = server.serve(listener);
  await shutdownRequested;
  clearTimeout(idleTimer);
  log.info("shim shutting down", { tasks: service.size });
  reaper.stopSweeping();
  // let the Shutdown call (or any other in flight) answer first
  await server.shutdown(AbortSignal.timeout(2000));
  await serving.catch(() => {});
  await removeSocket(address).catch(() => {});
  await publisher.close(5000);
}

/**
 * Runs the shim with its own arguments (after `shim`); never returns normally: the process
 * exits with 0, or 1 after printing `tainerd-shim: <error>` on stderr.
 */
export async function runShim(args: string[]): Promise<never> {
  let flags: ShimFlags;
  let log = new Logger("info", { runtime: "io.containerd.runc.v2" });
  let serving = false;
  try {
    flags = parseShimFlags(args);
    if (flags.version) {
      writeAllSync(Deno.stdout, encoder.encode(`tainerd-shim:\n  Version:  ${VERSION}\n\n`));
      Deno.exit(0);
    }
    if (flags.namespace === "") throw invalidArgument("The shim namespace cannot be empty");
    const level = flags.debug ? "debug" : "info";
    const fields = { runtime: "io.containerd.runc.v2", namespace: flags.namespace, id: flags.id };
    switch (flags.action) {
      case "start": {
        // The daemon reads start's combined stdout and stderr as the address: log elsewhere.
        log = new Logger(level, fields, bundleLogSink(flags.bundle || Deno.cwd()) ?? (() => {}));
        const address = await startShim(flags, log);
        writeAllSync(Deno.stdout, encoder.encode(address));
        break;
      }
      case "delete": {
        log = new Logger(level, fields);
        const response = await deleteShim(flags, log);
        writeAllSync(Deno.stdout, response);
        break;
      }
      default: {
        const sink = bundleLogSink(flags.bundle || Deno.cwd());
        log = sink === null ? new Logger(level, fields) : new Logger(level, fields, sink);
        serving = true;
        await serveShim(flags, log);
      }
    }
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (serving) log.error("shim failed", { error: message });
    try {
      writeAllSync(Deno.stderr, encoder.encode(`tainerd-shim: ${message}\n`));
    } catch { /* no stderr */ }
    Deno.exit(1);
  }
  Deno.exit(0);
}

// Run from source as `deno run … shim/main.ts shim …` (see selfCommand).
if (import.meta.main) {
  const args = Deno.args[0] === "shim" ? Deno.args.slice(1) : [...Deno.args];
  await runShim(args);
}
