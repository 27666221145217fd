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
import { Containers } from "../../api/gen/containerd/services/containers/v1/containers_pb.ts";
import { Tasks } from "../../api/gen/containerd/services/tasks/v1/tasks_pb.ts";
import type { TainerdClient } from "../../client/client.ts";
import { failedPrecondition, notFound } from "../errdefs.ts";
import { openFifoSet } from "./io/fifo.ts";
import { type CriRuntime, within } from "./runtime.ts";
import { newId } from "./store.ts";
import type { StreamingRuntime, StreamIO } from "./streaming/server.ts";

const PROCESS_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

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
    const { container } = await this.#c.service(Containers).get({ id: c.meta.id });
    if (!container?.spec) throw notFound(`Container "${containerId}" has no spec`);
    const spec = JSON.parse(decoder.decode(container.spec.value));
    const proc = { ...spec.process, args: cmd, terminal: io.tty };
    const fifos = await openFifoSet(
      join(this.#rt.ioRoot, c.meta.id, "exec"),
      execId,
      { stdin: io.stdin !== null, tty: io.tty },
    );
    let created = false;
    try {
      await tasks.exec({
        ...ids,
        spec: { typeUrl: PROCESS_SPEC_TYPE_URL, value: encoder.encode(JSON.stringify(proc)) },
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

  async attach(containerId: string, io: StreamIO): Promise<void> {
    const c = this.#rt.container(containerId);
    if (c.status.state !== "running" || !c.io) {
      throw failedPrecondition(`Container "${containerId}" is not running`);
    }
    const cio = c.io;
    const writers = {
      stdout: io.stdout?.getWriter(),
      stderr: (io.stderr ?? (io.tty ? null : io.stdout))?.getWriter(),
    };
    if (io.tty) writers.stderr = undefined;
    const ended = Promise.withResolvers<void>();
    let open = (writers.stdout ? 1 : 0) + (writers.stderr ? 1 : 0);
    const stop = cio.onOutput((stream, chunk) => {
      const w = writers[stream];
      if (!w) return;
      if (chunk === null) {
        if (--open <= 0) ended.resolve();
        return;
      }
      w.write(chunk).catch(() => {});
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
    const stdinDone = (async () => {
      if (!io.stdin) return new Promise<void>(() => {});
      const w = cio.stdin;
      for await (const chunk of io.stdin) await w?.write(chunk);
      if (c.config.stdinOnce && w) {
        await w.close().catch(() => {});
        await tasks.closeIO({ containerId: c.meta.id, execId: "", stdin: true }).catch(() => {});
      }
    })();
    try {
      await Promise.race([ended.promise, c.exited.promise, stdinDone]);
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
