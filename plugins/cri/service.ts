/**
 * `runtime.v1.RuntimeService` over {@link CriRuntime}: request validation, the mapping of
 * sandboxes and containers to CRI messages, filters, statistics and the container event
 * stream.
 *
 * @module
 */

import { create, fromJson, type JsonValue, toJson } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { Snapshots } from "../../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import { Tasks } from "../../api/gen/containerd/services/tasks/v1/tasks_pb.ts";
import {
  CgroupDriver,
  type Container,
  type ContainerEventResponse,
  ContainerEventResponseSchema,
  ContainerEventType,
  ContainerSchema,
  ContainerState,
  type ContainerStats,
  ContainerStatsSchema,
  type ContainerStatus,
  ContainerStatusSchema,
  LinuxContainerResourcesSchema,
  NamespaceMode,
  type PodSandbox,
  PodSandboxSchema,
  PodSandboxState,
  type PodSandboxStats,
  PodSandboxStatsSchema,
  type PodSandboxStatus,
  PodSandboxStatusSchema,
  RuntimeService,
} from "../../api/gen/runtime/v1/api_pb.ts";
import type { TainerdClient } from "../../client/client.ts";
import type { Logger } from "../../log.ts";
import { VERSION } from "../../version.ts";
import { invalidArgument, notImplemented, unavailable } from "../errdefs.ts";

/**
 * Whether recursive read-only mounts (runc's `rro`) work: they need mount_setattr(2), Linux
 * 5.12+ (and runc 1.1+, Debian 12 has 1.1.5).
 */
const RRO_SUPPORTED = (() => {
  const [major, minor] = Deno.osRelease().split(".").map((x) => parseInt(x, 10));
  return major > 5 || (major === 5 && minor >= 12);
})();
import type { Cni } from "./cni/cni.ts";
import type { CriConfig } from "./config.ts";
import type { ContainerEntry, ContainerEventKind, CriRuntime, SandboxEntry } from "./runtime.ts";
import { type CgroupUsage, NanoCoresTracker, usageFromMetric } from "./stats.ts";
import { timestampNs } from "./store.ts";
import type { StreamingServer } from "./streaming/server.ts";

/** The CRI API version tainerd speaks. */
export const CRI_API_VERSION = "v1";

const STATE: Record<string, ContainerState> = {
  created: ContainerState.CONTAINER_CREATED,
  running: ContainerState.CONTAINER_RUNNING,
  exited: ContainerState.CONTAINER_EXITED,
  unknown: ContainerState.CONTAINER_UNKNOWN,
};

const EVENT_TYPE: Record<ContainerEventKind, ContainerEventType> = {
  created: ContainerEventType.CONTAINER_CREATED_EVENT,
  started: ContainerEventType.CONTAINER_STARTED_EVENT,
  stopped: ContainerEventType.CONTAINER_STOPPED_EVENT,
  deleted: ContainerEventType.CONTAINER_DELETED_EVENT,
};

function matchLabels(labels: Record<string, string>, selector: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

/** What the service needs besides the runtime. */
export interface RuntimeServiceDeps {
  runtime: () => Promise<CriRuntime>;
  client: () => TainerdClient;
  cni: Cni;
  config: CriConfig;
  streaming: () => StreamingServer | undefined;
  log: Logger;
}

/** The RuntimeService handlers. */
export class CriRuntimeService {
  readonly #d: RuntimeServiceDeps;
  readonly #nanoCores = new NanoCoresTracker();
  readonly #listeners = new Set<(e: ContainerEventResponse) => void>();

  constructor(deps: RuntimeServiceDeps) {
    this.#d = deps;
  }

  /** Publishes a container event to GetContainerEvents streams. */
  publish(kind: ContainerEventKind, containerId: string, rt: CriRuntime): void {
    if (this.#listeners.size === 0) return;
    const c = rt.containers.get(containerId);
    const sandbox = c ? rt.sandboxes.get(c.meta.sandboxId) : undefined;
    const e = create(ContainerEventResponseSchema, {
      containerId,
      containerEventType: EVENT_TYPE[kind],
      createdAt: BigInt(Date.now()) * 1_000_000n,
      podSandboxStatus: sandbox ? this.#sandboxStatus(sandbox) : undefined,
      containersStatuses: c ? [this.#containerStatus(c)] : [],
    });
    for (const l of this.#listeners) l(e);
  }

  #sandboxStatus(s: SandboxEntry): PodSandboxStatus {
    const ns = s.config.linux?.securityContext?.namespaceOptions;
    return create(PodSandboxStatusSchema, {
      id: s.meta.id,
      metadata: s.config.metadata,
      state: s.ready ? PodSandboxState.SANDBOX_READY : PodSandboxState.SANDBOX_NOTREADY,
      createdAt: BigInt(s.meta.createdAt),
      network: {
        ip: s.meta.ip,
        additionalIps: s.meta.additionalIps.map((ip) => ({ ip })),
      },
      linux: {
        namespaces: {
          options: {
            network: ns?.network ?? NamespaceMode.POD,
            pid: ns?.pid ?? NamespaceMode.CONTAINER,
            ipc: ns?.ipc ?? NamespaceMode.POD,
            targetId: ns?.targetId ?? "",
          },
        },
      },
      labels: s.config.labels,
      annotations: s.config.annotations,
      runtimeHandler: s.meta.runtimeHandler,
    });
  }

  #podSandbox(s: SandboxEntry): PodSandbox {
    return create(PodSandboxSchema, {
      id: s.meta.id,
      metadata: s.config.metadata,
      state: s.ready ? PodSandboxState.SANDBOX_READY : PodSandboxState.SANDBOX_NOTREADY,
      createdAt: BigInt(s.meta.createdAt),
      labels: s.config.labels,
      annotations: s.config.annotations,
      runtimeHandler: s.meta.runtimeHandler,
    });
  }

  #container(c: ContainerEntry): Container {
    return create(ContainerSchema, {
      id: c.meta.id,
      podSandboxId: c.meta.sandboxId,
      metadata: c.config.metadata,
      image: { image: c.meta.imageName },
      imageRef: c.meta.imageRef,
      imageId: c.meta.imageId,
      state: STATE[c.status.state],
      createdAt: BigInt(c.meta.createdAt),
      labels: c.config.labels,
      annotations: c.config.annotations,
    });
  }

  #containerStatus(c: ContainerEntry): ContainerStatus {
    return create(ContainerStatusSchema, {
      id: c.meta.id,
      metadata: c.config.metadata,
      state: STATE[c.status.state],
      createdAt: BigInt(c.meta.createdAt),
      startedAt: BigInt(c.status.startedAt),
      finishedAt: BigInt(c.status.finishedAt),
      exitCode: c.status.exitCode,
      image: { image: c.meta.imageName },
      imageRef: c.meta.imageRef,
      imageId: c.meta.imageId,
      reason: c.status.reason,
      message: c.status.message,
      labels: c.config.labels,
      annotations: c.config.annotations,
      mounts: c.config.mounts,
      // The identity of the container's first process, from its spec.
      user: c.spec
        ? {
          linux: {
            uid: BigInt(c.spec.process.user.uid),
            gid: BigInt(c.spec.process.user.gid),
            supplementalGroups: (c.spec.process.user.additionalGids ?? []).map(BigInt),
          },
        }
        : undefined,
      logPath: c.meta.logPath,
      resources: c.spec?.linux?.resources
        ? {
          linux: fromJson(
            LinuxContainerResourcesSchema,
            criResources(c.spec.linux.resources as Record<string, unknown>),
            { ignoreUnknownFields: true },
          ),
        }
        : undefined,
    });
  }

  async #usage(rt: CriRuntime, ids: string[]): Promise<Map<string, CgroupUsage>> {
    const out = new Map<string, CgroupUsage>();
    const running = ids.filter((id) =>
      rt.containers.get(id)?.status.state === "running" || rt.sandboxes.get(id)?.ready
    );
    if (running.length === 0) return out;
    const { metrics } = await this.#d.client().service(Tasks).metrics({
      filters: running.map((id) => `id==${id}`),
    });
    for (const m of metrics) {
      if (!m.data) continue;
      const ts = m.timestamp ? timestampNs(m.timestamp) : BigInt(Date.now()) * 1_000_000n;
      const u = usageFromMetric(m.data.typeUrl, m.data.value, ts);
      if (u) {
        this.#nanoCores.update(m.id, u.cpu);
        out.set(m.id, u);
      }
    }
    return out;
  }

  async #containerStats(
    rt: CriRuntime,
    list: ContainerEntry[],
  ): Promise<ContainerStats[]> {
    const usage = await this.#usage(rt, list.map((c) => c.meta.id));
    const snapshots = this.#d.client().service(Snapshots);
    const out: ContainerStats[] = [];
    for (const c of list) {
      const u = usage.get(c.meta.id);
      const ts = BigInt(Date.now()) * 1_000_000n;
      let layer;
      try {
        const r = await snapshots.usage({
          snapshotter: rt.config.containerd.snapshotter,
          key: c.meta.id,
        });
        layer = {
          timestamp: ts,
          fsId: { mountpoint: "" },
          usedBytes: { value: BigInt(r.size) },
          inodesUsed: { value: BigInt(r.inodes) },
        };
      } catch {
        layer = undefined;
      }
      out.push(create(ContainerStatsSchema, {
        attributes: {
          id: c.meta.id,
          metadata: c.config.metadata,
          labels: c.config.labels,
          annotations: c.config.annotations,
        },
        cpu: u?.cpu,
        memory: u?.memory,
        writableLayer: layer,
      }));
    }
    return out;
  }

  async #podStats(rt: CriRuntime, s: SandboxEntry): Promise<PodSandboxStats> {
    const containers = rt.containersOf(s.meta.id);
    const stats = await this.#containerStats(rt, containers);
    const ts = BigInt(Date.now()) * 1_000_000n;
    // The pod's usage: its pause process's plus its containers' (the cgroupfs driver gives
    // each its own cgroup under the pod's parent).
    const own = (await this.#usage(rt, [s.meta.id])).get(s.meta.id);
    let cpu = own?.cpu.usageCoreNanoSeconds?.value ?? 0n;
    let ws = own?.memory.workingSetBytes?.value ?? 0n;
    let usage = own?.memory.usageBytes?.value ?? 0n;
    let nanoCores = own?.cpu.usageNanoCores?.value ?? 0n;
    for (const c of stats) {
      cpu += c.cpu?.usageCoreNanoSeconds?.value ?? 0n;
      nanoCores += c.cpu?.usageNanoCores?.value ?? 0n;
      ws += c.memory?.workingSetBytes?.value ?? 0n;
      usage += c.memory?.usageBytes?.value ?? 0n;
    }
    return create(PodSandboxStatsSchema, {
      attributes: {
        id: s.meta.id,
        metadata: s.config.metadata,
        labels: s.config.labels,
        annotations: s.config.annotations,
      },
      linux: {
        cpu: {
          timestamp: ts,
          usageCoreNanoSeconds: { value: cpu },
          usageNanoCores: { value: nanoCores },
        },
        memory: {
          timestamp: ts,
          workingSetBytes: { value: ws },
          usageBytes: { value: usage },
        },
        containers: stats,
      },
    });
  }

  /** Adds the handlers to the router. */
  register(router: ConnectRouter): void {
    const d = this.#d;
    const rt = d.runtime;
    router.service(RuntimeService, {
      version: () => ({
        version: "0.1.0",
        runtimeName: "tainerd",
        runtimeVersion: VERSION,
        runtimeApiVersion: CRI_API_VERSION,
      }),
      status: async (req) => {
        const conditions = [{ type: "RuntimeReady", status: true, reason: "", message: "" }];
        let netErr = "";
        try {
          await d.cni.status();
        } catch (err) {
          netErr = (err as Error).message;
        }
        conditions.push({
          type: "NetworkReady",
          status: netErr === "",
          reason: netErr ? "NetworkPluginNotReady" : "",
          message: netErr ? `Network plugin returns error: ${netErr}` : "",
        });
        const info: Record<string, string> = {};
        if (req.verbose) {
          info.config = JSON.stringify({
            ...d.config,
            containerdRootDir: "",
            podCidr: (await rt()).podCidr,
          });
          try {
            info.cniconfig = JSON.stringify(await d.cni.config());
          } catch (err) {
            info.cniconfig = JSON.stringify({ error: (err as Error).message });
          }
          info.lastCNILoadStatus = netErr ? netErr : "OK";
        }
        return {
          status: { conditions },
          info,
          runtimeHandlers: Object.keys(d.config.containerd.runtimes).map((name) => ({
            name,
            features: { recursiveReadOnlyMounts: RRO_SUPPORTED, userNamespaces: false },
          })).concat([{
            name: "",
            features: { recursiveReadOnlyMounts: RRO_SUPPORTED, userNamespaces: false },
          }]),
          features: { supplementalGroupsPolicy: true },
        };
      },
      runtimeConfig: () => ({ linux: { cgroupDriver: CgroupDriver.CGROUPFS } }),
      updateRuntimeConfig: async (req) => {
        (await rt()).podCidr = req.runtimeConfig?.networkConfig?.podCidr ?? "";
        return {};
      },
      runPodSandbox: async (req) => {
        if (!req.config) throw invalidArgument("RunPodSandbox needs a config");
        return { podSandboxId: await (await rt()).runPodSandbox(req.config, req.runtimeHandler) };
      },
      stopPodSandbox: async (req) => {
        const r = await rt();
        try {
          await r.stopPodSandbox(req.podSandboxId);
        } catch (err) {
          // Stopping what does not exist succeeds: the kubelet retries until it does.
          if ((err as { kind?: string }).kind !== "NotFound") throw err;
        }
        return {};
      },
      removePodSandbox: async (req) => {
        await (await rt()).removePodSandbox(req.podSandboxId);
        return {};
      },
      podSandboxStatus: async (req) => {
        const r = await rt();
        const s = r.sandbox(req.podSandboxId);
        const info: Record<string, string> = {};
        if (req.verbose) {
          info.info = JSON.stringify({
            pid: s.pid,
            processStatus: s.ready ? "running" : "stopped",
            netNamespaceClosed: !s.ready,
            image: s.meta.image,
            snapshotKey: s.meta.id,
            snapshotter: r.config.containerd.snapshotter,
            runtimeHandler: s.meta.runtimeHandler,
            runtimeType: s.meta.runtimeType,
            config: s.meta.config,
            runtimeSpec: s.spec,
            cniResult: s.meta.cniResult,
          });
        }
        return {
          status: this.#sandboxStatus(s),
          info,
          containersStatuses: r.containersOf(s.meta.id).map((c) => this.#containerStatus(c)),
          timestamp: BigInt(Date.now()) * 1_000_000n,
        };
      },
      listPodSandbox: async (req) => {
        const r = await rt();
        const f = req.filter;
        let items = [...r.sandboxes.values()];
        if (f?.id) {
          items = items.filter((s) => s.meta.id === f.id || s.meta.id.startsWith(f.id));
        }
        if (f?.state) {
          const want = f.state.state;
          items = items.filter((s) =>
            (s.ready ? PodSandboxState.SANDBOX_READY : PodSandboxState.SANDBOX_NOTREADY) === want
          );
        }
        if (f?.labelSelector) {
          items = items.filter((s) => matchLabels(s.config.labels, f.labelSelector));
        }
        return { items: items.map((s) => this.#podSandbox(s)) };
      },
      createContainer: async (req) => {
        if (!req.config) throw invalidArgument("CreateContainer needs a config");
        return {
          containerId: await (await rt()).createContainer(
            req.podSandboxId,
            req.config,
            req.sandboxConfig,
          ),
        };
      },
      startContainer: async (req) => {
        await (await rt()).startContainer(req.containerId);
        return {};
      },
      stopContainer: async (req) => {
        try {
          await (await rt()).stopContainer(req.containerId, Number(req.timeout));
        } catch (err) {
          // As the CRI API says: stopping a container that does not exist must succeed.
          if ((err as { kind?: string }).kind !== "NotFound") throw err;
        }
        return {};
      },
      removeContainer: async (req) => {
        await (await rt()).removeContainer(req.containerId);
        return {};
      },
      listContainers: async (req) => {
        const r = await rt();
        const f = req.filter;
        let list = [...r.containers.values()];
        if (f?.id) list = list.filter((c) => c.meta.id === f.id || c.meta.id.startsWith(f.id));
        if (f?.podSandboxId) {
          list = list.filter((c) =>
            c.meta.sandboxId === f.podSandboxId || c.meta.sandboxId.startsWith(f.podSandboxId)
          );
        }
        if (f?.state) list = list.filter((c) => STATE[c.status.state] === f.state!.state);
        if (f?.labelSelector) {
          list = list.filter((c) => matchLabels(c.config.labels, f.labelSelector));
        }
        return { containers: list.map((c) => this.#container(c)) };
      },
      containerStatus: async (req) => {
        const r = await rt();
        const c = r.container(req.containerId);
        const info: Record<string, string> = {};
        if (req.verbose) {
          info.info = JSON.stringify({
            sandboxID: c.meta.sandboxId,
            pid: c.status.pid,
            removing: c.status.removing ?? false,
            snapshotKey: c.meta.id,
            snapshotter: r.config.containerd.snapshotter,
            runtimeType: r.sandboxes.get(c.meta.sandboxId)?.meta.runtimeType,
            config: c.meta.config,
            runtimeSpec: c.spec,
          });
        }
        return { status: this.#containerStatus(c), info };
      },
      updateContainerResources: async (req) => {
        const linux = req.linux ? toJson(LinuxContainerResourcesSchema, req.linux) : {};
        await (await rt()).updateContainerResources(
          req.containerId,
          ociResources(linux as Record<string, unknown>),
        );
        return {};
      },
      reopenContainerLog: async (req) => {
        await (await rt()).reopenContainerLog(req.containerId);
        return {};
      },
      execSync: async (req) => {
        const r = await (await rt()).execSync(req.containerId, req.cmd, Number(req.timeout));
        return r;
      },
      exec: async (req) => {
        const r = await rt();
        const c = r.container(req.containerId);
        if (c.status.state !== "running") {
          throw invalidArgument(`Container "${c.meta.id}" is not running`);
        }
        const s = this.#streaming();
        return {
          url: s.getExec({
            containerId: c.meta.id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
          }),
        };
      },
      attach: async (req) => {
        const r = await rt();
        const c = r.container(req.containerId);
        if (c.status.state !== "running") {
          throw invalidArgument(`Container "${c.meta.id}" is not running`);
        }
        return {
          url: this.#streaming().getAttach({
            containerId: c.meta.id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
          }),
        };
      },
      portForward: async (req) => {
        const r = await rt();
        const s = r.sandbox(req.podSandboxId);
        if (!s.ready) throw invalidArgument(`Pod sandbox "${s.meta.id}" is not ready`);
        return {
          url: this.#streaming().getPortForward({ podSandboxId: s.meta.id, ports: req.port }),
        };
      },
      containerStats: async (req) => {
        const r = await rt();
        const c = r.container(req.containerId);
        const [stats] = await this.#containerStats(r, [c]);
        return { stats };
      },
      listContainerStats: async (req) => {
        const r = await rt();
        const f = req.filter;
        let list = [...r.containers.values()].filter((c) => c.status.state === "running");
        if (f?.id) list = list.filter((c) => c.meta.id === f.id || c.meta.id.startsWith(f.id));
        if (f?.podSandboxId) {
          list = list.filter((c) =>
            c.meta.sandboxId === f.podSandboxId || c.meta.sandboxId.startsWith(f.podSandboxId)
          );
        }
        if (f?.labelSelector) {
          list = list.filter((c) => matchLabels(c.config.labels, f.labelSelector));
        }
        return { stats: await this.#containerStats(r, list) };
      },
      podSandboxStats: async (req) => {
        const r = await rt();
        return { stats: await this.#podStats(r, r.sandbox(req.podSandboxId)) };
      },
      listPodSandboxStats: async (req) => {
        const r = await rt();
        const f = req.filter;
        let list = [...r.sandboxes.values()].filter((s) => s.ready);
        if (f?.id) list = list.filter((s) => s.meta.id === f.id || s.meta.id.startsWith(f.id));
        if (f?.labelSelector) {
          list = list.filter((s) => matchLabels(s.config.labels, f.labelSelector));
        }
        const stats = [];
        for (const s of list) stats.push(await this.#podStats(r, s));
        return { stats };
      },
      getContainerEvents: (_req, ctx) => this.#events(ctx.signal),
      // The cAdvisor-style CRI metrics are not collected (containerd 1.6 has neither RPC):
      // Unimplemented tells the kubelet (and critest) to use its own stats provider.
      listMetricDescriptors: () => {
        throw notImplemented("ListMetricDescriptors is not implemented");
      },
      listPodSandboxMetrics: () => {
        throw notImplemented("ListPodSandboxMetrics is not implemented");
      },
    });
  }

  #streaming(): StreamingServer {
    const s = this.#d.streaming();
    if (!s) throw unavailable("The streaming server is not running");
    return s;
  }

  async *#events(signal: AbortSignal): AsyncGenerator<ContainerEventResponse> {
    const queue: ContainerEventResponse[] = [];
    let wake: (() => void) | undefined;
    const listener = (e: ContainerEventResponse) => {
      if (queue.length < 1000) queue.push(e);
      wake?.();
    };
    this.#listeners.add(listener);
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort);
    try {
      while (!signal.aborted) {
        while (queue.length) yield queue.shift()!;
        await new Promise<void>((r) => wake = r);
        wake = undefined;
      }
    } finally {
      this.#listeners.delete(listener);
      signal.removeEventListener("abort", onAbort);
    }
  }
}

/** CRI LinuxContainerResources (proto JSON) → OCI LinuxResources. */
export function ociResources(r: Record<string, unknown>): Record<string, unknown> {
  const n = (v: unknown) => (v === undefined ? undefined : Number(v));
  const cpu: Record<string, unknown> = {};
  if (r.cpuShares !== undefined) cpu.shares = n(r.cpuShares);
  if (r.cpuQuota !== undefined) cpu.quota = n(r.cpuQuota);
  if (r.cpuPeriod !== undefined) cpu.period = n(r.cpuPeriod);
  if (r.cpusetCpus) cpu.cpus = r.cpusetCpus;
  if (r.cpusetMems) cpu.mems = r.cpusetMems;
  const out: Record<string, unknown> = {};
  if (Object.keys(cpu).length) out.cpu = cpu;
  if (r.memoryLimitInBytes !== undefined && Number(r.memoryLimitInBytes) > 0) {
    const limit = n(r.memoryLimitInBytes);
    out.memory = { limit, swap: r.memorySwapLimitInBytes ? n(r.memorySwapLimitInBytes) : limit };
  }
  if (r.unified) out.unified = r.unified;
  return out;
}

/** OCI LinuxResources → CRI LinuxContainerResources (proto JSON). */
export function criResources(r: Record<string, unknown>): JsonValue {
  const cpu = (r.cpu ?? {}) as Record<string, unknown>;
  const mem = (r.memory ?? {}) as Record<string, unknown>;
  const out: Record<string, JsonValue> = {};
  if (cpu.shares !== undefined) out.cpuShares = String(cpu.shares);
  if (cpu.quota !== undefined) out.cpuQuota = String(cpu.quota);
  if (cpu.period !== undefined) out.cpuPeriod = String(cpu.period);
  if (cpu.cpus) out.cpusetCpus = String(cpu.cpus);
  if (cpu.mems) out.cpusetMems = String(cpu.mems);
  if (mem.limit !== undefined) out.memoryLimitInBytes = String(mem.limit);
  if (mem.swap !== undefined) out.memorySwapLimitInBytes = String(mem.swap);
  return out;
}
