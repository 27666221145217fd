/**
 * What the streaming server runs: exec (a task process with its stdio on FIFOs bridged to
 * the client's streams), attach (the container's stdin and its output as it is logged) and
 * port forwarding (a connection to `127.0.0.1:<port>` inside the pod's network namespace,
 * made by `nsenter --net=<pinned netns>` running socat — the daemon never enters a namespace
 * itself — as the first CRI implementations did).
 *
 * @module
 */

import { join } from "node:path";
import { Tasks } from "../../api/gen/containerd/services/tasks/v1/tasks_pb.ts";
import type { TainerdClient } from "../../client/client.ts";
import { failedPrecondition } from "../errdefs.ts";
import { openFifoSet } from "./io/fifo.ts";
import { type CriRuntime, within } from "./runtime.ts";
import { newId } from "./store.ts";
import type { StreamingRuntime, StreamIO } from "./streaming/server.ts";

async function pump(
  from: ReadableStream<Uint8Array>,
  to: WritableStream<Uint8Array> | null,
): Promise<void> {
  if (!to) {
    for await (const _ of from) { /* nobody listens */ }
    return;
  }
  const w = to.getWriter();
  try {
    for await (const chunk of from) await w.write(chunk);
  } finally {
    await w.close().catch(() => {});
  }
}

/** The CRI runtime's side of the streaming server. */
export class CriStreamingRuntime implements StreamingRuntime {
  readonly #rt: CriRuntime;
  readonly #c: TainerdClient;

  constructor(runtime: CriRuntime, client: TainerdClient) {
    this.#rt = runtime;
    this.#c = client;
  }

  async exec(containerId: string, cmd: string[], io: StreamIO): Promise<{ exitCode: number }> {
    const c = this.#rt.container(containerId);
    if (c.status.state !== "running") {
      throw failedPrecondition(`Container "${containerId}" is not running`);
    }
    const tasks = this.#c.service(Tasks);
    const execId = newId().slice(0, 32);
    const ids = { containerId: c.meta.id, execId };
    const fifos = await openFifoSet(
      join(this.#rt.ioRoot, c.meta.id, "exec"),
      execId,
      { stdin: io.stdin !== null, tty: io.tty },
    );
    let created = false;
    try {
      await tasks.exec({
        ...ids,
        spec: await this.#rt.execProcess(c, cmd, io.tty),
        stdin: fifos.paths.stdin,
        stdout: fifos.paths.stdout,
        stderr: fifos.paths.stderr,
        terminal: io.tty,
      });
      created = true;
      const waited = tasks.wait(ids, { timeoutMs: 0 });
      waited.catch(() => {});
      const outputs = [pump(fifos.stdout, io.stdout)];
      if (fifos.stderr) outputs.push(pump(fifos.stderr, io.stderr));
      await tasks.start(ids);
      if (io.stdin && fifos.stdin) {
        const stdin = fifos.stdin;
        (async () => {
          try {
            for await (const chunk of io.stdin!) await stdin.write(chunk);
          } catch { /* the client went away */ }
          await stdin.close().catch(() => {});
          await tasks.closeIO({ ...ids, stdin: true }).catch(() => {});
        })();
      }
      if (io.resize) {
        (async () => {
          for await (const size of io.resize!) {
            await tasks.resizePty({ ...ids, width: size.width, height: size.height })
              .catch(() => {});
          }
        })().catch(() => {});
      }
      const r = await waited;
      await within(Promise.allSettled(outputs), 2000);
      return { exitCode: r.exitStatus };
    } finally {
      if (created) await tasks.deleteProcess(ids).catch(() => {});
      await fifos.close().catch(() => {});
    }
  }

  /**
   * Attaches as containerd's `ContainerIO.Attach`: the client's stdin goes to the container's
   * (shared with other attached clients), the output from now on comes back. The attach ends
   * when the container's output ends (it exited), when the client goes away, or when the
   * client's stdin ends; then, for a container with `stdin_once` and no terminal, the
   * container's stdin is closed and the output goes on until the container exits.
   */
  async attach(containerId: string, io: StreamIO): Promise<void> {
    const c = this.#rt.container(containerId);
    if (c.status.state !== "running" || !c.io) {
      throw failedPrecondition(`Container "${containerId}" is not running`);
    }
    const cio = c.io;
    // A stream the client did not ask for is dropped, as containerd does.
    const writers = {
      stdout: io.stdout?.getWriter(),
      stderr: io.tty ? undefined : io.stderr?.getWriter(),
    };
    // Writes to the client, in order, one at a time (a slow client delays only itself).
    let chain = Promise.resolve();
    const ended = Promise.withResolvers<void>();
    let open = (cio.paths.stdout ? 1 : 0) + (cio.paths.stderr ? 1 : 0);
    const stop = cio.onOutput((stream, chunk) => {
      if (chunk === null) {
        if (--open <= 0) ended.resolve();
        return;
      }
      const w = writers[stream];
      if (!w) return;
      const copy = chunk.slice();
      chain = chain.then(() => w.write(copy)).catch(() => {});
    });
    const tasks = this.#c.service(Tasks);
    if (io.resize) {
      (async () => {
        for await (const size of io.resize!) {
          await tasks.resizePty({
            containerId: c.meta.id,
            execId: "",
            width: size.width,
            height: size.height,
          }).catch(() => {});
        }
      })().catch(() => {});
    }
    const forever = new Promise<void>(() => {});
    // The container ended: what it wrote last still reaches the client.
    const exited = c.exited.promise.then(() => within(ended.promise, 2000)).then(() => {});
    const stdinDone = (async () => {
      if (!io.stdin) return forever;
      const w = cio.stdin;
      try {
        for await (const chunk of io.stdin) await w?.write(chunk);
      } catch {
        return; // the client reset its stdin: it is gone
      }
      if (c.config.stdinOnce && !io.tty && w) {
        await w.close().catch(() => {});
        await tasks.closeIO({ containerId: c.meta.id, execId: "", stdin: true }).catch(() => {});
        return forever;
      }
    })();
    try {
      await Promise.race([ended.promise, exited, stdinDone, io.clientGone ?? forever]);
      await chain;
    } finally {
      stop();
      await writers.stdout?.close().catch(() => {});
      await writers.stderr?.close().catch(() => {});
    }
  }

  async portForward(
    podSandboxId: string,
    port: number,
    conn: { readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> },
  ): Promise<void> {
    const s = this.#rt.sandbox(podSandboxId);
    if (!s.ready) throw failedPrecondition(`Pod sandbox "${podSandboxId}" is not ready`);
    const args = s.meta.netnsPath
      ? [`--net=${s.meta.netnsPath}`, "socat", "-", `TCP4:127.0.0.1:${port}`]
      : ["--", "socat", "-", `TCP4:127.0.0.1:${port}`];
    const child = new Deno.Command("nsenter", {
      args,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const toPod = conn.readable.pipeTo(child.stdin).catch(() => {});
    const fromPod = child.stdout.pipeTo(conn.writable).catch(() => {});
    const errText = new Response(child.stderr).text();
    const status = await child.status;
    await Promise.allSettled([toPod, fromPod]);
    if (!status.success) {
      const msg = (await errText).trim();
      throw failedPrecondition(
        `Port forward to port ${port} of pod sandbox "${s.meta.id}" failed: ${msg}`,
      );
    }
  }
}
