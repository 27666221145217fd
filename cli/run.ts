/**
 * `tainerd run`: a container from an image, as `ctr run`: the image's snapshot (unpacked if
 * needed) is the parent of a new writable snapshot named after the container, the spec comes
 * from the default spec, the image config and the command line, the container is created
 * with the runc v2 runtime, and the task runs with its stdio on FIFOs copied to this
 * process's (a raw terminal with `-t`). Exits with the task's exit status.
 *
 * @module
 */

import { Command, Option } from "commander";
import type { Client } from "@connectrpc/connect";
import { Containers } from "../api/gen/containerd/services/containers/v1/containers_pb.ts";
import { Snapshots } from "../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import { Tasks } from "../api/gen/containerd/services/tasks/v1/tasks_pb.ts";
import type { TainerdClient } from "../client/client.ts";
import { getImage, type ImageRecord } from "../client/images.ts";
import { withLease } from "../client/images_content.ts";
import { parsePlatform } from "../images/platforms.ts";
import { parseReference } from "../images/reference/reference.ts";
import { DEFAULT_SNAPSHOTTER, imageRootfs, isUnpacked, unpack } from "../images/unpack.ts";
import {
  defaultSpec,
  encodeSpec,
  hostDevices,
  parseMountFlag,
  type Spec,
  SPEC_TYPE_URL,
  withCpus,
  withEnv,
  withHostname,
  withHostNetwork,
  withImageConfig,
  withMemoryLimit,
  withMounts,
  withPrivileged,
  withReadonlyRootfs,
  withTty,
  withUser,
} from "../oci/spec.ts";
import { withReadonlyTempMount } from "../sys/mount.ts";
import { isNotFound } from "../plugins/errdefs.ts";
import { signalNumber } from "../sys/libc.ts";
import { consoleSize, type FifoPaths, rawTerminal, TaskIO } from "./run_io.ts";
import { parseLabelArgs } from "./table.ts";
import {
  LOG_PATH_LABEL,
  parsePolicy,
  POLICY_LABEL,
  STATUS_LABEL,
} from "../plugins/restart/monitor.ts";

/** The runtime containers are created with. */
export const DEFAULT_RUNTIME = "io.containerd.runc.v2";
/** The label containerd keeps an image's stop signal in. */
export const STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal";

/** Opens a client and runs `fn`; returns what it returns. */
export type WithClientResult = <T>(fn: (c: TainerdClient) => Promise<T>) => Promise<T>;

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** Options of {@link runContainer}. */
export interface RunOptions {
  rm?: boolean;
  detach?: boolean;
  tty?: boolean;
  netHost?: boolean;
  env?: string[];
  snapshotter?: string;
  label?: string[];
  platform?: string;
  cwd?: string;
  runtime?: string;
  user?: string;
  mount?: string[];
  hostname?: string;
  cpus?: string;
  memoryLimit?: string;
  privileged?: boolean;
  readOnly?: boolean;
  /** A restart policy: the container gets the restart monitor's labels. */
  restart?: string;
  /** With --restart: the log file of the restarted tasks. */
  logPath?: string;
}

/** The restart monitor's labels for `--restart POLICY [--log-path P]`. */
export function restartLabels(o: RunOptions): Record<string, string> {
  if (o.restart === undefined) {
    if (o.logPath !== undefined) throw new Error("--log-path needs --restart");
    return {};
  }
  const policy = parsePolicy(o.restart);
  const labels: Record<string, string> = {
    [STATUS_LABEL]: "running",
    [POLICY_LABEL]: o.restart === "" ? policy.name : o.restart,
  };
  if (o.logPath !== undefined) {
    if (!o.logPath.startsWith("/")) throw new Error(`--log-path "${o.logPath}" is not absolute`);
    labels[LOG_PATH_LABEL] = o.logPath;
  }
  return labels;
}

/** Applies the command line's spec options (all but the user, which needs the rootfs). */
export function applyRunOptions(spec: Spec, o: RunOptions): void {
  withEnv(spec, o.env ?? []);
  if (o.cwd) spec.process.cwd = o.cwd;
  if (o.mount?.length) withMounts(spec, o.mount.map(parseMountFlag));
  if (o.hostname) withHostname(spec, o.hostname);
  if (o.cpus !== undefined) withCpus(spec, Number(o.cpus));
  if (o.memoryLimit !== undefined) withMemoryLimit(spec, Number(o.memoryLimit));
  if (o.privileged) withPrivileged(spec, hostDevices());
  if (o.readOnly) withReadonlyRootfs(spec);
}

/** Whether resolving `user` needs the rootfs's /etc/passwd or /etc/group (not `uid:gid`). */
function needsRootfs(user: string): boolean {
  return !/^\d+:\d+$/.test(user);
}

/** Finds an image by its exact name, else by its normalised reference. */
export async function findImage(c: TainerdClient, ref: string): Promise<ImageRecord> {
  try {
    return await getImage(c, ref);
  } catch (err) {
    if (!isNotFound(err)) throw err;
    let normalized: string;
    try {
      normalized = parseReference(ref).toString();
    } catch {
      throw err;
    }
    if (normalized === ref) throw err;
    return await getImage(c, normalized);
  }
}

/**
 * Creates the container `id` from `imageRef` with `args` (or the image's command): snapshot,
 * spec, container record. Returns what the task needs.
 */
export async function createContainer(
  c: TainerdClient,
  imageRef: string,
  id: string,
  args: string[],
  o: RunOptions,
): Promise<{ snapshotter: string; image: ImageRecord }> {
  const snapshotter = o.snapshotter ?? DEFAULT_SNAPSHOTTER;
  const image = await findImage(c, imageRef);
  const platform = o.platform ? parsePlatform(o.platform) : undefined;
  if (!(await isUnpacked(c, image, { snapshotter, platform }))) {
    await unpack(c, image, { snapshotter, platform });
  }
  const root = await imageRootfs(c, image, { platform });
  const spec = defaultSpec(c.namespace, id);
  const config = root.config.config ?? {};
  withImageConfig(spec, {
    ...config,
    Env: config.Env ?? [],
    Entrypoint: config.Entrypoint ?? [],
    Cmd: config.Cmd ?? [],
  }, args);
  applyRunOptions(spec, o);
  if (o.tty) {
    withTty(spec);
    const size = consoleSize();
    if (size) spec.process.consoleSize = { height: size.rows, width: size.columns };
  }
  if (o.netHost) {
    withHostNetwork(spec);
    withEnv(spec, [`HOSTNAME=${Deno.hostname()}`]);
  }
  if (spec.process.args.length === 0) {
    throw new Error(`Cannot run "${id}": the image has no command and none was given`);
  }
  const labels: Record<string, string> = {
    ...(config.Labels ?? {}),
    ...parseLabelArgs(o.label ?? []),
    ...restartLabels(o),
  };
  if (config.StopSignal) labels[STOP_SIGNAL_LABEL] = config.StopSignal;
  const user = o.user ?? config.User ?? "";

  // Under a lease, as containerd's NewContainer: until the container holds the snapshot,
  // the lease does (the garbage collector may run in between).
  await withLease(c, async (leased) => {
    const snapshots = leased.service(Snapshots);
    const { mounts } = await snapshots.prepare({ snapshotter, key: id, parent: root.chainId });
    try {
      // As containerd's WithUser: names come from the image's /etc/passwd and /etc/group,
      // read through a read-only temporary mount of the container's snapshot.
      if (user && needsRootfs(user)) {
        await withReadonlyTempMount(mounts, (dir) => withUser(spec, user, dir));
      } else if (user) await withUser(spec, user, "/nonexistent");
      await leased.service(Containers).create({
        container: {
          id,
          image: image.name,
          labels,
          runtime: { name: o.runtime ?? DEFAULT_RUNTIME },
          spec: { typeUrl: SPEC_TYPE_URL, value: encodeSpec(spec) },
          snapshotter,
          snapshotKey: id,
        },
      });
    } catch (err) {
      await snapshots.remove({ snapshotter, key: id }).catch(() => {});
      throw err;
    }
  });
  return { snapshotter, image };
}

/** Deletes a container and its snapshot (as `WithSnapshotCleanup`). */
export async function deleteContainer(c: TainerdClient, id: string): Promise<void> {
  const { container } = await c.service(Containers).get({ id });
  await c.service(Containers).delete({ id });
  if (container?.snapshotKey && container.snapshotter) {
    await c.service(Snapshots).remove({
      snapshotter: container.snapshotter,
      key: container.snapshotKey,
    }).catch((err) => {
      if (!isNotFound(err)) throw err;
    });
  }
}

const FORWARDED: Deno.Signal[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];

/**
 * Starts the task of container `id` and, unless detached, waits for it, copying its stdio.
 * Returns the exit status (0 when detached).
 */
export async function runTask(c: TainerdClient, id: string, o: RunOptions): Promise<number> {
  const tasks: Client<typeof Tasks> = c.service(Tasks);
  const snapshots = c.service(Snapshots);
  const { container } = await c.service(Containers).get({ id });
  const { mounts } = await snapshots.mounts({
    snapshotter: container!.snapshotter,
    key: container!.snapshotKey,
  });
  if (o.detach) {
    await tasks.create({ containerId: id, rootfs: mounts, terminal: false });
    await tasks.start({ containerId: id });
    return 0;
  }
  return await runAttached(c, {
    containerId: id,
    tty: o.tty ?? false,
    create: (paths) => tasks.create({ containerId: id, rootfs: mounts, ...paths }).then(() => {}),
    cleanup: async (started) => {
      if (started) await tasks.kill({ containerId: id, signal: 9 }).catch(() => {});
      await tasks.delete({ containerId: id }).catch(() => {});
    },
    remove: async () => {
      await tasks.delete({ containerId: id });
    },
  });
}

/** How {@link runAttached} creates and removes its process. */
export interface AttachedProcess {
  containerId: string;
  /** The exec id, or "" for the task's init process. */
  execId?: string;
  tty: boolean;
  /** Creates the process with the given stdio (Tasks.Create or Tasks.Exec). */
  create(paths: FifoPaths): Promise<void>;
  /** Removes the process after it exited (Tasks.Delete or DeleteProcess). */
  remove(): Promise<void>;
  /** Undoes a failed run (kill and delete). */
  cleanup(started: boolean): Promise<void>;
}

/**
 * Creates a process with its stdio on FIFOs copied to this process's (a raw terminal with
 * `tty`), starts it, forwards signals (or window sizes), waits for it, and removes it.
 * Returns its exit status.
 */
export async function runAttached(c: TainerdClient, p: AttachedProcess): Promise<number> {
  const tasks: Client<typeof Tasks> = c.service(Tasks);
  const ids = { containerId: p.containerId, execId: p.execId ?? "" };
  const io = await TaskIO.create(p.execId || p.containerId, { terminal: p.tty, stdin: true });
  let started = false;
  let stdinEnded = false;
  const closeStdin = () => tasks.closeIO({ ...ids, stdin: true }).catch(() => {});
  // As ctr: without a terminal, the end of stdin is passed on (CloseIO); with one, the
  // console stays up (closing stdin would shut it down in the shim).
  if (!p.tty) {
    io.onStdinEnd = () => {
      stdinEnded = true;
      if (started) closeStdin();
    };
  }
  try {
    await p.create(io.paths);
  } catch (err) {
    await io.cancel();
    throw err;
  }
  let restore = () => {};
  const listeners: [Deno.Signal, () => void][] = [];
  try {
    const waited = tasks.wait(ids, { timeoutMs: 0 });
    waited.catch(() => {});
    if (p.tty) {
      restore = rawTerminal();
      const resize = () => {
        const size = consoleSize();
        if (size) {
          tasks.resizePty({ ...ids, width: size.columns, height: size.rows }).catch(() => {});
        }
      };
      Deno.addSignalListener("SIGWINCH", resize);
      listeners.push(["SIGWINCH", resize]);
      await tasks.start(ids);
      resize();
    } else {
      for (const sig of FORWARDED) {
        const fn = () => {
          tasks.kill({ ...ids, signal: signalNumber(sig) }).catch(() => {});
        };
        Deno.addSignalListener(sig, fn);
        listeners.push([sig, fn]);
      }
      await tasks.start(ids);
    }
    started = true;
    if (stdinEnded) closeStdin();
    const { exitStatus } = await waited;
    await io.wait();
    await p.remove();
    return exitStatus;
  } catch (err) {
    // Leave nothing half-started behind, as ctr's deferred deletes do.
    await p.cleanup(started);
    throw err;
  } finally {
    for (const [sig, fn] of listeners) Deno.removeSignalListener(sig, fn);
    restore();
    await io.close();
  }
}

/** Adds the container options `run` and `containers create` share (as ctr's). */
export function addSpecOptions(cmd: Command): Command {
  return cmd
    .option("--net-host", "share the host's network namespace")
    .option("--env <K=V>", "an environment variable (repeatable)", collect)
    .addOption(
      new Option("--snapshotter <name>", "snapshotter for the rootfs").default(
        Deno.env.get("CONTAINERD_SNAPSHOTTER") ?? DEFAULT_SNAPSHOTTER,
      ),
    )
    .option("--label <k=v>", "a container label (repeatable)", collect)
    .option("--platform <platform>", "the image platform to run")
    .option("--cwd <dir>", "the working directory")
    .option("--runtime <name>", "the runtime", DEFAULT_RUNTIME)
    .option("-u, --user <user>", "the user: <name|uid>[:<group|gid>] (names from the image)")
    .option(
      "--mount <spec>",
      "a mount: type=bind,src=/a,dst=/b,options=rbind:ro (repeatable)",
      collect,
    )
    .option("--hostname <name>", "the container's hostname")
    .option("--cpus <n>", "CPUs the container may use (CFS quota over a 100ms period)")
    .option("--memory-limit <bytes>", "the memory limit in bytes")
    .option("--privileged", "every capability and host device, nothing masked")
    .option("--read-only", "a read-only root filesystem");
}

/** `tainerd run`. Calls `exit` with the task's exit status. */
export function runCommand(
  withClient: (fn: (c: TainerdClient) => Promise<void>) => Promise<void>,
  exit: (code: number) => void = (code) => Deno.exit(code),
): Command {
  const cmd = new Command("run")
    .description("run a container from an image (as ctr run)")
    .argument("<image>", "the image")
    .argument("<id>", "the container id")
    .argument("[command...]", "the command and its arguments (default: the image's)")
    .option("--rm", "remove the container (and its snapshot) when the task exits")
    .option("-d, --detach", "start the task and return")
    .option("-t, --tty", "allocate a terminal")
    .option(
      "--restart <policy>",
      "keep the container running: always, on-failure[:N], unless-stopped (restart monitor)",
    )
    .option("--log-path <path>", "with --restart: the log file of the restarted tasks");
  return addSpecOptions(cmd)
    .passThroughOptions()
    .action(async (imageRef: string, id: string, args: string[], o: RunOptions) => {
      if (o.rm && o.detach) throw new Error("--rm and --detach cannot be used together");
      if (o.rm && o.restart !== undefined) {
        throw new Error("--rm and --restart cannot be used together");
      }
      restartLabels(o); // bad policies fail before anything is created
      let code = 0;
      await withClient(async (c) => {
        await createContainer(c, imageRef, id, args, o);
        try {
          code = await runTask(c, id, o);
        } finally {
          if (o.rm) await deleteContainer(c, id);
        }
      });
      if (!o.detach) exit(code);
    });
}
