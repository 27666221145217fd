/**
 * OCI runtime specs, as containerd's `oci` package builds them: the default Linux spec and
 * the options `tainerd run` applies (args, env, cwd, user, tty, host networking, image
 * config).
 *
 * @module
 */

/** The type URL containerd stores specs under. */
export const SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/** An OCI mount. */
export interface SpecMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

/** The parts of an OCI runtime spec tainerd builds (others pass through untouched). */
export interface Spec {
  ociVersion: string;
  root: { path: string; readonly?: boolean };
  process: {
    terminal?: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: Record<"bounding" | "permitted" | "effective", string[]>;
    rlimits: { type: string; hard: number; soft: number }[];
    noNewPrivileges: boolean;
    consoleSize?: { height: number; width: number };
  };
  hostname?: string;
  mounts: SpecMount[];
  linux: {
    namespaces: { type: string; path?: string }[];
    maskedPaths: string[];
    readonlyPaths: string[];
    cgroupsPath: string;
    resources: {
      devices: { allow: boolean; access: string; type?: string; major?: number; minor?: number }[];
      [k: string]: unknown;
    };
    [k: string]: unknown;
  };
  annotations?: Record<string, string>;
  [k: string]: unknown;
}

const DEFAULT_CAPS = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_FSETID",
  "CAP_FOWNER",
  "CAP_MKNOD",
  "CAP_NET_RAW",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETFCAP",
  "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE",
  "CAP_SYS_CHROOT",
  "CAP_KILL",
  "CAP_AUDIT_WRITE",
];

/** The default PATH of containers. */
export const DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** containerd's default Linux spec for a container in a namespace. */
export function defaultSpec(namespace: string, id: string): Spec {
  return {
    ociVersion: "1.0.2-dev",
    root: { path: "rootfs" },
    process: {
      user: { uid: 0, gid: 0 },
      args: [],
      env: [DEFAULT_PATH],
      cwd: "/",
      capabilities: {
        bounding: [...DEFAULT_CAPS],
        permitted: [...DEFAULT_CAPS],
        effective: [...DEFAULT_CAPS],
      },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    mounts: [
      {
        destination: "/proc",
        type: "proc",
        source: "proc",
        options: ["nosuid", "noexec", "nodev"],
      },
      {
        destination: "/dev",
        type: "tmpfs",
        source: "tmpfs",
        options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
      },
      {
        destination: "/dev/pts",
        type: "devpts",
        source: "devpts",
        options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
      },
      {
        destination: "/dev/shm",
        type: "tmpfs",
        source: "shm",
        options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
      },
      {
        destination: "/dev/mqueue",
        type: "mqueue",
        source: "mqueue",
        options: ["nosuid", "noexec", "nodev"],
      },
      {
        destination: "/sys",
        type: "sysfs",
        source: "sysfs",
        options: ["nosuid", "noexec", "nodev", "ro"],
      },
      {
        destination: "/run",
        type: "tmpfs",
        source: "tmpfs",
        options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
      },
    ],
    linux: {
      namespaces: [
        { type: "pid" },
        { type: "ipc" },
        { type: "uts" },
        { type: "mount" },
        { type: "network" },
      ],
      maskedPaths: [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/sys/firmware",
        "/proc/scsi",
      ],
      readonlyPaths: [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
      ],
      cgroupsPath: `/${namespace}/${id}`,
      resources: { devices: [{ allow: false, access: "rwm" }] },
    },
  };
}

/** Shares the host's network namespace (and its resolv.conf/hosts), as `ctr run --net-host`. */
export function withHostNetwork(spec: Spec): void {
  spec.linux.namespaces = spec.linux.namespaces.filter((n) => n.type !== "network");
  for (const f of ["/etc/hosts", "/etc/resolv.conf"]) {
    spec.mounts.push({ destination: f, type: "bind", source: f, options: ["rbind", "ro"] });
  }
}

/** Adds a terminal, as `ctr run -t`. */
export function withTty(spec: Spec): void {
  spec.process.terminal = true;
  if (!spec.process.env.some((e) => e.startsWith("TERM="))) spec.process.env.push("TERM=xterm");
}

/** Replaces or adds environment variables (`K=V`). */
export function withEnv(spec: Spec, env: readonly string[]): void {
  for (const kv of env) {
    const key = kv.split("=")[0];
    const i = spec.process.env.findIndex((e) => e.split("=")[0] === key);
    if (i >= 0) spec.process.env[i] = kv;
    else spec.process.env.push(kv);
  }
}

/** The config section of an OCI image config that a spec takes from. */
export interface ImageConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  WorkingDir?: string;
}

/**
 * Applies an image's config (env, entrypoint + cmd as args, working dir, numeric user) as
 * containerd's `WithImageConfig`; `args` given by the user replace the image's Cmd.
 */
export function withImageConfig(spec: Spec, config: ImageConfig, args: readonly string[]): void {
  withEnv(spec, config.Env ?? []);
  const entry = config.Entrypoint ?? [];
  spec.process.args = args.length > 0 ? [...entry, ...args] : [...entry, ...(config.Cmd ?? [])];
  if (config.WorkingDir) spec.process.cwd = config.WorkingDir;
  if (config.User) {
    const [u, g] = config.User.split(":");
    if (/^\d+$/.test(u)) spec.process.user.uid = Number(u);
    if (g !== undefined && /^\d+$/.test(g)) spec.process.user.gid = Number(g);
  }
}

/** The spec as the bytes stored in a container's spec Any. */
export function encodeSpec(spec: Spec): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(spec));
}
