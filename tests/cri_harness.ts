/**
 * Shared helpers of the CRI end-to-end tests (tests/cri_test.ts, tests/cri_streaming_test.ts):
 * the real crictl against a test daemon, a private CNI network per test (its own bridge and
 * /24, host-local state in a temp dir), pod and container configs, and leak checks.
 *
 * @module
 */

import assert from "node:assert/strict";
import { have, run, type RunResult, type TestDaemon, withDaemon } from "./harness.ts";

/** Whether Debian's CNI plugins are installed. */
export const HAVE_CNI: boolean = (() => {
  try {
    Deno.statSync("/usr/lib/cni/bridge");
    return true;
  } catch {
    return false;
  }
})();

/** Why the CRI end-to-end tests cannot run here, or "" when they can. */
export const criMissing: string = [
  have("crictl") ? "" : "crictl",
  HAVE_CNI ? "" : "CNI plugins (/usr/lib/cni)",
  have("iptables") ? "" : "iptables",
  have("socat") ? "" : "socat",
].filter((x) => x).join(", ");

/** A private CNI network for one test: a bridge, a /24, host-local state in `dir`. */
export interface TestNet {
  confDir: string;
  bridge: string;
  subnet: string;
  prefix: string;
}

async function makeNet(dir: string): Promise<TestNet> {
  const r = crypto.getRandomValues(new Uint8Array(3));
  const bridge = `tndcri${r[0].toString(16)}${r[1].toString(16)}`;
  const prefix = `10.${200 + (r[0] % 50)}.${r[2]}`;
  const subnet = `${prefix}.0/24`;
  const confDir = `${dir}/net.d`;
  await Deno.mkdir(confDir, { recursive: true });
  await Deno.writeTextFile(
    `${confDir}/10-test.conflist`,
    JSON.stringify({
      cniVersion: "1.0.0",
      name: "tainerd-test",
      plugins: [
        {
          type: "bridge",
          bridge,
          isGateway: true,
          ipMasq: false,
          ipam: {
            type: "host-local",
            ranges: [[{ subnet }]],
            routes: [{ dst: "0.0.0.0/0" }],
            dataDir: `${dir}/ipam`,
          },
        },
        { type: "portmap", capabilities: { portMappings: true } },
      ],
    }),
  );
  return { confDir, bridge, subnet, prefix };
}

/** The daemon config of the CRI plugin for `net` (streaming server on a free port). */
export function criConfig(net: TestNet): string {
  return `
[plugins."io.containerd.grpc.v1.cri"]
stream_server_port = "0"
[plugins."io.containerd.grpc.v1.cri".cni]
conf_dir = "${net.confDir}"
bin_dir = "/usr/lib/cni"
`;
}

/** The crictl arguments that point it at `d`. */
export function crictlArgs(d: TestDaemon, timeout = "60s"): string[] {
  return [
    "--runtime-endpoint",
    `unix://${d.address}`,
    "--image-endpoint",
    `unix://${d.address}`,
    "--timeout",
    timeout,
  ];
}

/** Runs crictl against `d` to completion. */
export function crictl(d: TestDaemon, args: string[], timeout = "60s"): Promise<RunResult> {
  return run("crictl", [...crictlArgs(d, timeout), ...args]);
}

/** Runs crictl against `d`, asserts success, returns its trimmed stdout. */
export async function ok(d: TestDaemon, args: string[]): Promise<string> {
  const r = await crictl(d, args);
  assert.equal(r.code, 0, `crictl ${args.join(" ")}: ${r.stderr}`);
  return r.stdout.trim();
}

/** Writes `v` as JSON to `path`; returns `path`. */
export async function writeJson(path: string, v: unknown): Promise<string> {
  await Deno.writeTextFile(path, JSON.stringify(v));
  return path;
}

/** A pod sandbox config named `name`, logging under `dir/logs/name`. */
export function podConfig(name: string, dir: string, extra: Record<string, unknown> = {}) {
  return {
    metadata: { name, namespace: "default", uid: `uid-${name}`, attempt: 1 },
    hostname: name,
    log_directory: `${dir}/logs/${name}`,
    linux: {},
    ...extra,
  };
}

/** A container config named `name` running `command` from `image`. */
export function containerConfig(name: string, image: string, command: string[]) {
  return {
    metadata: { name },
    image: { image },
    command,
    log_path: `${name}.log`,
    linux: {},
  };
}

/** The mount points of this mount namespace under `prefix`. */
export async function mountsUnder(prefix: string): Promise<string[]> {
  const text = await Deno.readTextFile("/proc/self/mountinfo");
  return text.split("\n").map((l) => l.split(" ")[4]).filter((m) => m?.startsWith(prefix));
}

/** The links enslaved to `bridge`, one a line ("" when none). */
export async function bridgeLinks(bridge: string): Promise<string> {
  return (await run("ip", ["-o", "link", "show", "master", bridge])).stdout.trim();
}

/** Runs `fn` with a private network and a temp dir (removed after, with the bridge). */
export async function withNet(fn: (net: TestNet, dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-cri-" });
  const net = await makeNet(dir);
  try {
    await fn(net, dir);
  } finally {
    await run("ip", ["link", "del", net.bridge]);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Removes every pod (and so every container) of the daemon, ignoring failures. */
export async function removeAllPods(d: TestDaemon): Promise<void> {
  await crictl(d, ["rmp", "-fa"]).catch(() => {});
  const left = await crictl(d, ["pods", "-q"]).catch(() => undefined);
  for (const id of left?.stdout.trim().split("\n").filter((x) => x) ?? []) {
    await crictl(d, ["rmp", "-f", id]).catch(() => {});
  }
}

/**
 * Runs `fn` with a daemon serving the CRI on `net`; whatever happens, every pod is removed
 * before the daemon stops (pods outlive a daemon, as in containerd: a failed test must not
 * leave pause processes, netns and shm mounts behind).
 */
export function withCriDaemon(net: TestNet, fn: (d: TestDaemon) => Promise<void>): Promise<void> {
  return withDaemon(async (d) => {
    try {
      await fn(d);
    } finally {
      await removeAllPods(d);
    }
  }, { config: criConfig(net) });
}
