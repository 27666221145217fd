/**
 * Helpers of the CRI spec tests: CRI configs, sandbox files in a temp dir, and real runs of
 * generated specs with `runc` on a busybox rootfs (every container deleted, every temp dir
 * removed, even on failure).
 *
 * @module
 */

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ContainerConfigSchema,
  PodSandboxConfigSchema,
} from "../../../api/gen/runtime/v1/api_pb.ts";
import type { ContainerConfig, PodSandboxConfig } from "../../../api/gen/runtime/v1/api_pb.ts";
import type { Spec } from "../../../oci/spec.ts";
import { busyboxRootfs } from "../../../tests/fixtures.ts";
import type { SandboxFiles } from "./spec.ts";

/** Whether real runs are possible (root and runc). */
export const canRunc: boolean = (() => {
  if (Deno.uid() !== 0) return false;
  try {
    return new Deno.Command("runc", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

/** A pod sandbox config. */
export function podConfig(
  init: MessageInitShape<typeof PodSandboxConfigSchema> = {},
): PodSandboxConfig {
  return create(PodSandboxConfigSchema, {
    metadata: { name: "pod", namespace: "default", uid: "uid-1", attempt: 0 },
    hostname: "podhost",
    logDirectory: "/var/log/pods/pod",
    ...init,
  } as MessageInitShape<typeof PodSandboxConfigSchema>);
}

/** A container config. */
export function ctrConfig(
  init: MessageInitShape<typeof ContainerConfigSchema> = {},
): ContainerConfig {
  return create(ContainerConfigSchema, {
    metadata: { name: "ctr", attempt: 0 },
    image: { image: "docker.io/library/busybox:latest" },
    ...init,
  } as MessageInitShape<typeof ContainerConfigSchema>);
}

/** Makes a temp dir, passes it on, removes it (and anything left mounted is reported). */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-cri-spec-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Writes a sandbox's files under `dir` (hostname, hosts, resolv.conf, a shm dir). */
export async function sandboxFiles(dir: string): Promise<SandboxFiles> {
  const files: SandboxFiles = {
    hostnamePath: `${dir}/hostname`,
    hostsPath: `${dir}/hosts`,
    resolvConfPath: `${dir}/resolv.conf`,
    shmPath: `${dir}/shm`,
  };
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(files.hostnamePath, "podhost\n");
  await Deno.writeTextFile(files.hostsPath, "127.0.0.1 localhost\n");
  await Deno.writeTextFile(files.resolvConfPath, "nameserver 10.0.0.10\n");
  await Deno.mkdir(files.shmPath, { recursive: true });
  return files;
}

/** A unique runc container id. */
export function runcId(what: string): string {
  return `tainerd-spec-${what}-${crypto.randomUUID().slice(0, 8)}`;
}

async function runc(args: string[]): Promise<Deno.CommandOutput> {
  return await new Deno.Command("runc", { args, stdout: "piped", stderr: "piped", stdin: "null" })
    .output();
}

/** Force-deletes a runc container (no error when it is gone). */
export async function runcDelete(id: string): Promise<void> {
  await runc(["delete", "-f", id]);
}

/**
 * Writes a bundle under `dir` for `spec` with a fresh busybox rootfs; returns the bundle dir.
 * The container's cgroup is named after its unique runc `id`, so concurrent runs never share.
 */
export async function bundle(dir: string, spec: Spec, id: string): Promise<string> {
  spec.linux.cgroupsPath = `/k8s.io/${id}`;
  const b = `${dir}/bundle-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(b);
  const rootfs = await busyboxRootfs(b);
  spec.root.path = rootfs;
  await Deno.writeTextFile(`${b}/config.json`, JSON.stringify(spec, null, 2));
  return b;
}

/** The outcome of a foreground run. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `spec` in the foreground with `runc run` and deletes the container after. */
export async function runSpec(dir: string, spec: Spec, what: string): Promise<RunResult> {
  const id = runcId(what);
  const b = await bundle(dir, spec, id);
  try {
    const out = await runc(["run", "--bundle", b, id]);
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    await runcDelete(id);
  }
}

/** A detached runc container (the "sandbox"), with its pid. */
export interface Detached {
  id: string;
  pid: number;
  /** Force-deletes the container. */
  stop(): Promise<void>;
}

/** Starts `spec` detached with `runc run -d`; the caller must `stop()` it. */
export async function startDetached(dir: string, spec: Spec, what: string): Promise<Detached> {
  const id = runcId(what);
  const b = await bundle(dir, spec, id);
  const stop = () => runcDelete(id);
  try {
    // The container inherits runc's stdio: a pipe would stay open as long as it runs, so
    // runc's (and the container's) output goes to a file.
    const out = await new Deno.Command("sh", {
      args: [
        "-c",
        'exec runc run -d --pid-file "$1/pid" --bundle "$1" "$2" >"$1/stdio.log" 2>&1',
        "sh",
        b,
        id,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    if (!out.success) {
      throw new Error(`runc run -d ${id}: ${await Deno.readTextFile(`${b}/stdio.log`)}`);
    }
    const pid = Number((await Deno.readTextFile(`${b}/pid`)).trim());
    return { id, pid, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
