/**
 * The daemon: config, directories, the root lock, plugin init in dependency order, the API
 * server, and a clean shutdown on SIGTERM/SIGINT.
 *
 * @module
 */

import { type Config, loadConfig } from "../config/config.ts";
import { isLogLevel, Logger, type LogLevel } from "../log.ts";
import { failedPrecondition, invalidArgument } from "../plugins/errdefs.ts";
import { BUILTINS } from "../plugins/builtins.ts";
import { PluginSet, type Registration } from "../plugins/plugin.ts";
import { startListeners } from "../plugins/metrics/plugin.ts";
import { Notifier } from "./notify.ts";
import { ApiServer } from "../server/server.ts";
import { isGrpcService, isTtrpcService } from "../server/service.ts";
import { TtrpcServer } from "../ttrpc/server.ts";
import { IdleReclaimer } from "../sys/reclaim.ts";
import { revisionOf, VERSION } from "../version.ts";

/** Command-line overrides of the config, as containerd's flags. */
export interface DaemonFlags {
  config?: string;
  address?: string;
  root?: string;
  state?: string;
  logLevel?: string;
}

/** Merges flags over the config file (flags win). */
export async function resolveConfig(flags: DaemonFlags, defaultPath: string): Promise<Config> {
  const cfg = await loadConfig(flags.config ?? defaultPath, flags.config === undefined);
  if (flags.address) cfg.grpc.address = flags.address;
  if (flags.root) cfg.root = flags.root;
  if (flags.state) cfg.state = flags.state;
  if (flags.logLevel) cfg.debug.level = flags.logLevel;
  for (const [k, v] of [["root", cfg.root], ["state", cfg.state], ["address", cfg.grpc.address]]) {
    if (!v.startsWith("/")) throw invalidArgument(`The ${k} must be an absolute path, not "${v}"`);
  }
  if (cfg.root === cfg.state) {
    throw invalidArgument(`The root and state directories must differ (both are "${cfg.root}")`);
  }
  return cfg;
}

/** A running daemon. */
export class Daemon {
  readonly config: Config;
  readonly plugins: PluginSet;
  readonly log: Logger;
  #server?: ApiServer;
  /** Gives memory back after each burst of calls (see sys/reclaim.ts). */
  readonly #reclaimer = new IdleReclaimer({
    allowFlagChange: true,
    onReclaim: (ms) => this.log.debug("memory reclaimed", { ms: ms.toFixed(1) }),
  });
  #ttrpc?: TtrpcServer;
  #ttrpcDone?: Promise<void>;
  #lock?: Deno.FsFile;
  #stopping?: Promise<void>;

  private constructor(config: Config, plugins: PluginSet, log: Logger) {
    this.config = config;
    this.plugins = plugins;
    this.log = log;
  }

  /**
   * Starts a daemon: takes the root lock (a second daemon on the same root refuses to start),
   * initialises the plugins and listens on the API socket.
   */
  static async start(
    config: Config,
    opts: { registrations?: readonly Registration[]; log?: Logger } = {},
  ): Promise<Daemon> {
    const level: LogLevel = isLogLevel(config.debug.level) ? config.debug.level : "info";
    const log = opts.log ?? new Logger(level);
    const started = performance.now();
    log.info("starting tainerd", { version: VERSION, revision: revisionOf() });
    await Deno.mkdir(config.root, { recursive: true, mode: 0o711 });
    await Deno.mkdir(config.state, { recursive: true, mode: 0o711 });
    const lock = await lockRoot(config.root);
    const plugins = new PluginSet();
    const daemon = new Daemon(config, plugins, log);
    daemon.#lock = lock;
    try {
      await plugins.initAll(opts.registrations ?? BUILTINS, {
        daemonRoot: config.root,
        daemonState: config.state,
        address: config.grpc.address,
        ttrpcAddress: ttrpcAddressOf(config),
        pluginConfigs: config.plugins,
        disabled: config.disabled_plugins,
        required: config.required_plugins,
        log,
      });
      await startListeners(config, plugins, log);
      const services = [...plugins.getAll("io.containerd.grpc.v1").values()].filter(
        isGrpcService,
      );
      daemon.#server = await ApiServer.listen({
        address: config.grpc.address,
        uid: config.grpc.uid,
        gid: config.grpc.gid,
        maxRecvMessageSize: config.grpc.max_recv_message_size,
        maxSendMessageSize: config.grpc.max_send_message_size,
        services,
        log,
        onCall: () => daemon.#reclaimer.touch(),
      });
      const ttrpcAddress = ttrpcAddressOf(config);
      const ttrpc = new TtrpcServer({
        onRequest: () => daemon.#reclaimer.touch(),
        onError: (err) => log.warn(`ttrpc: ${err instanceof Error ? err.message : String(err)}`),
      });
      for (const p of plugins.getAll("io.containerd.grpc.v1").values()) {
        if (isTtrpcService(p)) p.registerTtrpc(ttrpc);
      }
      await Deno.remove(ttrpcAddress).catch(() => {});
      const listener = Deno.listen({ transport: "unix", path: ttrpcAddress });
      await Deno.chmod(ttrpcAddress, 0o660);
      daemon.#ttrpc = ttrpc;
      daemon.#ttrpcDone = ttrpc.serve(listener);
      await plugins.servingAll(log);
    } catch (err) {
      await daemon.#server?.close();
      await daemon.#ttrpc?.close();
      await plugins.closeAll(log);
      lock.close();
      throw err;
    }
    // Since the process started (module loading included), and since the daemon's own start.
    log.info("serving", {
      address: config.grpc.address,
      process_ms: Math.round(performance.now()),
    });
    log.info(
      `tainerd successfully booted in ${((performance.now() - started) / 1000).toFixed(3)}s`,
    );
    // Start-up garbage (module evaluation, descriptors, plugin init) goes once things settle.
    daemon.#reclaimer.touch();
    return daemon;
  }

  /** Shuts down: the API first (in-flight calls may finish), then plugins, then the lock. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.log.info("stopping tainerd");
      const health = this.plugins.getAll<{ shutdown?: () => void }>("io.containerd.grpc.v1")
        .get("healthcheck");
      health?.shutdown?.();
      this.#reclaimer.stop();
      await this.#server?.close();
      const grace = new AbortController();
      const timer = setTimeout(() => grace.abort(), 2000);
      await this.#ttrpc?.shutdown(grace.signal);
      clearTimeout(timer);
      await this.#ttrpcDone?.catch(() => {});
      await this.plugins.closeAll(this.log);
      this.#lock?.close();
      this.log.info("tainerd stopped");
    })();
    return this.#stopping;
  }
}

/** The ttrpc socket shims talk to: `[ttrpc] address`, else `<grpc address>.ttrpc`. */
export function ttrpcAddressOf(config: Config): string {
  return config.ttrpc.address || `${config.grpc.address}.ttrpc`;
}

/** Takes an exclusive lock on `<root>/tainerd.lock`; FailedPrecondition if another holds it. */
async function lockRoot(root: string): Promise<Deno.FsFile> {
  const path = `${root}/tainerd.lock`;
  const file = await Deno.open(path, { read: true, write: true, create: true, mode: 0o600 });
  if (!(await file.tryLock(true))) {
    file.close();
    let holder = "";
    try {
      holder = (await Deno.readTextFile(path)).trim();
    } catch {
      // Unreadable: say nothing about the holder.
    }
    throw failedPrecondition(
      `Another tainerd daemon is using root "${root}"${holder ? ` (pid ${holder})` : ""}`,
    );
  }
  await file.truncate(0);
  await file.write(new TextEncoder().encode(`${Deno.pid}\n`));
  return file;
}

/** Runs the daemon in the foreground until SIGTERM or SIGINT. */
export async function runDaemon(flags: DaemonFlags, defaultConfigPath: string): Promise<void> {
  // Taken (and removed from the environment) before any child process can inherit it.
  const notifier = Notifier.fromEnv();
  const config = await resolveConfig(flags, defaultConfigPath);
  const daemon = await Daemon.start(config);
  const notify = (fn: (n: Notifier) => void) => {
    try {
      if (notifier) fn(notifier);
    } catch (err) {
      daemon.log.warn("cannot notify the service manager", {
        socket: notifier?.address,
        error: err instanceof Error ? err.message : String(err),
      });
    }
  };
  notify((n) => n.ready(`serving on ${config.grpc.address}`));
  await new Promise<void>((resolve) => {
    const onSignal = (sig: Deno.Signal) => () => {
      daemon.log.info(`received ${sig}, shutting down`);
      resolve();
    };
    const term = onSignal("SIGTERM");
    const int = onSignal("SIGINT");
    Deno.addSignalListener("SIGTERM", term);
    Deno.addSignalListener("SIGINT", int);
  });
  notify((n) => n.stopping("shutting down"));
  await daemon.stop();
}
