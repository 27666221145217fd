/**
 * Test helpers for the shim: busybox rootfs and OCI bundles, a fake daemon that records the
 * events the shim forwards, starting a shim through its `start` action, and cleanup of every
 * container, mount, process and directory a test made.
 *
 * @module
 */

import { fromBinary, type Message } from "@bufbuild/protobuf";
import type { DescMessage } from "@bufbuild/protobuf";
import * as taskEvents from "../../api/gen/containerd/events/task_pb.ts";
import { Events } from "../../api/gen/containerd/services/ttrpc/events/v1/events_pb.ts";
import { Task } from "../../api/gen/containerd/runtime/v2/task/shim_pb.ts";
import { unmountAll } from "../../sys/mount.ts";
import { kill } from "../../sys/libc.ts";
import { createTtrpcClient, TtrpcClient, type TtrpcServiceClient } from "../../ttrpc/client.ts";
import { TtrpcServer } from "../../ttrpc/server.ts";
import { socketPath } from "../address.ts";

/** The repository's entry point, which runs the shim as `main.ts shim …`. */
export const MAIN = new URL("../../main.ts", import.meta.url).pathname;
/** The namespace the tests use. */
export const NAMESPACE = "shimtest";

const EVENT_SCHEMAS: Record<string, DescMessage> = Object.fromEntries(
  (Object.values(taskEvents) as unknown[])
    .filter((v): v is DescMessage =>
      typeof v === "object" && v !== null && (v as { kind?: string }).kind === "message"
    )
    .map((s) => [s.typeName, s]),
);

/** An event as the fake daemon received it. */
export interface ReceivedEvent {
  topic: string;
  namespace: string;
  typeUrl: string;
  // deno-lint-ignore no-explicit-any
  event: Message & Record<string, any>;
}

/** A ttrpc server implementing `Events.Forward`, recording what it gets. */
export class FakeDaemon {
  readonly path: string;
  readonly events: ReceivedEvent[] = [];
  #server: TtrpcServer | null = null;
  #serving: Promise<void> | null = null;
  #waiters: Array<() => void> = [];

  constructor(path: string) {
    this.path = path;
  }

  /** Starts listening (again). */
  start(): void {
    const server = new TtrpcServer();
    server.register(Events, {
      forward: ({ envelope }) => {
        const any = envelope!.event!;
        const schema = EVENT_SCHEMAS[any.typeUrl];
        this.events.push({
          topic: envelope!.topic,
          namespace: envelope!.namespace,
          typeUrl: any.typeUrl,
          event: schema ? fromBinary(schema, any.value) : ({} as never),
        });
        for (const w of this.#waiters.splice(0)) w();
        return {};
      },
    });
    const listener = Deno.listen({ transport: "unix", path: this.path });
    this.#server = server;
    this.#serving = server.serve(listener);
  }

  /** Stops listening and removes the socket. */
  async stop(): Promise<void> {
    await this.#server?.close();
    await this.#serving;
    this.#server = null;
    await Deno.remove(this.path).catch(() => {});
  }

  /** The topics received so far for container `id`. */
  topics(id: string): string[] {
    return this.events.filter((e) => e.event.containerId === id).map((e) => e.topic);
  }

  /** Resolves once `predicate` holds over the received events (or rejects after `timeoutMs`). */
  async waitFor(
    predicate: (events: ReceivedEvent[]) => boolean,
    timeoutMs = 15_000,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate(this.events)) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `Timed out waiting for events; got ${
            JSON.stringify(this.events.map((e) => [e.topic, e.event.containerId, e.event.id]))
          }`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 200));
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

/** Makes a busybox rootfs (relative applet links) in `dir`. */
export async function makeRootfs(dir: string): Promise<void> {
  await Deno.mkdir(`${dir}/bin`, { recursive: true });
  for (const d of ["proc", "dev", "sys", "tmp", "etc", "root"]) await Deno.mkdir(`${dir}/${d}`);
  await Deno.copyFile("/bin/busybox", `${dir}/bin/busybox`);
  await Deno.chmod(`${dir}/bin/busybox`, 0o755);
  const out = await new Deno.Command("/bin/busybox", { args: ["--list"] }).output();
  for (const name of new TextDecoder().decode(out.stdout).split("\n")) {
    if (name === "" || name === "busybox") continue;
    await Deno.symlink("busybox", `${dir}/bin/${name}`);
  }
}

let specTemplate: Record<string, unknown> | null = null;

/** runc's default spec (`runc spec`), loaded once. */
async function defaultSpec(): Promise<Record<string, unknown>> {
  if (specTemplate !== null) return structuredClone(specTemplate);
  const dir = await Deno.makeTempDir({ prefix: "spec" });
  try {
    const out = await new Deno.Command("runc", { args: ["spec", "--bundle", dir] }).output();
    if (!out.success) throw new Error(`runc spec failed: ${new TextDecoder().decode(out.stderr)}`);
    specTemplate = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return structuredClone(specTemplate!);
}

/** Options of {@linkcode makeBundle}. */
export interface BundleOptions {
  terminal?: boolean;
  /** Keep the host pid namespace (no `pid` namespace in the spec). */
  hostPid?: boolean;
}

/** Creates `<base>/<id>` with a config.json running `args` (rootfs at `<bundle>/rootfs`). */
export async function makeBundle(
  base: string,
  id: string,
  args: string[],
  opts: BundleOptions = {},
): Promise<string> {
  const bundle = `${base}/${id}`;
  await Deno.mkdir(bundle, { recursive: true });
  const spec = await defaultSpec();
  // deno-lint-ignore no-explicit-any
  const s = spec as any;
  s.process.args = args;
  s.process.terminal = opts.terminal ?? false;
  s.root = { path: "rootfs", readonly: false };
  s.hostname = id;
  // a cgroup of its own, so that parallel tests reusing an id never share one
  s.linux.cgroupsPath = `/tainerd-test-${base.slice(base.lastIndexOf("/") + 1)}-${id}`;
  if (opts.hostPid) {
    s.linux.namespaces = s.linux.namespaces.filter((n: { type: string }) => n.type !== "pid");
  }
  await Deno.writeTextFile(`${bundle}/config.json`, JSON.stringify(spec, null, 2));
  return bundle;
}

/** An OCI process spec (for Exec) based on runc's default. */
export async function processSpec(args: string[], terminal = false): Promise<Uint8Array> {
  // deno-lint-ignore no-explicit-any
  const s = (await defaultSpec()) as any;
  return new TextEncoder().encode(JSON.stringify({ ...s.process, args, terminal }));
}

/** Creates a FIFO. */
export async function mkfifo(path: string): Promise<void> {
  const out = await new Deno.Command("mkfifo", { args: [path] }).output();
  if (!out.success) throw new Error(`mkfifo ${path} failed`);
}

/** Reads a FIFO to its end (open blocks until the shim opens it for writing). */
export async function readFifo(path: string): Promise<string> {
  const file = await Deno.open(path, { read: true });
  const chunks: string[] = [];
  const decoder = new TextDecoder();
  for await (const chunk of file.readable) chunks.push(decoder.decode(chunk, { stream: true }));
  return chunks.join("");
}

/** A test environment: temp dirs, a fake daemon, shims and their containers; `cleanup` undoes it. */
export class ShimEnv {
  readonly dir: string;
  readonly stateDir: string;
  readonly daemon: FakeDaemon;
  readonly rootfs: string;
  readonly #shims: Array<{ client: TtrpcClient; pid: number }> = [];
  readonly #bundles: Array<{ id: string; bundle: string }> = [];

  private constructor(dir: string, rootfs: string) {
    this.dir = dir;
    this.stateDir = `${dir}/state`;
    this.rootfs = rootfs;
    this.daemon = new FakeDaemon(`${dir}/daemon.ttrpc`);
  }

  /** Makes the temp dirs and the busybox rootfs, and starts the fake daemon. */
  static async create(): Promise<ShimEnv> {
    const dir = await Deno.makeTempDir({ prefix: "shim" });
    await makeRootfs(`${dir}/rootfs-src`);
    const env = new ShimEnv(dir, `${dir}/rootfs-src`);
    env.daemon.start();
    return env;
  }

  /** The daemon address the shims are told about (`-address`). */
  get daemonAddress(): string {
    return `${this.dir}/daemon.sock`;
  }

  /** Creates a bundle under the env's dir and registers it for cleanup. */
  async bundle(id: string, args: string[], opts: BundleOptions = {}): Promise<string> {
    const bundle = await makeBundle(this.dir, id, args, opts);
    this.#bundles.push({ id, bundle });
    return bundle;
  }

  /** The rootfs mounts of a CreateTaskRequest: a bind mount of the busybox tree. */
  rootfsMounts() {
    return [{ type: "bind", source: this.rootfs, target: "", options: ["rbind", "rw"] }];
  }

  /** Runs `main.ts shim … <action>` in `bundle`; returns its stdout bytes (throws on failure). */
  async action(
    bundle: string,
    id: string,
    action: string,
    stdin?: Uint8Array,
  ): Promise<Uint8Array> {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        MAIN,
        "shim",
        "-namespace",
        NAMESPACE,
        "-address",
        this.daemonAddress,
        "-publish-binary",
        "/bin/true",
        "-id",
        id,
        action,
      ],
      cwd: bundle,
      env: { TTRPC_ADDRESS: this.daemon.path, TAINERD_STATE_DIR: this.stateDir },
      stdin: stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (stdin) {
      const w = child.stdin.getWriter();
      await w.write(stdin);
      await w.close();
    }
    const out = await child.output();
    if (!out.success) {
      throw new Error(
        `shim ${action} failed (${out.code}): ${new TextDecoder().decode(out.stderr)}`,
      );
    }
    return out.stdout;
  }

  /** Starts a shim for `id` with the `start` action; returns its address and a Task client. */
  async startShim(
    bundle: string,
    id: string,
  ): Promise<
    { address: string; task: TtrpcServiceClient<typeof Task>; client: TtrpcClient; pid: number }
  > {
    const address = new TextDecoder().decode(await this.action(bundle, id, "start"));
    const client = await TtrpcClient.connect(socketPath(address));
    const task = createTtrpcClient(Task, client);
    const { shimPid } = await task.connect({ id });
    this.#shims.push({ client, pid: shimPid });
    return { address, task, client, pid: shimPid };
  }

  /** Removes every container, mount, shim and directory, ignoring errors. */
  async cleanup(): Promise<void> {
    for (const { client } of this.#shims) await client.close().catch(() => {});
    for (const { pid } of this.#shims) {
      try {
        kill(pid, "SIGKILL");
      } catch { /* gone */ }
    }
    const root = `${this.stateDir}/runc/${NAMESPACE}`;
    for (const { id, bundle } of this.#bundles) {
      await new Deno.Command("runc", {
        args: ["--root", root, "delete", "--force", id],
        stdout: "null",
        stderr: "null",
      }).output().catch(() => {});
      await unmountAll(`${bundle}/rootfs`).catch(() => {});
    }
    await this.daemon.stop().catch(() => {});
    await Deno.remove(this.dir, { recursive: true }).catch((err) => {
      console.error(`cannot remove ${this.dir}: ${err}`);
    });
  }
}
