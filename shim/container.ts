/**
 * One container held by a shim, as containerd's `runtime/v2/runc/container.go`: its bundle,
 * runc options, mounted rootfs, init process and exec'd processes. {@linkcode createContainer}
 * performs `Create`: it records the runtime options in the bundle (`options.json`, `runtime`,
 * which the `delete` action reads back), mounts the rootfs and creates the init process.
 *
 * @module
 */

import { fromBinary } from "@bufbuild/protobuf";
import {
  type Options,
  OptionsSchema,
} from "../api/gen/containerd/runtime/v2/runc/options/oci_pb.ts";
import type { CreateTaskRequest } from "../api/gen/containerd/runtime/v2/task/shim_pb.ts";
import type { Logger } from "../log.ts";
import { invalidArgument, notFound, notImplemented, TainerdError } from "../plugins/errdefs.ts";
import { validateIdentifier } from "../plugins/identifiers.ts";
import { mountAll, unmountAll } from "../sys/mount.ts";
import { type ExecProcess, type ExitHandler, InitProcess, type Process } from "./process.ts";
import type { Reaper } from "./reaper.ts";
import { Runc } from "./runc.ts";

/** The bundle file holding the runc options as JSON (containerd's `options.json`). */
export const OPTIONS_FILE = "options.json";
/** The bundle file holding the runc binary name (containerd's `runtime`). */
export const RUNTIME_FILE = "runtime";

/** The runc options a shim uses, decoded from `CreateTaskRequest.options` or `options.json`. */
export interface RuncOptions {
  noPivotRoot: boolean;
  noNewKeyring: boolean;
  shimCgroup: string;
  ioUid: number;
  ioGid: number;
  binaryName: string;
  root: string;
  systemdCgroup: boolean;
}

function fromProto(o: Options): RuncOptions {
  return {
    noPivotRoot: o.noPivotRoot,
    noNewKeyring: o.noNewKeyring,
    shimCgroup: o.shimCgroup,
    ioUid: o.ioUid,
    ioGid: o.ioGid,
    binaryName: o.binaryName,
    root: o.root,
    systemdCgroup: o.systemdCgroup,
  };
}

/** Default (zero) runc options. */
export function defaultRuncOptions(): RuncOptions {
  return fromProto(
    fromBinary(OptionsSchema, new Uint8Array()),
  );
}

/**
 * Decodes an `Any` carrying `containerd.runc.v1.Options` (type URL with or without the
 * `type.googleapis.com/` prefix); an absent or empty Any gives the defaults.
 *
 * @throws {TainerdError} InvalidArgument for another message type or a bad payload
 */
export function decodeRuncOptions(
  any: { typeUrl: string; value: Uint8Array } | undefined,
): RuncOptions {
  if (any === undefined || any.typeUrl === "") return defaultRuncOptions();
  const name = any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1);
  if (name !== OptionsSchema.typeName) {
    throw invalidArgument(
      `Cannot use runtime options of type "${any.typeUrl}": expected ${OptionsSchema.typeName}`,
    );
  }
  try {
    return fromProto(fromBinary(OptionsSchema, any.value));
  } catch (err) {
    throw invalidArgument(`Cannot decode the runtime options: ${(err as Error).message}`);
  }
}

/** The JSON field names of containerd's `options.json` (gogo's json tags). */
const JSON_KEYS: Record<keyof RuncOptions, string> = {
  noPivotRoot: "no_pivot_root",
  noNewKeyring: "no_new_keyring",
  shimCgroup: "shim_cgroup",
  ioUid: "io_uid",
  ioGid: "io_gid",
  binaryName: "binary_name",
  root: "root",
  systemdCgroup: "systemd_cgroup",
};

/** Writes `options.json` and `runtime` into the bundle, as containerd's runc shim. */
export async function writeBundleOptions(bundle: string, opts: RuncOptions): Promise<void> {
  const json: Record<string, unknown> = {};
  for (const [k, key] of Object.entries(JSON_KEYS)) {
    const v = opts[k as keyof RuncOptions];
    if (v !== "" && v !== 0 && v !== false) json[key] = v;
  }
  await Deno.writeTextFile(`${bundle}/${OPTIONS_FILE}`, JSON.stringify(json), { mode: 0o600 });
  await Deno.writeTextFile(`${bundle}/${RUNTIME_FILE}`, opts.binaryName, { mode: 0o600 });
}

/** Reads `options.json` (and `runtime`) back; defaults when they are missing. */
export async function readBundleOptions(bundle: string): Promise<RuncOptions> {
  const opts = defaultRuncOptions();
  try {
    const json = JSON.parse(await Deno.readTextFile(`${bundle}/${OPTIONS_FILE}`));
    for (const [k, key] of Object.entries(JSON_KEYS)) {
      if (key in json) (opts as unknown as Record<string, unknown>)[k] = json[key];
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  try {
    const runtime = (await Deno.readTextFile(`${bundle}/${RUNTIME_FILE}`)).trim();
    if (runtime !== "") opts.binaryName = runtime;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return opts;
}

/** The runc driver for a bundle: `--root <root or <state>/runc>/<namespace>`. */
export function runcFor(
  bundle: string,
  namespace: string,
  opts: RuncOptions,
  stateDir: string,
): Runc {
  const root = opts.root || `${stateDir}/runc`;
  return new Runc({
    command: opts.binaryName || "runc",
    root: `${root.replace(/\/+$/, "")}/${namespace}`,
    log: `${bundle}/log.json`,
    systemdCgroup: opts.systemdCgroup,
  });
}

/**
 * Whether every process of the container must be killed when its init exits: true unless the
 * spec gives it its own (new) pid namespace, as containerd's `ShouldKillAllOnExit`.
 */
export async function shouldKillAllOnExit(bundle: string): Promise<boolean> {
  try {
    const spec = JSON.parse(await Deno.readTextFile(`${bundle}/config.json`));
    const namespaces: Array<{ type?: string; path?: string }> = spec?.linux?.namespaces ?? [];
    return !namespaces.some((ns) => ns.type === "pid" && !ns.path);
  } catch {
    return true;
  }
}

/** A container and its processes. */
export class Container {
  readonly id: string;
  readonly bundle: string;
  readonly init: InitProcess;
  readonly options: RuncOptions;
  readonly execs: Map<string, ExecProcess> = new Map();
  /** Exec ids being added (between the check and the insertion). */
  readonly reserved: Set<string> = new Set();

  constructor(id: string, bundle: string, init: InitProcess, options: RuncOptions) {
    this.id = id;
    this.bundle = bundle;
    this.init = init;
    this.options = options;
  }

  /** The init process for an empty exec id, else the exec'd process. */
  process(execId: string): Process {
    if (execId === "") return this.init;
    const p = this.execs.get(execId);
    if (!p) {
      throw notFound(`Cannot get process "${execId}" of task "${this.id}": not found`);
    }
    return p;
  }

  /** Every process: the exec'd ones and the init. */
  all(): Process[] {
    return [...this.execs.values(), this.init];
  }
}

/** What {@linkcode createContainer} needs from the shim. */
export interface CreateDeps {
  namespace: string;
  stateDir: string;
  reaper: Reaper;
  log: Logger;
  onExit: ExitHandler;
}

async function checkBundle(id: string, bundle: string): Promise<void> {
  if (bundle === "" || !bundle.startsWith("/")) {
    throw invalidArgument(
      `Cannot create task "${id}": the bundle path must be absolute, not "${bundle}"`,
    );
  }
  try {
    const info = await Deno.stat(bundle);
    if (!info.isDirectory) {
      throw invalidArgument(
        `Cannot create task "${id}": the bundle "${bundle}" is not a directory`,
      );
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw notFound(`Cannot create task "${id}": the bundle "${bundle}" does not exist`);
    }
    throw err;
  }
  try {
    await Deno.stat(`${bundle}/config.json`);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw invalidArgument(
        `Cannot create task "${id}": the bundle "${bundle}" has no config.json`,
      );
    }
    throw err;
  }
}

/**
 * `Create`: checks the request, writes the bundle's options files, mounts `request.rootfs`
 * onto `<bundle>/rootfs` and runs `runc create`. On failure everything is undone.
 */
export async function createContainer(
  request: CreateTaskRequest,
  deps: CreateDeps,
): Promise<Container> {
  const { id, bundle } = request;
  validateIdentifier(id, "task");
  await checkBundle(id, bundle);
  if (request.checkpoint !== "" || request.parentCheckpoint !== "") {
    throw notImplemented(`Cannot create task "${id}" from a checkpoint: not supported yet`);
  }
  const options = decodeRuncOptions(request.options);
  if (options.ioUid !== 0 || options.ioGid !== 0) {
    deps.log.warn("io_uid/io_gid are not supported yet; stdio stays owned by root", { id });
  }
  await writeBundleOptions(bundle, options);

  let rootfs = "";
  if (request.rootfs.length > 0) {
    rootfs = `${bundle}/rootfs`;
    await Deno.mkdir(rootfs, { mode: 0o711 }).catch((err) => {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    });
    try {
      await deps.reaper.holding(() =>
        mountAll(
          request.rootfs.map((m) => ({ type: m.type, source: m.source, options: m.options })),
          rootfs,
        )
      );
    } catch (err) {
      await deps.reaper.holding(() => unmountAll(rootfs)).catch(() => {});
      const detail = err instanceof Error ? err.message : String(err);
      throw new TainerdError(
        err instanceof TainerdError ? err.kind : "Internal",
        `Cannot mount the rootfs of task "${id}": ${detail}`,
        { cause: err },
      );
    }
  }

  const init = new InitProcess({
    id,
    bundle,
    rootfs,
    stdio: {
      stdin: request.stdin,
      stdout: request.stdout,
      stderr: request.stderr,
      terminal: request.terminal,
    },
    runc: runcFor(bundle, deps.namespace, options, deps.stateDir),
    reaper: deps.reaper,
    log: deps.log.child({ id }),
    noPivotRoot: options.noPivotRoot,
    noNewKeyring: options.noNewKeyring,
    onExit: deps.onExit,
  });
  try {
    await init.create();
  } catch (err) {
    await init.abandon();
    await deps.reaper.holding(() => unmountAll(rootfs)).catch(() => {});
    throw err;
  }
  return new Container(id, bundle, init, options);
}
