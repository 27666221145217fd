/**
 * Helpers shared by the CNI and netns tests: network namespaces held by an external
 * `unshare --net` process, mount listing, running commands.
 *
 * @module
 */

import { mountinfo } from "../../../sys/mountinfo.ts";

/** A `sleep` running in a fresh network namespace made by `unshare --net`. */
export interface NetnsHolder {
  /** The process id (in the new namespace). */
  pid: number;
  /** Kills the process and waits for it. */
  stop(): Promise<void>;
}

/** Starts `unshare --net -- sleep 3600` and waits until it has left the host namespace. */
export async function spawnNetnsHolder(): Promise<NetnsHolder> {
  const child = new Deno.Command("unshare", {
    args: ["--net", "--", "sleep", "3600"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const own = await Deno.readLink("/proc/self/ns/net");
  const deadline = Date.now() + 5000;
  for (;;) {
    const link = await Deno.readLink(`/proc/${child.pid}/ns/net`).catch(() => own);
    if (link !== own) break;
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await child.status;
      throw new Error("unshare --net did not create a network namespace in time");
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  let stopped = false;
  return {
    pid: child.pid,
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
      await child.status;
    },
  };
}

/** The mounts at or below `dir`. */
export function mountsUnder(dir: string): string[] {
  const real = Deno.realPathSync(dir);
  return mountinfo((m) => m.mountpoint === real || m.mountpoint.startsWith(real + "/"))
    .map((m) => m.mountpoint);
}

/** Runs a command; throws with its stderr when it fails; returns its stdout. */
export async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}
