/**
 * `io.containerd.grpc.v1.cri`: kubelet's `runtime.v1.RuntimeService` and
 * `runtime.v1.ImageService` on the daemon's socket, objects in namespace `k8s.io`.
 *
 * The plugin drives the daemon through its own API (a client on the daemon's socket, as
 * containerd's CRI plugin uses a containerd client over local services), so pods and
 * containers are ordinary containers and tasks that `ctr -n k8s.io` sees too. Its work starts
 * once the socket answers ({@link CriPlugin.serving}): the `k8s.io` namespace, the offline
 * pause image, the reload of pods and containers, and the task event subscription.
 *
 * @module
 */

import { fromBinary } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { join } from "node:path";
import { TaskExitSchema, TaskOOMSchema } from "../../api/gen/containerd/events/task_pb.ts";
import { TainerdClient } from "../../client/client.ts";
import type { Logger } from "../../log.ts";
import { isNotFound } from "../errdefs.ts";
import { exchangePlugin } from "../events/plugin.ts";
import type { Exchange } from "../events/exchange.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { Cni } from "./cni/cni.ts";
import { CRI_NAMESPACE, type CriConfig, defaultCriConfig } from "./config.ts";
import { CriImageService } from "./images/service.ts";
import { DEFAULT_SANDBOX_IMAGE, importPauseImage } from "./pause/pause.ts";
import { CriRuntime } from "./runtime.ts";
import { CriRuntimeService } from "./service.ts";
import { nowNs, timestampNs } from "./store.ts";
import { StreamingServer } from "./streaming/server.ts";
import { inProcessTransport } from "../../server/server.ts";
import { type GrpcService, isGrpcService } from "../../server/service.ts";
import { CriStreamingRuntime } from "./streaming_runtime.ts";

/** Message size limit of the CRI's in-process calls (the socket's default). */
const IN_PROCESS_MAX_MESSAGE = 16 * 1024 * 1024;

/** The CRI plugin instance. */
export class CriPlugin {
  readonly config: CriConfig;
  readonly cni: Cni;
  readonly #ic: { root: string; state: string; address: string; log: Logger };
  readonly #exchange: Exchange;
  readonly #ready = Promise.withResolvers<CriRuntime>();
  readonly #abort = new AbortController();
  readonly service: CriRuntimeService;
  /** A client of the daemon's own socket (it connects on first use, after `serving`). */
  readonly #client: TainerdClient;
  readonly images: CriImageService;
  #runtime?: CriRuntime;
  #streaming?: StreamingServer;

  constructor(
    config: CriConfig,
    ic: { root: string; state: string; address: string; log: Logger },
    exchange: Exchange,
    services?: () => readonly GrpcService[],
  ) {
    this.config = config;
    this.#ic = ic;
    this.#exchange = exchange;
    this.#ready.promise.catch(() => {});
    // The daemon's services in process when given (no HTTP/2 client and server per call, as
    // through the socket), else through the socket.
    this.#client = new TainerdClient({
      address: ic.address,
      namespace: CRI_NAMESPACE,
      transport: services &&
        ((interceptors) =>
          inProcessTransport(services, {
            log: ic.log,
            maxRecvMessageSize: IN_PROCESS_MAX_MESSAGE,
            maxSendMessageSize: IN_PROCESS_MAX_MESSAGE,
          }, interceptors)),
    });
    this.images = new CriImageService({
      client: this.#client,
      snapshotter: config.containerd.snapshotter,
      registryConfigPath: config.registry.config_path,
      snapshotterRoot: join(
        ic.root,
        "..",
        `io.containerd.snapshotter.v1.${config.containerd.snapshotter}`,
      ),
      pinned: () => [config.sandbox_image],
      log: ic.log,
    });
    this.cni = new Cni({
      binDirs: config.cni.bin_dir.split(":").filter(Boolean),
      confDir: config.cni.conf_dir,
      maxConfNum: config.cni.max_conf_num,
    });
    this.service = new CriRuntimeService({
      runtime: () => this.#ready.promise,
      client: () => this.#client,
      cni: this.cni,
      config,
      streaming: () => this.#streaming,
      log: ic.log,
    });
  }

  /** Adds RuntimeService and ImageService to the API router. */
  register(router: ConnectRouter): void {
    this.service.register(router);
    this.images.register(router);
  }

  #starting?: Promise<void>;

  /**
   * Starts the CRI's work once the daemon's socket answers, in the background (as
   * containerd's CRI service runs): the daemon is ready and handles signals meanwhile; CRI
   * calls wait for it.
   */
  serving(): void {
    this.#starting = this.#start().catch((err) =>
      this.#ic.log.error(`cri: cannot start: ${(err as Error).message}`)
    );
  }

  async #start(): Promise<void> {
    const log = this.#ic.log;
    try {
      const client = this.#client;
      const images = this.images;
      await Deno.mkdir(this.#ic.root, { recursive: true, mode: 0o711 });
      await Deno.mkdir(this.#ic.state, { recursive: true, mode: 0o711 });
      const runtime = new CriRuntime({
        config: this.config,
        root: this.#ic.root,
        state: this.#ic.state,
        client,
        images,
        sandboxImage: () => this.#sandboxImage(),
        cni: this.cni,
        log,
        onEvent: (kind, id) => this.service.publish(kind, id, runtime),
      });
      this.#runtime = runtime;
      this.#subscribe(runtime);
      await runtime.load();
      const streaming = new StreamingServer({
        address: this.config.stream_server_address,
        port: Number(this.config.stream_server_port) || 0,
        runtime: new CriStreamingRuntime(runtime, client),
      });
      await streaming.start();
      this.#streaming = streaming;
      this.#ready.resolve(runtime);
      log.info(`cri: serving, streaming server at ${streaming.url}`);
    } catch (err) {
      this.#ready.reject(err);
      throw err;
    }
  }

  #pauseImport?: Promise<unknown>;

  /**
   * The sandbox image: the built-in pause image is imported on first use (offline, no
   * registry), any other is pulled when missing.
   */
  async #sandboxImage() {
    const ref = this.config.sandbox_image;
    if (ref === DEFAULT_SANDBOX_IMAGE && !(await this.images.resolve(ref))) {
      this.#pauseImport ??= importPauseImage(this.#client, {
        name: DEFAULT_SANDBOX_IMAGE,
        namespace: CRI_NAMESPACE,
        snapshotter: this.config.containerd.snapshotter,
      }).finally(() => this.#pauseImport = undefined);
      await this.#pauseImport;
    }
    return await this.images.ensure(ref);
  }

  #subscribe(runtime: CriRuntime): void {
    const log = this.#ic.log;
    (async () => {
      for await (
        const e of this.#exchange.subscribe(
          (e) =>
            e.namespace === CRI_NAMESPACE &&
            (e.topic === "/tasks/exit" || e.topic === "/tasks/oom"),
          this.#abort.signal,
        )
      ) {
        try {
          if (e.topic === "/tasks/oom") {
            runtime.taskOom(fromBinary(TaskOOMSchema, e.event.value).containerId);
            continue;
          }
          const exit = fromBinary(TaskExitSchema, e.event.value);
          if (exit.id && exit.id !== exit.containerId) continue; // an exec'd process
          const at = exit.exitedAt ? timestampNs(exit.exitedAt).toString() : nowNs();
          await runtime.taskExited(exit.containerId, exit.exitStatus, at);
        } catch (err) {
          if (!isNotFound(err)) log.warn(`cri: handling ${e.topic}: ${(err as Error).message}`);
        }
      }
    })();
  }

  /** Stops the streaming server and the event subscription; pods keep running. */
  async close(): Promise<void> {
    await this.#starting;
    this.#abort.abort();
    await this.#streaming?.close().catch(() => {});
    await this.#runtime?.close();
    this.#client.close();
  }
}

/** `io.containerd.grpc.v1.cri`. */
export const criPlugin: Registration<CriPlugin, CriConfig> = {
  type: PluginType.GRPC,
  id: "cri",
  requires: [PluginType.Event, PluginType.Service, PluginType.Runtime, PluginType.Snapshot],
  config: defaultCriConfig,
  init: (ic) =>
    new CriPlugin(
      ic.config,
      { root: ic.root, state: ic.state, address: ic.address, log: ic.log },
      ic.get(exchangePlugin),
      // Every gRPC service but the CRI's own, looked up on the first call (all exist by then).
      () =>
        [...ic.getAll(PluginType.GRPC).values()].filter(isGrpcService).filter((s) =>
          !(s instanceof CriPlugin)
        ),
    ),
};
