/**
 * The CRI runtime: pod sandboxes and their containers, as containerd 1.6's CRI plugin makes
 * them, driven through the daemon's own API (namespace `k8s.io`).
 *
 * - A sandbox is a pause container from the sandbox image. runc creates its namespaces; the
 *   network namespace is pinned by a bind mount (so it outlives the pause process) and set up
 *   through CNI before the pause process starts.
 * - A container joins its sandbox's network, IPC and UTS namespaces (and PID with
 *   NamespaceMode POD); its output goes through FIFOs to a CRI-format log file.
 * - Task exits come from the event exchange and update the containers' status.
 * - Everything is reloaded from the container store and status files at start.
 *
 * @module
 */

import { create, fromJson, type JsonValue, toJson } from "@bufbuild/protobuf";
import { join } from "node:path";
import { Containers } from "../../api/gen/containerd/services/containers/v1/containers_pb.ts";
import { Snapshots } from "../../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import { Tasks } from "../../api/gen/containerd/services/tasks/v1/tasks_pb.ts";
import { Status as TaskStatus } from "../../api/gen/containerd/types/task/task_pb.ts";
import {
  type ContainerConfig,
  ContainerConfigSchema,
  type Mount,
  MountSchema,
  NamespaceMode,
  type PodSandboxConfig,
  PodSandboxConfigSchema,
  Protocol,
} from "../../api/gen/runtime/v1/api_pb.ts";
import type { TainerdClient } from "../../client/client.ts";
import { withLease } from "../../client/images_content.ts";
import type { Logger } from "../../log.ts";
import {
  encodeSpec,
  type ImageConfig,
  PROCESS_SPEC_TYPE_URL,
  RESOURCES_TYPE_URL,
  type Spec,
  SPEC_TYPE_URL,
} from "../../oci/spec.ts";
import { mount as sysMount, signalNumber, umount2 } from "../../sys/libc.ts";
import { mountAll, readonlyMounts, unmountAll, withReadonlyTempMount } from "../../sys/mount.ts";
import {
  deadlineExceeded,
  failedPrecondition,
  invalidArgument,
  isNotFound,
  notFound,
} from "../errdefs.ts";
import { type Cni, type NamespaceOptions, podIPs, type PortMapping } from "./cni/cni.ts";
import { pinNetns, unpinNetns } from "./cni/netns.ts";
import type { CriConfig } from "./config.ts";
import type { CriImage, CriImageService } from "./images/service.ts";
import { ContainerIO, ExecIO } from "./io/fifo.ts";
import { generateHosts, generateResolvConf, type SandboxFiles } from "./spec/spec.ts";
import { containerSpec, sandboxSpec } from "./spec/spec.ts";
import {
  CONTAINER_METADATA_EXT,
  type ContainerMeta,
  type ContainerStatusRecord,
  createdStatus,
  KIND_LABEL,
  matchId,
  METADATA_TYPE_URL,
  NameIndex,
  newId,
  nowNs,
  readJson,
  SANDBOX_METADATA_EXT,
  type SandboxMeta,
  timestampNs,
  writeJsonAtomic,
} from "./store.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A sandbox as the runtime holds it. */
export interface SandboxEntry {
  meta: SandboxMeta;
  config: PodSandboxConfig;
  /** The pause process's pid (0 when not running). */
  pid: number;
  ready: boolean;
  /** Resolves when the pause process exited. */
  exited: PromiseWithResolvers<void>;
  /** The runtime spec, for verbose status. */
  spec?: Spec;
}

/** A container as the runtime holds it. */
export interface ContainerEntry {
  meta: ContainerMeta;
  config: ContainerConfig;
  status: ContainerStatusRecord;
  io?: ContainerIO;
  /** Resolves when the task exited and its status is recorded. */
  exited: PromiseWithResolvers<void>;
  /** Set when the task was OOM-killed. */
  oom?: boolean;
  spec?: Spec;
}

/** What happened to a container, for GetContainerEvents. */
export type ContainerEventKind = "created" | "started" | "stopped" | "deleted";

/** Options of {@link CriRuntime}. */
export interface CriRuntimeOptions {
  config: CriConfig;
  /** The plugin's root (persistent) and state (volatile) directories. */
  root: string;
  state: string;
  client: TainerdClient;
  images: CriImageService;
  /** Resolves the sandbox image, importing or pulling it when missing. */
  sandboxImage: () => Promise<CriImage>;
  cni: Cni;
  log: Logger;
  /** Called on every container event. */
  onEvent?: (kind: ContainerEventKind, containerId: string) => void;
}

/**
 * Waits for `p` at most `ms`; resolves with its value or undefined. The timer is cleared
 * either way, so no pending timer keeps a stopping daemon alive.
 */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The process part of an image config, as the spec builders take it. */
export function imageConfigOf(image: CriImage): ImageConfig {
  const c = image.config.config ?? {};
  return {
    User: c.User ?? "",
    Env: c.Env ?? [],
    Entrypoint: c.Entrypoint ?? [],
    Cmd: c.Cmd ?? [],
    WorkingDir: c.WorkingDir ?? "",
  };
}

/**
 * Whether this process lacks CAP_SYS_RESOURCE (as in some sandboxed hosts): runc then cannot
 * set an OOM score adjustment below the daemon's own, so the specs are restricted as with
 * containerd's `restrict_oom_score_adj`.
 */
function lacksSysResource(): boolean {
  try {
    const capEff = Deno.readTextFileSync("/proc/self/status").match(/^CapEff:\s*([0-9a-f]+)/m)?.[1];
    const CAP_SYS_RESOURCE = 24n;
    return capEff !== undefined && ((BigInt(`0x${capEff}`) >> CAP_SYS_RESOURCE) & 1n) === 0n;
  } catch {
    return false; // not Linux-like: no restriction
  }
}

/** The runtime type of a handler, or NotFound. */
function runtimeTypeOf(config: CriConfig, handler: string): string {
  const name = handler || config.containerd.default_runtime_name;
  const rt = config.containerd.runtimes[name];
  if (!rt) throw notFound(`No runtime for handler "${name}" is configured`);
  return rt.runtime_type;
}

/** `<name>_<namespace>_<uid>_<attempt>`, as containerd's `makeSandboxName`. */
export function sandboxName(config: PodSandboxConfig): string {
  const m = config.metadata!;
  return [m.name, m.namespace, m.uid, String(m.attempt)].join("_");
}

/** `<name>_<sandbox name>_<namespace>_<uid>_<attempt>`, as containerd's `makeContainerName`. */
export function containerName(config: ContainerConfig, sandbox: PodSandboxConfig): string {
  const m = config.metadata!;
  const s = sandbox.metadata!;
  return [m.name, s.name, s.namespace, s.uid, String(m.attempt)].join("_");
}

function protocolName(p: Protocol): "tcp" | "udp" | "sctp" {
  return p === Protocol.UDP ? "udp" : p === Protocol.SCTP ? "sctp" : "tcp";
}

/**
 * The pod's port mappings as the CNI `portMappings` capability argument. As containerd's
 * `toCNIPortMappings`, mappings without a host port (`host_port` 0: the container port is only
 * declared) are left out: the portmap plugin rejects host port 0.
 */
export function cniPortMappings(
  mappings: readonly {
    hostPort: number;
    containerPort: number;
    protocol: Protocol;
    hostIp: string;
  }[],
): PortMapping[] {
  return mappings.filter((p) => p.hostPort > 0).map((p) => ({
    hostPort: p.hostPort,
    containerPort: p.containerPort,
    protocol: protocolName(p.protocol),
    ...(p.hostIp ? { hostIP: p.hostIp } : {}),
  }));
}

/** The CNI arguments and capabilities of a pod, the same for setup and teardown. */
export function podNetworkOptions(id: string, config: PodSandboxConfig): NamespaceOptions {
  const md = config.metadata;
  return {
    args: {
      IgnoreUnknown: "1",
      K8S_POD_NAMESPACE: md?.namespace ?? "",
      K8S_POD_NAME: md?.name ?? "",
      K8S_POD_INFRA_CONTAINER_ID: id,
      K8S_POD_UID: md?.uid ?? "",
    },
    portMappings: cniPortMappings(config.portMappings),
  };
}

/** The directory (under a container's) where its image volumes are mounted. */
const IMAGE_VOLUMES_DIR = "image-volumes";

/** The snapshot key of a container's `i`th mount when it is an image volume. */
function imageVolumeKey(containerId: string, i: number): string {
  return `${containerId}-image-volume-${i}`;
}

/** The pod and container runtime behind the RuntimeService. */
export class CriRuntime {
  readonly config: CriConfig;
  readonly sandboxes = new Map<string, SandboxEntry>();
  readonly containers = new Map<string, ContainerEntry>();
  readonly #sandboxNames = new NameIndex("pod sandbox");
  readonly #containerNames = new NameIndex("container");
  readonly #opts: CriRuntimeOptions;
  readonly #c: TainerdClient;
  readonly #log: Logger;
  /** Serialises operations on one object id. */
  readonly #locks = new Map<string, Promise<void>>();
  #podCidr = "";
  /** `restrict_oom_score_adj`, or forced on when the daemon lacks CAP_SYS_RESOURCE. */
  readonly #restrictOom: boolean;

  constructor(opts: CriRuntimeOptions) {
    this.#opts = opts;
    this.config = opts.config;
    this.#c = opts.client;
    this.#log = opts.log;
    this.#restrictOom = opts.config.restrict_oom_score_adj;
    if (!this.#restrictOom && lacksSysResource()) {
      this.#restrictOom = true;
      this.#log.info("cri: no CAP_SYS_RESOURCE: OOM score adjustments kept at the daemon's own");
    }
  }

  /** The pod CIDR from UpdateRuntimeConfig. */
  get podCidr(): string {
    return this.#podCidr;
  }

  set podCidr(v: string) {
    this.#podCidr = v;
  }

  get #root(): string {
    return this.#opts.root;
  }

  get #state(): string {
    return this.#opts.state;
  }

  /** Runs `fn` with `id` locked against concurrent changes. */
  async #locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#locks.get(id) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => release = r);
    const chained = prev.then(() => mine);
    this.#locks.set(id, chained);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.#locks.get(id) === chained) this.#locks.delete(id);
    }
  }

  #emit(kind: ContainerEventKind, id: string): void {
    try {
      this.#opts.onEvent?.(kind, id);
    } catch (err) {
      this.#log.warn(`cri: event listener failed: ${(err as Error).message}`);
    }
  }

  // ---------------------------------------------------------------- lookups

  /** The sandbox with this id (or unique id prefix). */
  sandbox(key: string): SandboxEntry {
    const id = matchId(this.sandboxes.keys(), key);
    const s = id ? this.sandboxes.get(id) : undefined;
    if (!s) throw notFound(`Pod sandbox "${key}" does not exist`);
    return s;
  }

  /** The container with this id (or unique id prefix). */
  container(key: string): ContainerEntry {
    const id = matchId(this.containers.keys(), key);
    const c = id ? this.containers.get(id) : undefined;
    if (!c) throw notFound(`Container "${key}" does not exist`);
    return c;
  }

  /** The containers of a sandbox. */
  containersOf(sandboxId: string): ContainerEntry[] {
    return [...this.containers.values()].filter((c) => c.meta.sandboxId === sandboxId);
  }

  // ---------------------------------------------------------------- persistence

  #containerDir(id: string): string {
    return join(this.#root, "containers", id);
  }

  async #saveStatus(c: ContainerEntry): Promise<void> {
    await Deno.mkdir(this.#containerDir(c.meta.id), { recursive: true });
    await writeJsonAtomic(join(this.#containerDir(c.meta.id), "status.json"), c.status);
  }

  async #saveSandboxMeta(s: SandboxEntry): Promise<void> {
    await this.#c.service(Containers).update({
      container: {
        id: s.meta.id,
        extensions: {
          [SANDBOX_METADATA_EXT]: {
            typeUrl: METADATA_TYPE_URL,
            value: encoder.encode(JSON.stringify(s.meta)),
          },
        },
      },
      updateMask: { paths: [`extensions.${SANDBOX_METADATA_EXT}`] },
    });
  }

  /** Loads every sandbox and container from the store; reattaches running ones. */
  async load(): Promise<void> {
    const { containers } = await this.#c.service(Containers).list({
      filters: [`labels."${KIND_LABEL}"`],
    });
    const tasks = this.#c.service(Tasks);
    const taskOf = async (id: string) => {
      try {
        return (await tasks.get({ containerId: id })).process;
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    };
    for (const rec of containers.filter((c) => c.labels[KIND_LABEL] === "sandbox")) {
      const ext = rec.extensions[SANDBOX_METADATA_EXT];
      if (!ext) continue;
      try {
        const meta = JSON.parse(decoder.decode(ext.value)) as SandboxMeta;
        const config = fromJson(PodSandboxConfigSchema, meta.config as JsonValue);
        const p = await taskOf(meta.id);
        const running = p?.status === TaskStatus.RUNNING;
        const entry: SandboxEntry = {
          meta,
          config,
          pid: running ? p!.pid : 0,
          ready: running,
          exited: Promise.withResolvers(),
          spec: rec.spec ? JSON.parse(decoder.decode(rec.spec.value)) : undefined,
        };
        if (!running) {
          entry.exited.resolve();
          if (p) await tasks.delete({ containerId: meta.id }).catch(() => {});
        }
        this.#sandboxNames.reserve(meta.name, meta.id);
        this.sandboxes.set(meta.id, entry);
      } catch (err) {
        this.#log.warn(`cri: cannot load sandbox ${rec.id}: ${(err as Error).message}`);
      }
    }
    for (const rec of containers.filter((c) => c.labels[KIND_LABEL] === "container")) {
      const ext = rec.extensions[CONTAINER_METADATA_EXT];
      if (!ext) continue;
      try {
        const meta = JSON.parse(decoder.decode(ext.value)) as ContainerMeta;
        const config = fromJson(ContainerConfigSchema, meta.config as JsonValue);
        const status = (await readJson<ContainerStatusRecord>(
          join(this.#containerDir(meta.id), "status.json"),
        )) ?? { ...createdStatus(), state: "unknown" };
        const entry: ContainerEntry = {
          meta,
          config,
          status,
          exited: Promise.withResolvers(),
          spec: rec.spec ? JSON.parse(decoder.decode(rec.spec.value)) : undefined,
        };
        const p = await taskOf(meta.id);
        if (p?.status === TaskStatus.RUNNING) {
          entry.status = { ...status, state: "running", pid: p.pid };
          entry.io = await ContainerIO.create(this.#ioDir(meta.id), meta.id, {
            stdin: config.stdin,
            tty: config.tty,
          });
          await entry.io.attachLog(meta.logPath, this.config.max_container_log_line_size);
        } else if (p) {
          // Exited while the daemon was down.
          const exitedAt = p.exitedAt ? timestampNs(p.exitedAt).toString() : nowNs();
          entry.status = {
            ...status,
            state: "exited",
            pid: 0,
            exitCode: p.exitStatus,
            finishedAt: exitedAt,
            reason: p.exitStatus === 0 ? "Completed" : "Error",
          };
          await tasks.delete({ containerId: meta.id }).catch(() => {});
          entry.exited.resolve();
          await this.#saveStatus(entry);
        } else {
          if (status.state === "running") {
            entry.status = {
              ...status,
              state: "exited",
              exitCode: 255,
              finishedAt: nowNs(),
              reason: "Unknown",
              message: "The task was gone when tainerd restarted",
            };
            await this.#saveStatus(entry);
          }
          entry.exited.resolve();
        }
        this.#containerNames.reserve(meta.name, meta.id);
        this.containers.set(meta.id, entry);
      } catch (err) {
        this.#log.warn(`cri: cannot load container ${rec.id}: ${(err as Error).message}`);
      }
    }
    this.#log.info(
      `cri: loaded ${this.sandboxes.size} pod sandboxes and ${this.containers.size} containers`,
    );
  }

  // ---------------------------------------------------------------- events

  /** A task exited (from the event exchange). */
  async taskExited(containerId: string, exitStatus: number, exitedAtNs: string): Promise<void> {
    const s = this.sandboxes.get(containerId);
    if (s) {
      s.ready = false;
      s.pid = 0;
      await this.#c.service(Tasks).delete({ containerId }).catch(() => {});
      s.exited.resolve();
      return;
    }
    const c = this.containers.get(containerId);
    if (!c || c.status.state !== "running") return;
    c.status = {
      ...c.status,
      state: "exited",
      pid: 0,
      exitCode: exitStatus,
      finishedAt: exitedAtNs,
      reason: c.oom ? "OOMKilled" : exitStatus === 0 ? "Completed" : "Error",
    };
    await this.#c.service(Tasks).delete({ containerId }).catch(() => {});
    // The shim closed the FIFOs: the log has everything once the copies end.
    if (c.io) {
      const io = c.io;
      await within(io.wait().catch(() => {}), 2000);
      await io.close().catch(() => {});
      c.io = undefined;
    }
    await this.#saveStatus(c).catch((err) =>
      this.#log.warn(`cri: cannot save the status of ${containerId}: ${(err as Error).message}`)
    );
    c.exited.resolve();
    this.#emit("stopped", containerId);
  }

  /** A task was OOM-killed (from the event exchange). */
  taskOom(containerId: string): void {
    const c = this.containers.get(containerId);
    if (c) c.oom = true;
  }

  // ---------------------------------------------------------------- sandboxes

  /** RunPodSandbox: returns the new sandbox's id. */
  async runPodSandbox(config: PodSandboxConfig, runtimeHandler: string): Promise<string> {
    const md = config.metadata;
    if (!md || !md.name || !md.namespace || !md.uid) {
      throw invalidArgument("The pod sandbox config needs metadata with a name, namespace and uid");
    }
    const runtimeType = runtimeTypeOf(this.config, runtimeHandler);
    const id = newId();
    const name = sandboxName(config);
    this.#sandboxNames.reserve(name, id);
    const undo: (() => Promise<unknown>)[] = [];
    try {
      return await this.#locked(id, async () => {
        const image = await this.#opts.sandboxImage();
        const nsOpts = config.linux?.securityContext?.namespaceOptions;
        const hostNetwork = nsOpts?.network === NamespaceMode.NODE;
        const hostIpc = nsOpts?.ipc === NamespaceMode.NODE;

        // Generated files: hostname, hosts, resolv.conf; a tmpfs for /dev/shm.
        const dir = join(this.#root, "sandboxes", id);
        await Deno.mkdir(dir, { recursive: true, mode: 0o711 });
        undo.push(() => Deno.remove(dir, { recursive: true }));
        const hostname = config.hostname || (hostNetwork ? Deno.hostname() : md.name);
        const files: SandboxFiles = {
          hostnamePath: join(dir, "hostname"),
          hostsPath: join(dir, "hosts"),
          resolvConfPath: join(dir, "resolv.conf"),
          shmPath: "",
        };
        await Deno.writeTextFile(files.hostnamePath, `${hostname}\n`);
        const hostHosts = await Deno.readTextFile("/etc/hosts").catch(() => "");
        await Deno.writeTextFile(files.hostsPath, generateHosts(hostHosts));
        const hostResolv = await Deno.readTextFile("/etc/resolv.conf").catch(() => "");
        await Deno.writeTextFile(
          files.resolvConfPath,
          generateResolvConf(config.dnsConfig, hostResolv),
        );
        if (!hostIpc) {
          const shm = join(this.#state, "sandboxes", id, "shm");
          await Deno.mkdir(shm, { recursive: true, mode: 0o700 });
          sysMount("shm", shm, "tmpfs", 0x2 | 0x4 | 0x8, "mode=1777,size=65536k"); // nosuid,nodev,noexec
          files.shmPath = shm;
          undo.push(async () => {
            umount2(shm, 2);
            await Deno.remove(join(this.#state, "sandboxes", id), { recursive: true });
          });
        }

        const spec = sandboxSpec(id, config, imageConfigOf(image), {
          files,
          cgroupParent: config.linux?.cgroupParent,
          restrictOomScoreAdj: this.#restrictOom,
        });
        const meta: SandboxMeta = {
          id,
          name,
          config: toJson(PodSandboxConfigSchema, config),
          runtimeHandler,
          runtimeType,
          netnsPath: "",
          ip: "",
          additionalIps: [],
          createdAt: nowNs(),
          image: image.id,
          dir,
          shmPath: files.shmPath,
        };
        const entry: SandboxEntry = {
          meta,
          config,
          pid: 0,
          ready: false,
          exited: Promise.withResolvers(),
          spec,
        };

        // The container record and its snapshot, under a lease until the record holds it.
        const snapshotter = this.config.containerd.snapshotter;
        await withLease(this.#c, async (leased) => {
          await leased.service(Snapshots).prepare({
            snapshotter,
            key: id,
            parent: image.chainId,
          });
          try {
            await leased.service(Containers).create({
              container: {
                id,
                image: image.name,
                labels: { ...config.labels, [KIND_LABEL]: "sandbox" },
                runtime: { name: runtimeType },
                spec: { typeUrl: SPEC_TYPE_URL, value: encodeSpec(spec) },
                snapshotter,
                snapshotKey: id,
                extensions: {
                  [SANDBOX_METADATA_EXT]: {
                    typeUrl: METADATA_TYPE_URL,
                    value: encoder.encode(JSON.stringify(meta)),
                  },
                },
              },
            });
          } catch (err) {
            await this.#unmountImageVolumes(id, snapshotter);
            await leased.service(Snapshots).remove({ snapshotter, key: id }).catch(() => {});
            throw err;
          }
        });
        undo.push(() => this.#deleteRecord(id, snapshotter));

        // runc creates the namespaces; the network one is pinned and set up before start.
        const tasks = this.#c.service(Tasks);
        const { mounts } = await this.#c.service(Snapshots).mounts({ snapshotter, key: id });
        const created = await tasks.create({ containerId: id, rootfs: mounts });
        undo.push(async () => {
          await tasks.kill({ containerId: id, signal: 9, all: true }).catch(() => {});
          await tasks.delete({ containerId: id });
        });
        entry.pid = created.pid;
        if (!hostNetwork) {
          meta.netnsPath = await pinNetns(created.pid, join(this.#state, "netns"), id);
          undo.push(() => unpinNetns(meta.netnsPath));
          const network = podNetworkOptions(id, config);
          const result = await this.#opts.cni.setup(id, meta.netnsPath, network);
          undo.push(() => this.#opts.cni.teardown(id, meta.netnsPath, network));
          const ips = podIPs(result);
          meta.ip = ips.ip;
          meta.additionalIps = ips.additionalIPs;
          meta.cniResult = result.raw;
        }
        this.sandboxes.set(id, entry);
        undo.push(() => Promise.resolve(this.sandboxes.delete(id)));
        await this.#saveSandboxMeta(entry);
        await tasks.start({ containerId: id });
        entry.ready = true;
        return id;
      });
    } catch (err) {
      for (const fn of undo.reverse()) {
        await fn().catch((e) =>
          this.#log.warn(`cri: cleanup of sandbox ${id} failed: ${(e as Error).message}`)
        );
      }
      this.#sandboxNames.release(name);
      throw err;
    }
  }

  /**
   * Image volumes (CRI mounts naming an `image`, KEP-4639), as containerd 2.1's: each is a
   * read-only view snapshot of the (already pulled) image, mounted under the container's
   * directory; the container bind-mounts it (or its `image_sub_path`, which must exist in
   * the image and stay inside it) read-only. A writable image volume is refused. Returns
   * the config the spec is built from (image mounts turned into host-path mounts); the
   * given config's image mounts get their `image_ref` (the image ID) for ContainerStatus.
   */
  async #mountImageVolumes(
    client: TainerdClient,
    id: string,
    config: ContainerConfig,
    snapshotter: string,
  ): Promise<ContainerConfig> {
    if (!config.mounts.some((m) => m.image?.image)) return config;
    const mounts: Mount[] = [];
    for (const [i, m] of config.mounts.entries()) {
      if (!m.image?.image) {
        mounts.push(m);
        continue;
      }
      if (!m.readonly) {
        throw invalidArgument(`Image volume at "${m.containerPath}" must be read-only`);
      }
      const image = await this.#opts.images.resolve(m.image.image);
      if (!image) {
        throw notFound(
          `Image "${m.image.image}" of the volume at "${m.containerPath}" is not present: ` +
            "pull it first",
        );
      }
      m.image.imageRef = image.id;
      const view = await client.service(Snapshots).view({
        snapshotter,
        key: imageVolumeKey(id, i),
        parent: image.chainId,
      });
      const dir = join(this.#containerDir(id), IMAGE_VOLUMES_DIR, String(i));
      await Deno.mkdir(dir, { recursive: true });
      await mountAll(readonlyMounts(view.mounts), dir);
      let hostPath = dir;
      if (m.imageSubPath) {
        const real = await Deno.realPath(join(dir, m.imageSubPath)).catch(() => "");
        if (real !== dir && !real.startsWith(`${dir}/`)) {
          throw invalidArgument(
            `Image volume sub path "${m.imageSubPath}" does not exist in image "${m.image.image}"`,
          );
        }
        hostPath = real;
      }
      mounts.push(create(MountSchema, { ...m, hostPath, image: undefined, imageSubPath: "" }));
    }
    return create(ContainerConfigSchema, { ...config, mounts });
  }

  /** Unmounts and removes a container's image volumes (see `#mountImageVolumes`). */
  async #unmountImageVolumes(id: string, snapshotter: string): Promise<void> {
    const root = join(this.#containerDir(id), IMAGE_VOLUMES_DIR);
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir(root)) names.push(e.name);
    } catch {
      return;
    }
    for (const name of names) {
      const dir = join(root, name);
      await unmountAll(dir, 2 /* MNT_DETACH */).catch(() => {});
      // Not recursive: a mount that stayed must never have its image's files removed.
      await Deno.remove(dir).catch(() => {});
      await this.#c.service(Snapshots).remove({ snapshotter, key: imageVolumeKey(id, +name) })
        .catch(() => {});
    }
    await Deno.remove(root).catch(() => {});
  }

  async #deleteRecord(id: string, snapshotter: string): Promise<void> {
    await this.#unmountImageVolumes(id, snapshotter);
    await this.#c.service(Containers).delete({ id }).catch((err) => {
      if (!isNotFound(err)) throw err;
    });
    await this.#c.service(Snapshots).remove({ snapshotter, key: id }).catch((err) => {
      if (!isNotFound(err)) throw err;
    });
  }

  /** StopPodSandbox: stops its containers and the pause process, tears the network down. */
  async stopPodSandbox(key: string): Promise<void> {
    const s = this.sandbox(key);
    const id = s.meta.id;
    for (const c of this.containersOf(id)) await this.stopContainer(c.meta.id, 0);
    await this.#locked(id, async () => {
      if (s.ready) {
        const tasks = this.#c.service(Tasks);
        await tasks.kill({ containerId: id, signal: 9, all: true }).catch((err) => {
          if (!isNotFound(err)) throw err;
        });
        await within(s.exited.promise, 10_000);
        if (s.ready) {
          // The exit event never came: settle it here.
          await tasks.delete({ containerId: id }).catch(() => {});
          s.ready = false;
          s.exited.resolve();
        }
      }
      if (s.meta.netnsPath) {
        await this.#opts.cni.teardown(id, s.meta.netnsPath, podNetworkOptions(id, s.config));
        await unpinNetns(s.meta.netnsPath);
      }
      if (s.meta.shmPath) {
        try {
          umount2(s.meta.shmPath, 2);
        } catch { /* not mounted */ }
      }
    });
  }

  /** RemovePodSandbox: stops it if needed, removes its containers and itself. */
  async removePodSandbox(key: string): Promise<void> {
    let s: SandboxEntry;
    try {
      s = this.sandbox(key);
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
    const id = s.meta.id;
    await this.stopPodSandbox(id);
    for (const c of this.containersOf(id)) await this.removeContainer(c.meta.id);
    await this.#locked(id, async () => {
      await this.#c.service(Tasks).delete({ containerId: id }).catch(() => {});
      await this.#deleteRecord(id, this.config.containerd.snapshotter);
      await Deno.remove(s.meta.dir, { recursive: true }).catch(() => {});
      await Deno.remove(join(this.#state, "sandboxes", id), { recursive: true }).catch(() => {});
      this.sandboxes.delete(id);
      this.#sandboxNames.release(s.meta.name);
    });
  }

  // ---------------------------------------------------------------- containers

  /** Where the FIFOs of containers and execs are. */
  get ioRoot(): string {
    return join(this.#state, "io");
  }

  #ioDir(id: string): string {
    return join(this.ioRoot, id);
  }

  /** CreateContainer: returns the new container's id. */
  async createContainer(
    sandboxKey: string,
    config: ContainerConfig,
    sandboxConfig: PodSandboxConfig | undefined,
  ): Promise<string> {
    const s = this.sandbox(sandboxKey);
    if (!config.metadata?.name) {
      throw invalidArgument("The container config needs metadata with a name");
    }
    if (!s.ready) {
      throw failedPrecondition(`Pod sandbox "${s.meta.id}" is not ready`);
    }
    const imageRef = config.image?.image ?? "";
    if (!imageRef) throw invalidArgument("The container config names no image");
    const id = newId();
    const name = containerName(config, sandboxConfig ?? s.config);
    this.#containerNames.reserve(name, id);
    try {
      return await this.#locked(id, async () => {
        const image = await this.#opts.images.resolve(imageRef);
        if (!image) throw notFound(`Image "${imageRef}" is not present: pull it first`);
        const logDir = s.config.logDirectory;
        const logPath = config.logPath && logDir ? join(logDir, config.logPath) : "";
        const snapshotter = this.config.containerd.snapshotter;
        const runtimeType = s.meta.runtimeType;
        const meta: ContainerMeta = {
          id,
          name,
          sandboxId: s.meta.id,
          config: toJson(ContainerConfigSchema, config),
          imageId: image.id,
          imageName: imageRef,
          imageRef: image.repoDigests[0] ?? image.id,
          logPath,
          createdAt: nowNs(),
          stopSignal: image.config.config?.StopSignal ?? "",
        };
        let spec: Spec | undefined;
        await withLease(this.#c, async (leased) => {
          const { mounts } = await leased.service(Snapshots).prepare({
            snapshotter,
            key: id,
            parent: image.chainId,
          });
          try {
            const specConfig = await this.#mountImageVolumes(leased, id, config, snapshotter);
            meta.config = toJson(ContainerConfigSchema, config);
            const sandboxInfo = {
              id: s.meta.id,
              config: s.config,
              pid: s.pid,
              netnsPath: s.meta.netnsPath,
              files: {
                hostnamePath: join(s.meta.dir, "hostname"),
                hostsPath: join(s.meta.dir, "hosts"),
                resolvConfPath: join(s.meta.dir, "resolv.conf"),
                shmPath: s.meta.shmPath,
              },
            };
            // The rootfs is read for every container, as containerd's WithUser and
            // WithAdditionalGIDs: names resolve through /etc/passwd, and the groups /etc/group
            // gives the user (even a numeric one) join the process's (SupplementalGroupsPolicy
            // Merge).
            const opts = { restrictOomScoreAdj: this.#restrictOom };
            spec = await withReadonlyTempMount(
              mounts,
              (rootfs) =>
                containerSpec(id, specConfig, sandboxInfo, imageConfigOf(image), {
                  ...opts,
                  rootfs,
                }),
            );
            await leased.service(Containers).create({
              container: {
                id,
                image: imageRef,
                labels: {
                  ...config.labels,
                  [KIND_LABEL]: "container",
                  ...Object.fromEntries(
                    config.mounts.flatMap((m, i) =>
                      m.image?.image
                        ? [[
                          `containerd.io/gc.ref.snapshot.${snapshotter}/image-volume-${i}`,
                          imageVolumeKey(id, i),
                        ]]
                        : []
                    ),
                  ),
                },
                runtime: { name: runtimeType },
                spec: { typeUrl: SPEC_TYPE_URL, value: encodeSpec(spec!) },
                snapshotter,
                snapshotKey: id,
                extensions: {
                  [CONTAINER_METADATA_EXT]: {
                    typeUrl: METADATA_TYPE_URL,
                    value: encoder.encode(JSON.stringify(meta)),
                  },
                },
              },
            });
          } catch (err) {
            await this.#unmountImageVolumes(id, snapshotter);
            await leased.service(Snapshots).remove({ snapshotter, key: id }).catch(() => {});
            throw err;
          }
        });
        const entry: ContainerEntry = {
          meta,
          config,
          status: createdStatus(),
          exited: Promise.withResolvers(),
          spec,
        };
        try {
          await this.#saveStatus(entry);
        } catch (err) {
          await this.#deleteRecord(id, snapshotter).catch(() => {});
          throw err;
        }
        this.containers.set(id, entry);
        this.#emit("created", id);
        return id;
      });
    } catch (err) {
      this.#containerNames.release(name);
      throw err;
    }
  }

  /** StartContainer. */
  async startContainer(key: string): Promise<void> {
    const c = this.container(key);
    const id = c.meta.id;
    await this.#locked(id, async () => {
      if (c.status.state !== "created") {
        throw failedPrecondition(`Container "${id}" is ${c.status.state}, not created`);
      }
      const s = this.sandboxes.get(c.meta.sandboxId);
      if (!s?.ready) {
        throw failedPrecondition(`The pod sandbox of container "${id}" is not ready`);
      }
      const tasks = this.#c.service(Tasks);
      let io: ContainerIO | undefined;
      try {
        io = await ContainerIO.create(this.#ioDir(id), id, {
          stdin: c.config.stdin,
          tty: c.config.tty,
        });
        if (c.meta.logPath) {
          await Deno.mkdir(join(c.meta.logPath, ".."), { recursive: true });
        }
        await io.attachLog(c.meta.logPath, this.config.max_container_log_line_size);
        const { mounts } = await this.#c.service(Snapshots).mounts({
          snapshotter: this.config.containerd.snapshotter,
          key: id,
        });
        await tasks.create({
          containerId: id,
          rootfs: mounts,
          stdin: io.paths.stdin,
          stdout: io.paths.stdout,
          stderr: io.paths.stderr,
          terminal: io.paths.terminal,
        });
        c.io = io;
        c.status = { ...c.status, state: "running", startedAt: nowNs() };
        const { pid } = await tasks.start({ containerId: id });
        c.status.pid = pid;
        await this.#saveStatus(c);
      } catch (err) {
        await tasks.delete({ containerId: id }).catch(() => {});
        await io?.close().catch(() => {});
        c.io = undefined;
        c.status = {
          ...c.status,
          state: "exited",
          pid: 0,
          exitCode: 128,
          finishedAt: nowNs(),
          reason: "StartError",
          message: (err as Error).message,
        };
        c.exited.resolve();
        await this.#saveStatus(c).catch(() => {});
        throw err;
      }
    });
    this.#emit("started", id);
  }

  /** StopContainer: the stop signal, then SIGKILL after `timeoutSec`. */
  async stopContainer(key: string, timeoutSec: number): Promise<void> {
    const c = this.container(key);
    const id = c.meta.id;
    if (c.status.state !== "running") return;
    const tasks = this.#c.service(Tasks);
    const kill = async (signal: number) => {
      await tasks.kill({ containerId: id, signal, all: true }).catch((err) => {
        if (!isNotFound(err)) throw err;
      });
    };
    if (timeoutSec > 0) {
      const name = c.config.stopSignal ? undefined : c.meta.stopSignal || "SIGTERM";
      const signal = name ? signalNumber(name) : c.config.stopSignal;
      await kill(signal || 15);
      await within(c.exited.promise, timeoutSec * 1000);
      if (c.status.state !== "running") return;
    }
    await kill(9);
    await within(c.exited.promise, 30_000);
    if (c.status.state === "running") {
      throw deadlineExceeded(`Container "${id}" did not stop after SIGKILL`);
    }
  }

  /** RemoveContainer: stops it if running, removes it and its snapshot. */
  async removeContainer(key: string): Promise<void> {
    let c: ContainerEntry;
    try {
      c = this.container(key);
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
    const id = c.meta.id;
    if (c.status.state === "running") await this.stopContainer(id, 0);
    await this.#locked(id, async () => {
      if (!this.containers.has(id)) return;
      c.status.removing = true;
      await this.#c.service(Tasks).delete({ containerId: id }).catch(() => {});
      await c.io?.close().catch(() => {});
      await this.#deleteRecord(id, this.config.containerd.snapshotter);
      await Deno.remove(this.#containerDir(id), { recursive: true }).catch(() => {});
      await Deno.remove(this.#ioDir(id), { recursive: true }).catch(() => {});
      this.containers.delete(id);
      this.#containerNames.release(c.meta.name);
    });
    this.#emit("deleted", id);
  }

  /** ReopenContainerLog. */
  async reopenContainerLog(key: string): Promise<void> {
    const c = this.container(key);
    if (c.status.state !== "running" || !c.io) {
      throw failedPrecondition(`Container "${c.meta.id}" is not running`);
    }
    if (!c.meta.logPath) return;
    await c.io.reopenLog();
  }

  /** ExecSync: runs `cmd` in the container and returns its output and exit code. */
  async execSync(
    key: string,
    cmd: string[],
    timeoutSec: number,
  ): Promise<{ stdout: Uint8Array; stderr: Uint8Array; exitCode: number }> {
    const c = this.container(key);
    const id = c.meta.id;
    if (cmd.length === 0) throw invalidArgument("ExecSync needs a command");
    if (c.status.state !== "running") {
      throw failedPrecondition(`Container "${id}" is not running`);
    }
    const execId = newId().slice(0, 32);
    const tasks = this.#c.service(Tasks);
    const io = await ExecIO.create(join(this.#ioDir(id), "exec"), execId, {});
    const ids = { containerId: id, execId };
    let created = false;
    try {
      await tasks.exec({
        ...ids,
        spec: await this.execProcess(c, cmd, false),
        stdin: io.paths.stdin,
        stdout: io.paths.stdout,
        stderr: io.paths.stderr,
        terminal: false,
      });
      created = true;
      const waited = tasks.wait(ids, { timeoutMs: 0 });
      waited.catch(() => {});
      await tasks.start(ids);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = timeoutSec > 0
        ? new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), timeoutSec * 1000))
        : new Promise<"timeout">(() => {});
      const r = await Promise.race([waited, timedOut]);
      clearTimeout(timer);
      if (r === "timeout") {
        await tasks.kill({ ...ids, signal: 9 }).catch(() => {});
        await within(waited.catch(() => {}), 5000);
        throw deadlineExceeded(
          `Command ${JSON.stringify(cmd)} in container "${id}" timed out after ${timeoutSec}s`,
        );
      }
      const out = await within(io.wait(), 5000);
      return {
        stdout: out?.stdout ?? new Uint8Array(),
        stderr: out?.stderr ?? new Uint8Array(),
        exitCode: r.exitStatus,
      };
    } finally {
      if (created) await tasks.deleteProcess(ids).catch(() => {});
      await io.close().catch(() => {});
    }
  }

  /**
   * The process spec of an exec in container `c` (its own process with `cmd` as args), as the
   * Any that Tasks.Exec takes.
   */
  async execProcess(
    c: ContainerEntry,
    cmd: string[],
    terminal: boolean,
  ): Promise<{ typeUrl: string; value: Uint8Array }> {
    const spec = c.spec ?? await this.#specOf(c.meta.id);
    const proc = { ...spec.process, args: cmd, terminal };
    return { typeUrl: PROCESS_SPEC_TYPE_URL, value: encoder.encode(JSON.stringify(proc)) };
  }

  async #specOf(id: string): Promise<Spec> {
    const { container } = await this.#c.service(Containers).get({ id });
    if (!container?.spec) throw notFound(`Container "${id}" has no spec`);
    return JSON.parse(decoder.decode(container.spec.value));
  }

  /** UpdateContainerResources: the new limits go to the running task and the spec. */
  async updateContainerResources(key: string, resources: unknown): Promise<void> {
    const c = this.container(key);
    const id = c.meta.id;
    await this.#locked(id, async () => {
      const spec = c.spec ?? await this.#specOf(id);
      spec.linux = { ...spec.linux, resources: resources as Record<string, unknown> } as Spec[
        "linux"
      ];
      await this.#c.service(Containers).update({
        container: { id, spec: { typeUrl: SPEC_TYPE_URL, value: encodeSpec(spec) } },
        updateMask: { paths: ["spec"] },
      });
      c.spec = spec;
      if (c.status.state === "running") {
        await this.#c.service(Tasks).update({
          containerId: id,
          resources: {
            typeUrl: RESOURCES_TYPE_URL,
            value: encoder.encode(JSON.stringify(resources)),
          },
        });
      }
    });
  }

  /** Waits for the pause processes' and containers' exits to settle (for tests). */
  async close(): Promise<void> {
    for (const c of this.containers.values()) await c.io?.close().catch(() => {});
  }
}
