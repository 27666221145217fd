/**
 * The debug endpoint, `io.containerd.internal.v1.debug`: with `[debug] address` (a unix
 * socket, mode 0600, owned by `[debug] uid`/`gid`), serves
 * - `GET /debug/vars`: JSON with the runtime's health — uptime, V8/Deno memory, open fds;
 * - `GET /debug/pprof/profile?seconds=N`: a V8 CPU profile of the daemon for N seconds
 *   (default 30, at most 300), in the `.cpuprofile` JSON Chrome DevTools opens, taken with
 *   `node:inspector`'s Profiler.
 *
 * @module
 */

import type { Logger } from "../../log.ts";
import { PluginType, type Registration } from "../plugin.ts";

const STARTED = performance.now();

/** The debug server; listens once {@link listen} is called. */
export class DebugServer {
  readonly #log: Logger;
  #server?: Deno.HttpServer;
  #path?: string;
  #profiling = false;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Health as JSON. */
  vars(): Record<string, unknown> {
    let fds: number | undefined;
    try {
      fds = [...Deno.readDirSync("/proc/self/fd")].length;
    } catch { /* not Linux */ }
    return {
      pid: Deno.pid,
      uptime_seconds: (performance.now() - STARTED) / 1000,
      deno: Deno.version,
      memory: Deno.memoryUsage(),
      open_fds: fds,
      load_average: Deno.loadavg(),
    };
  }

  /** Takes a CPU profile for `seconds`. */
  async profile(seconds: number, signal: AbortSignal): Promise<unknown> {
    // Loaded on demand: node:inspector is of no use to a daemon nobody profiles.
    const { Session } = await import("node:inspector");
    const session = new Session();
    session.connect();
    const post = (method: string) =>
      new Promise<Record<string, unknown>>((resolve, reject) =>
        session.post(
          method,
          (err: Error | null, r?: object) =>
            err ? reject(err) : resolve(r as Record<string, unknown>),
        )
      );
    try {
      await post("Profiler.enable");
      await post("Profiler.start");
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, seconds * 1000);
        signal.addEventListener("abort", () => {
          clearTimeout(t);
          resolve();
        }, { once: true });
      });
      const r = await post("Profiler.stop");
      await post("Profiler.disable");
      return r.profile;
    } finally {
      session.disconnect();
    }
  }

  async #handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    if (req.method !== "GET") return new Response("method not allowed\n", { status: 405 });
    if (url.pathname === "/debug/vars") return Response.json(this.vars());
    if (url.pathname === "/debug/pprof/profile") {
      const raw = url.searchParams.get("seconds") ?? "30";
      const seconds = Number(raw);
      if (!Number.isFinite(seconds) || seconds <= 0 || seconds > 300) {
        return Response.json({ error: `seconds must be in (0, 300], got "${raw}"` }, {
          status: 400,
        });
      }
      if (this.#profiling) {
        return Response.json({ error: "a CPU profile is already being taken" }, { status: 409 });
      }
      this.#profiling = true;
      try {
        const profile = await this.profile(seconds, req.signal);
        return Response.json(profile, {
          headers: { "content-disposition": 'attachment; filename="tainerd.cpuprofile"' },
        });
      } catch (err) {
        return Response.json({
          error: `CPU profiling failed: ${(err as Error).message}; ` +
            "run the daemon with deno's --cpu-prof instead",
        }, { status: 501 });
      } finally {
        this.#profiling = false;
      }
    }
    return new Response("not found\n", { status: 404 });
  }

  /** Serves on the unix socket `path`, created mode 0600; errors are logged, not thrown. */
  async listen(path: string, uid: number, gid: number): Promise<void> {
    try {
      const st = await Deno.lstat(path).catch(() => undefined);
      if (st && !st.isSocket) throw new Error("the path exists and is not a socket");
      if (st) await Deno.remove(path);
      const dir = path.substring(0, path.lastIndexOf("/")) || "/";
      await Deno.mkdir(dir, { recursive: true, mode: 0o711 });
      const oldMask = Deno.umask(0o177);
      try {
        this.#server = Deno.serve({
          path,
          onListen: () => this.#log.info("debug endpoint listening", { address: path }),
        }, (req) => this.#handle(req));
      } finally {
        Deno.umask(oldMask);
      }
      this.#path = path;
      await Deno.chmod(path, 0o600);
      if (uid !== 0 || gid !== 0) await Deno.chown(path, uid, gid);
    } catch (err) {
      this.#log.error(`Cannot serve debug endpoint on "${path}": ${(err as Error).message}`);
    }
  }

  async close(): Promise<void> {
    await this.#server?.shutdown();
    this.#server = undefined;
    if (this.#path) await Deno.remove(this.#path).catch(() => {});
  }
}

/** `io.containerd.internal.v1.debug`. */
export const debugPlugin: Registration<DebugServer> = {
  type: PluginType.Internal,
  id: "debug",
  init: (ic) => new DebugServer(ic.log),
};
