/**
 * OCI runtime specs of CRI pods and containers, as containerd 1.6's CRI plugin builds them
 * (`sandboxContainerSpec`, `containerSpec`, `pkg/cri/opts`): the pause container of a pod
 * sandbox in its own (or the node's) namespaces, and the containers that join them, with the
 * CRI's rules for args, env, mounts and propagation, devices, resources, users and groups,
 * capabilities, privileged mode, masked paths and seccomp. Also the files a sandbox shares
 * with its containers (`/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`).
 *
 * @module
 */

import {
  type Capability,
  type ContainerConfig,
  type DNSConfig,
  type Int64Value,
  type KeyValue,
  type LinuxContainerResources,
  type Mount,
  MountPropagation,
  NamespaceMode,
  type PodSandboxConfig,
  SupplementalGroupsPolicy,
} from "../../../api/gen/runtime/v1/api_pb.ts";
import {
  currentCapabilities,
  defaultSpec,
  hostDevices,
  type ImageConfig,
  type LinuxDevice,
  type Spec,
  type SpecMount,
  withAdditionalGids,
  withEnv,
  withPrivileged,
  withTty,
  withUser,
} from "../../../oci/spec.ts";
import { invalidArgument, notFound } from "../../errdefs.ts";
import { lookupMount } from "../../../sys/mountinfo.ts";
import { seccompForSync } from "./seccomp.ts";

/** The containerd namespace CRI objects live in (the default cgroup parent, `/k8s.io/<id>`). */
export const CRI_NAMESPACE = "k8s.io";

/** The annotations containerd's CRI puts on the specs it makes. */
export const Annotations = {
  ContainerType: "io.kubernetes.cri.container-type",
  ContainerTypeSandbox: "sandbox",
  ContainerTypeContainer: "container",
  SandboxID: "io.kubernetes.cri.sandbox-id",
  SandboxNamespace: "io.kubernetes.cri.sandbox-namespace",
  SandboxUID: "io.kubernetes.cri.sandbox-uid",
  SandboxName: "io.kubernetes.cri.sandbox-name",
  SandboxLogDir: "io.kubernetes.cri.sandbox-log-directory",
  ContainerName: "io.kubernetes.cri.container-name",
  ImageName: "io.kubernetes.cri.image-name",
} as const;

/** The OOM score adjustment of a sandbox's pause process. */
export const SANDBOX_OOM_SCORE_ADJ = -998;
/** The CPU shares of a sandbox's pause process. */
export const SANDBOX_CPU_SHARES = 2;
/** The most search domains a pod's resolv.conf may have. */
export const MAX_DNS_SEARCHES = 6;

const ETC_HOSTNAME = "/etc/hostname";
const ETC_HOSTS = "/etc/hosts";
const RESOLV_CONF = "/etc/resolv.conf";
const DEV_SHM = "/dev/shm";

/** The files a sandbox holds for its containers, on the host. */
export interface SandboxFiles {
  /** The pod's `/etc/hostname`. */
  hostnamePath: string;
  /** The pod's `/etc/hosts`. */
  hostsPath: string;
  /** The pod's `/etc/resolv.conf`. */
  resolvConfPath: string;
  /** The pod's `/dev/shm` (a tmpfs); `""` when the pod shares the node's IPC namespace. */
  shmPath: string;
}

/** Options of {@link sandboxSpec}. */
export interface SandboxSpecOptions {
  /** The files the sandbox holds. */
  files: SandboxFiles;
  /** The cgroup parent (defaults to the config's `linux.cgroup_parent`). */
  cgroupParent?: string;
  /** Apply the runtime's default seccomp profile when the pod asks for none. */
  seccompDefault?: boolean;
  /** The pinned network namespace to join; without it runc makes a new one. */
  netnsPath?: string;
  /** Never lower the OOM score adjustment below this process's own (`restrict_oom_score_adj`). */
  restrictOomScoreAdj?: boolean;
}

/** The sandbox a container joins. */
export interface SandboxRef {
  /** The sandbox's id. */
  id: string;
  /** The sandbox's CRI config. */
  config: PodSandboxConfig;
  /** The pid of the sandbox's pause process, whose namespaces the container joins. */
  pid: number;
  /** The pinned network namespace file; `""` for host networking. */
  netnsPath: string;
  /** The files the sandbox holds. */
  files: SandboxFiles;
  /** The cgroup parent (defaults to the sandbox config's `linux.cgroup_parent`). */
  cgroupParent?: string;
  /** With `NamespaceMode.TARGET`, the pid of the target container whose pid namespace to join. */
  targetPid?: number;
}

/** Options of {@link containerSpec}. */
export interface ContainerSpecOptions {
  /** The container's mounted rootfs, for users and groups from `/etc/passwd` and `/etc/group`. */
  rootfs?: string;
  /** Never lower the OOM score adjustment below this process's own (`restrict_oom_score_adj`). */
  restrictOomScoreAdj?: boolean;
  /** Apply the runtime's default seccomp profile when the container asks for none. */
  seccompDefault?: boolean;
  /** The image's name for the annotation (defaults to the config's image). */
  imageName?: string;
}

// ---------------------------------------------------------------------------------------------
// Sandbox files

/** The pod's hostname: the config's, else the node's. */
export function sandboxHostname(config: PodSandboxConfig): string {
  return config.hostname || Deno.hostname();
}

/** The content of the pod's `/etc/hostname`, as containerd writes it. */
export function generateHostname(config: PodSandboxConfig): string {
  return `${sandboxHostname(config)}\n`;
}

/**
 * The content of the pod's `/etc/hosts`: as containerd 1.6, a copy of the node's (kubelet
 * mounts its own managed file over it for pods in their own network namespace).
 */
export function generateHosts(hostHosts: string): string {
  return hostHosts;
}

/**
 * The content of the pod's `/etc/resolv.conf` as containerd writes it: `search`, one
 * `nameserver` line per server and `options` from the DNS config, or a copy of the node's
 * (`hostResolv`) when the config has none.
 *
 * @throws {TainerdError} InvalidArgument with more than {@link MAX_DNS_SEARCHES} search domains
 */
export function generateResolvConf(dns: DNSConfig | undefined, hostResolv: string): string {
  if (!dns) return hostResolv;
  if (dns.searches.length > MAX_DNS_SEARCHES) {
    throw invalidArgument(
      `DNSOption.Searches has more than ${MAX_DNS_SEARCHES} domains: ${dns.searches.length}`,
    );
  }
  let out = "";
  if (dns.searches.length > 0) out += `search ${dns.searches.join(" ")}\n`;
  for (const s of dns.servers) out += `nameserver ${s}\n`;
  if (dns.options.length > 0) out += `options ${dns.options.join(" ")}\n`;
  return out === "" ? hostResolv : out;
}

// ---------------------------------------------------------------------------------------------
// Sandbox spec

/**
 * The OCI spec of a pod sandbox's pause container, as containerd's `sandboxContainerSpec`:
 * the image's entrypoint + cmd, env and working dir; a read-only rootfs; the pod's hostname;
 * new network (or the pinned one), UTS, IPC and PID namespaces unless the pod uses the node's;
 * the pod's `/dev/shm` and `/etc/resolv.conf`; its sysctls; CPU shares 2 and OOM score -998;
 * its user, supplemental groups and seccomp profile; the CRI annotations.
 *
 * @throws {TainerdError} InvalidArgument for an image without entrypoint and cmd, a user name
 *   (a sandbox's user must be numeric) or a bad seccomp profile; NotFound for a missing
 *   Localhost seccomp profile
 */
export function sandboxSpec(
  id: string,
  config: PodSandboxConfig,
  image: ImageConfig,
  opts: SandboxSpecOptions,
): Spec {
  const spec = baseSpec(id);
  const linux = config.linux;
  const sc = linux?.securityContext;
  const ns = sc?.namespaceOptions;

  withEnv(spec, image.Env ?? []);
  spec.root.readonly = true;
  if (image.WorkingDir) spec.process.cwd = image.WorkingDir;
  const args = [...(image.Entrypoint ?? []), ...(image.Cmd ?? [])];
  if (args.length === 0) {
    throw invalidArgument(`Invalid sandbox image config: it has neither entrypoint nor cmd`);
  }
  spec.process.args = args;

  const parent = opts.cgroupParent ?? linux?.cgroupParent ?? "";
  if (parent) spec.linux.cgroupsPath = cgroupsPath(parent, id);

  // Namespaces: runc makes new ones, except those the pod shares with the node.
  if (ns?.network === NamespaceMode.NODE) {
    removeNamespace(spec, "network");
    removeNamespace(spec, "uts");
  } else {
    setNamespace(spec, "network", opts.netnsPath || undefined);
    if (config.hostname) spec.hostname = config.hostname;
  }
  if (ns?.pid === NamespaceMode.NODE) removeNamespace(spec, "pid");
  if (ns?.ipc === NamespaceMode.NODE) removeNamespace(spec, "ipc");

  const shm = ns?.ipc === NamespaceMode.NODE ? DEV_SHM : opts.files.shmPath;
  const mounts: SpecMount[] = [];
  if (shm) {
    mounts.push({ destination: DEV_SHM, type: "bind", source: shm, options: ["rbind", "ro"] });
  }
  mounts.push({
    destination: RESOLV_CONF,
    type: "bind",
    source: opts.files.resolvConfPath,
    options: ["rbind", "ro"],
  });
  replaceMounts(spec, mounts);

  // User: the pod's run_as_user[:run_as_group], else the image's.
  const user = userString("", sc?.runAsUser, sc?.runAsGroup) || image.User || "";
  if (user) numericUser(spec, user, "sandbox");
  addSupplementalGroups(spec, sc?.supplementalGroups ?? []);

  const sysctls = linux?.sysctls ?? {};
  if (Object.keys(sysctls).length > 0) spec.linux.sysctl = { ...sysctls };

  spec.linux.resources.cpu = { ...spec.linux.resources.cpu, shares: SANDBOX_CPU_SHARES };
  spec.process.oomScoreAdj = opts.restrictOomScoreAdj
    ? restrictOomScoreAdj(SANDBOX_OOM_SCORE_ADJ)
    : SANDBOX_OOM_SCORE_ADJ;

  const seccomp = seccompForSync(sc?.seccomp, sc?.seccompProfilePath ?? "", !!sc?.privileged, {
    capabilities: spec.process.capabilities.bounding ?? [],
    defaultWhenUnset: opts.seccompDefault,
  });
  if (seccomp) spec.linux.seccomp = seccomp;

  spec.annotations = {
    ...spec.annotations,
    [Annotations.ContainerType]: Annotations.ContainerTypeSandbox,
    [Annotations.SandboxID]: id,
    [Annotations.SandboxNamespace]: config.metadata?.namespace ?? "",
    [Annotations.SandboxUID]: config.metadata?.uid ?? "",
    [Annotations.SandboxName]: config.metadata?.name ?? "",
    [Annotations.SandboxLogDir]: config.logDirectory,
  };
  return spec;
}

// ---------------------------------------------------------------------------------------------
// Container spec

/**
 * The OCI spec of a container in a pod sandbox, as containerd's `containerSpec` +
 * `containerSpecOpts`: args by the CRI's rules, env, working dir, terminal; the CRI mounts
 * (bind, with propagation) and the sandbox's hostname, hosts, resolv.conf and shm; devices;
 * the sandbox's namespaces; resources and OOM score; user and groups; capabilities or
 * privileged mode; read-only rootfs, no_new_privs, masked and read-only paths; seccomp; the
 * CRI annotations.
 *
 * @throws {TainerdError} InvalidArgument for no command, a privileged container in an
 *   unprivileged sandbox, a device that is not one, a mount whose propagation the host mount
 *   does not allow, a group without a user or a bad seccomp profile; NotFound for a user,
 *   group, device or Localhost seccomp profile that does not exist
 */
export async function containerSpec(
  id: string,
  config: ContainerConfig,
  sandbox: SandboxRef,
  image: ImageConfig,
  opts: ContainerSpecOptions = {},
): Promise<Spec> {
  const spec = baseSpec(id);
  const sc = config.linux?.securityContext;
  const ns = sc?.namespaceOptions;
  const privileged = !!sc?.privileged;

  spec.process.args = processArgs(config, image);
  spec.process.noNewPrivileges = false;
  if (config.workingDir) spec.process.cwd = config.workingDir;
  else if (image.WorkingDir) spec.process.cwd = image.WorkingDir;
  if (config.tty) withTty(spec);

  withEnv(spec, [`HOSTNAME=${sandboxHostname(sandbox.config)}`]);
  // The image's env first, so that the container's overrides it.
  withEnv(spec, [...(image.Env ?? []), ...config.envs.map(envString)]);

  await applyMounts(spec, [...config.mounts], containerMounts(config, sandbox.files));

  // Masked and read-only paths: the defaults unless the config gives its own (a privileged
  // container has none; see below).
  if (sc && sc.maskedPaths.length > 0) spec.linux.maskedPaths = [...sc.maskedPaths];
  if (sc && sc.readonlyPaths.length > 0) spec.linux.readonlyPaths = [...sc.readonlyPaths];

  if (privileged) {
    if (!sandbox.config.linux?.securityContext?.privileged) {
      throw invalidArgument("No privileged container allowed in sandbox: the sandbox is not");
    }
    withPrivileged(spec, hostDevices(), currentCapabilities());
  } else {
    await applyDevices(spec, config);
    applyCapabilities(spec, sc?.capabilities, currentCapabilities());
  }
  // As containerd (and docker): no ambient capabilities.
  delete spec.process.capabilities.ambient;
  delete spec.process.capabilities.inheritable;

  if (sc?.noNewPrivs) spec.process.noNewPrivileges = true;
  if (sc?.readonlyRootfs) spec.root.readonly = true;

  const resources = config.linux?.resources;
  if (resources) applyResources(spec, resources);
  const parent = sandbox.cgroupParent ?? sandbox.config.linux?.cgroupParent ?? "";
  if (parent) spec.linux.cgroupsPath = cgroupsPath(parent, id);

  if (resources) {
    const adj = Number(resources.oomScoreAdj);
    spec.process.oomScoreAdj = opts.restrictOomScoreAdj ? restrictOomScoreAdj(adj) : adj;
  }

  // Namespaces: the sandbox's network, IPC and UTS; its PID one unless the pod asks otherwise.
  if (sandbox.netnsPath) setNamespace(spec, "network", sandbox.netnsPath);
  else if (ns?.network === NamespaceMode.NODE) removeNamespace(spec, "network");
  else setNamespace(spec, "network", `/proc/${sandbox.pid}/ns/net`);
  setNamespace(spec, "ipc", `/proc/${sandbox.pid}/ns/ipc`);
  setNamespace(spec, "uts", `/proc/${sandbox.pid}/ns/uts`);
  switch (ns?.pid ?? NamespaceMode.POD) {
    case NamespaceMode.CONTAINER:
      setNamespace(spec, "pid");
      break;
    case NamespaceMode.NODE:
      removeNamespace(spec, "pid");
      break;
    case NamespaceMode.TARGET:
      if (!sandbox.targetPid) {
        throw invalidArgument(`Invalid pid namespace mode TARGET: no target container given`);
      }
      setNamespace(spec, "pid", `/proc/${sandbox.targetPid}/ns/pid`);
      break;
    default:
      setNamespace(spec, "pid", `/proc/${sandbox.pid}/ns/pid`);
  }
  // A cgroup namespace hides the host's hierarchy, on cgroup v2 only (as containerd).
  if (isCgroup2() && !privileged) setNamespace(spec, "cgroup");

  // User: run_as_username / run_as_user [+ run_as_group], else the image's; then the groups
  // /etc/group gives the user, then the config's supplemental groups.
  const user = userString(sc?.runAsUsername ?? "", sc?.runAsUser, sc?.runAsGroup) ||
    image.User || "";
  if (opts.rootfs) {
    if (user) await withUser(spec, user, opts.rootfs);
    else await withAdditionalGids(spec, "0", opts.rootfs);
  } else if (user) {
    numericUser(spec, user, "container");
  } else {
    spec.process.user.additionalGids = [spec.process.user.gid];
  }
  // SupplementalGroupsPolicy Strict: only the primary group and the config's, none of the
  // image's /etc/group (Merge, the default, keeps them).
  if (sc?.supplementalGroupsPolicy === SupplementalGroupsPolicy.Strict) {
    spec.process.user.additionalGids = [spec.process.user.gid];
  }
  addSupplementalGroups(spec, sc?.supplementalGroups ?? []);

  const seccomp = seccompForSync(sc?.seccomp, sc?.seccompProfilePath ?? "", privileged, {
    capabilities: spec.process.capabilities.bounding ?? [],
    defaultWhenUnset: opts.seccompDefault,
  });
  if (seccomp) spec.linux.seccomp = seccomp;

  const meta = sandbox.config.metadata;
  spec.annotations = {
    ...spec.annotations,
    [Annotations.ContainerType]: Annotations.ContainerTypeContainer,
    [Annotations.SandboxID]: sandbox.id,
    [Annotations.SandboxNamespace]: meta?.namespace ?? "",
    [Annotations.SandboxName]: meta?.name ?? "",
    [Annotations.ContainerName]: config.metadata?.name ?? "",
    [Annotations.ImageName]: opts.imageName ?? config.image?.image ?? "",
  };
  return spec;
}

/**
 * The process args of a container by the CRI's rules (containerd's `WithProcessArgs`, from
 * docker): a command replaces the image's entrypoint *and* cmd (args follow it); without a
 * command, args replace the image's cmd and follow its entrypoint (an entrypoint of `[""]`
 * counts as none).
 *
 * @throws {TainerdError} InvalidArgument when that leaves nothing to run
 */
export function processArgs(config: ContainerConfig, image: ImageConfig): string[] {
  let command = [...config.command];
  let args = [...config.args];
  if (command.length === 0) {
    if (args.length === 0) args = [...(image.Cmd ?? [])];
    const entry = image.Entrypoint ?? [];
    if (!(entry.length === 1 && entry[0] === "")) command = [...entry];
  }
  const all = [...command, ...args];
  if (all.length === 0) throw invalidArgument("No command specified for the container");
  return all;
}

/**
 * The user string CRI fields make, as containerd's `generateUserString`: the user name or
 * uid, then `:gid` when a group is given; `""` when neither.
 *
 * @throws {TainerdError} InvalidArgument for a group without a user
 */
export function userString(
  username: string,
  uid: Int64Value | undefined,
  gid: Int64Value | undefined,
): string {
  let user = uid ? String(uid.value) : "";
  if (username) user = username;
  const group = gid ? String(gid.value) : "";
  if (!user) {
    if (group) throw invalidArgument(`Invalid user: group "${group}" is specified without user`);
    return "";
  }
  return group ? `${user}:${group}` : user;
}

/**
 * The cgroups path of a container under `parent`, as containerd's `getCgroupsPath`: a systemd
 * slice (`….slice`) gives `slice:cri-containerd:id`, anything else `parent/id`.
 */
export function cgroupsPath(parent: string, id: string): string {
  const base = parent.replace(/\/+$/, "").split("/").pop() ?? "";
  if (base.endsWith(".slice")) return `${base}:cri-containerd:${id}`;
  return cleanPath(`${parent}/${id}`);
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** The default spec without what CRI takes out (`/run`, rlimits), as containerd's CRI. */
function baseSpec(id: string): Spec {
  const spec = defaultSpec(CRI_NAMESPACE, id);
  spec.mounts = spec.mounts.filter((m) => m.destination !== "/run");
  spec.process.rlimits = [];
  return spec;
}

function envString(kv: KeyValue): string {
  const v = kv.value as Uint8Array | string;
  return `${kv.key}=${typeof v === "string" ? v : new TextDecoder().decode(v)}`;
}

function setNamespace(spec: Spec, type: string, path?: string): void {
  const ns = spec.linux.namespaces.filter((n) => n.type !== type);
  ns.push(path ? { type, path } : { type });
  spec.linux.namespaces = ns;
}

function removeNamespace(spec: Spec, type: string): void {
  spec.linux.namespaces = spec.linux.namespaces.filter((n) => n.type !== type);
}

/** Adds mounts, each replacing a mount at the same destination. */
function replaceMounts(spec: Spec, mounts: SpecMount[]): void {
  for (const m of mounts) {
    spec.mounts = spec.mounts.filter((x) => cleanPath(x.destination) !== cleanPath(m.destination));
    spec.mounts.push(m);
  }
}

/** Sets a numeric `uid[:gid]` user without a rootfs to look names up in. */
function numericUser(spec: Spec, user: string, what: string): void {
  const m = /^(\d+)(?::(\d+))?$/.exec(user);
  if (!m) {
    throw invalidArgument(
      `Cannot resolve the ${what} user "${user}": names need the rootfs' /etc/passwd`,
    );
  }
  spec.process.user.uid = Number(m[1]);
  spec.process.user.gid = m[2] !== undefined ? Number(m[2]) : 0;
  spec.process.user.additionalGids = [spec.process.user.gid];
}

function addSupplementalGroups(spec: Spec, groups: readonly bigint[]): void {
  const gids = spec.process.user.additionalGids ?? [];
  for (const g of groups) {
    const gid = Number(g);
    if (!gids.includes(gid)) gids.push(gid);
  }
  if (gids.length > 0) spec.process.user.additionalGids = gids;
}

/** A clean absolute path (`//a/./b/../c/` → `/a/c`), as Go's `filepath.Clean`. */
function cleanPath(path: string): string {
  const out: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return path.startsWith("/") ? `/${out.join("/")}` : out.join("/") || ".";
}

/** The sandbox's files mounted into a container, unless the config mounts them itself. */
function containerMounts(config: ContainerConfig, files: SandboxFiles): CriMount[] {
  const ro = !!config.linux?.securityContext?.readonlyRootfs;
  const has = (dst: string) => config.mounts.some((m) => cleanPath(m.containerPath) === dst);
  const out: CriMount[] = [];
  if (!has(ETC_HOSTNAME) && files.hostnamePath && exists(files.hostnamePath)) {
    out.push(criMount(ETC_HOSTNAME, files.hostnamePath, ro));
  }
  if (!has(ETC_HOSTS) && files.hostsPath) out.push(criMount(ETC_HOSTS, files.hostsPath, ro));
  if (!has(RESOLV_CONF) && files.resolvConfPath) {
    out.push(criMount(RESOLV_CONF, files.resolvConfPath, ro));
  }
  if (!has(DEV_SHM)) {
    // With the node's IPC namespace, the node's /dev/shm (as containerd).
    const ipc = config.linux?.securityContext?.namespaceOptions?.ipc;
    const shm = ipc === NamespaceMode.NODE ? DEV_SHM : files.shmPath;
    if (shm) out.push(criMount(DEV_SHM, shm, false));
  }
  return out;
}

/** The parts of a CRI mount the spec uses. */
type CriMount =
  & Pick<Mount, "containerPath" | "hostPath" | "readonly" | "propagation">
  & Partial<Pick<Mount, "recursiveReadOnly">>;

function criMount(containerPath: string, hostPath: string, readonly: boolean): CriMount {
  return {
    containerPath,
    hostPath,
    readonly,
    propagation: MountPropagation.PROPAGATION_PRIVATE,
  };
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Adds the CRI mounts and the extra (sandbox) ones, as containerd's `WithMounts`: a CRI mount
 * wins over an extra one at the same place; shallower mounts first; the read-only cgroupfs;
 * the default mounts a supplied one covers (everything under `/dev` for a supplied `/dev`)
 * dropped; each host path created when missing and its symlinks resolved; bind with
 * rprivate / rslave / rshared propagation (the host mount must allow it) and ro or rw.
 */
async function applyMounts(spec: Spec, cri: CriMount[], extra: CriMount[]): Promise<void> {
  const mounts = [...cri];
  for (const e of extra) {
    if (!cri.some((c) => cleanPath(c.containerPath) === cleanPath(e.containerPath))) {
      mounts.push(e);
    }
  }
  const depth = (p: string) => cleanPath(p).split("/").filter((x) => x).length;
  mounts.sort((a, b) => depth(a.containerPath) - depth(b.containerPath));

  spec.mounts.push({
    destination: "/sys/fs/cgroup",
    type: "cgroup",
    source: "cgroup",
    options: ["nosuid", "noexec", "nodev", "relatime", "ro"],
  });
  const supplied = new Set(mounts.map((m) => cleanPath(m.containerPath)));
  spec.mounts = spec.mounts.filter((m) => {
    const dst = cleanPath(m.destination);
    if (supplied.has(dst)) return false;
    return !(supplied.has("/dev") && dst.startsWith("/dev/"));
  });

  for (const m of mounts) {
    if (!m.containerPath.startsWith("/")) {
      throw invalidArgument(`Invalid mount: container path "${m.containerPath}" is not absolute`);
    }
    if (!m.hostPath) throw invalidArgument(`Invalid mount at "${m.containerPath}": no host path`);
    // Recursive read-only (runc's `rro`, mount_setattr(2) with AT_RECURSIVE): only for a
    // read-only mount with private propagation, as containerd 2's.
    if (m.recursiveReadOnly) {
      if (!m.readonly) {
        throw invalidArgument(
          `Invalid mount at "${m.containerPath}": recursive read-only needs read-only`,
        );
      }
      if (m.propagation !== MountPropagation.PROPAGATION_PRIVATE) {
        throw invalidArgument(
          `Invalid mount at "${m.containerPath}": recursive read-only needs private propagation`,
        );
      }
    }
    try {
      await Deno.stat(m.hostPath);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
      await Deno.mkdir(m.hostPath, { recursive: true, mode: 0o755 });
    }
    const src = await Deno.realPath(m.hostPath);
    const options = ["rbind"];
    switch (m.propagation) {
      case MountPropagation.PROPAGATION_BIDIRECTIONAL:
        requirePropagation(src, ["shared:"], "shared");
        options.push("rshared");
        spec.linux.rootfsPropagation = "rshared";
        break;
      case MountPropagation.PROPAGATION_HOST_TO_CONTAINER:
        requirePropagation(src, ["shared:", "master:"], "shared or slave");
        options.push("rslave");
        if (spec.linux.rootfsPropagation !== "rshared") spec.linux.rootfsPropagation = "rslave";
        break;
      default:
        options.push("rprivate");
    }
    options.push(m.readonly ? "ro" : "rw");
    if (m.recursiveReadOnly) options.push("rro");
    spec.mounts.push({ destination: m.containerPath, type: "bind", source: src, options });
  }
}

/** Checks that the host mount holding `path` propagates as a mount of it must. */
function requirePropagation(path: string, tags: string[], what: string): void {
  const m = lookupMount(path);
  const optional = m.optional.split(" ");
  if (!optional.some((o) => tags.some((t) => o.startsWith(t)))) {
    throw invalidArgument(
      `Path "${path}" is mounted on "${m.mountpoint}" but it is not a ${what} mount`,
    );
  }
}

/** Adds the config's devices (containerd's `WithDevices`): the node's device and cgroup rule. */
async function applyDevices(spec: Spec, config: ContainerConfig): Promise<void> {
  for (const d of config.devices) {
    let path: string;
    let st: Deno.FileInfo;
    try {
      path = await Deno.realPath(d.hostPath);
      st = await Deno.lstat(path);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        throw notFound(`Cannot add device "${d.hostPath}": no such file`, { cause: err });
      }
      throw err;
    }
    if (!st.isCharDevice && !st.isBlockDevice) {
      throw invalidArgument(`Cannot add device "${d.hostPath}": not a device node`);
    }
    const rdev = st.rdev ?? 0;
    const type = st.isCharDevice ? "c" : "b";
    const major = Number((BigInt(rdev) >> 8n) & 0xfffn);
    const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    const access = d.permissions || "rwm";
    if (!/^[rwm]+$/.test(access)) {
      throw invalidArgument(`Invalid permissions "${access}" of device "${d.hostPath}"`);
    }
    const dev: LinuxDevice = {
      path: d.containerPath,
      type,
      major,
      minor,
      fileMode: (st.mode ?? 0) & 0o7777,
      uid: st.uid ?? 0,
      gid: st.gid ?? 0,
    };
    spec.linux.devices = [...(spec.linux.devices ?? []), dev];
    spec.linux.resources.devices.push({ allow: true, type, major, minor, access });
  }
}

/**
 * Adds and drops capabilities, as containerd's `WithCapabilities`: `ALL` in add gives every
 * capability (`all`), in drop none, before the individual ones apply (so add ALL + drop CHOWN
 * is everything but CAP_CHOWN). Names may come with or without `CAP_`, in any case.
 */
function applyCapabilities(spec: Spec, caps: Capability | undefined, all: string[]): void {
  if (!caps) return;
  const isAll = (c: string) => c.toUpperCase() === "ALL";
  const name = (c: string) => {
    const u = c.toUpperCase();
    return u.startsWith("CAP_") ? u : `CAP_${u}`;
  };
  const c = spec.process.capabilities;
  const kinds = ["bounding", "effective", "permitted"] as const;
  if (caps.addCapabilities.some(isAll)) { for (const k of kinds) c[k] = [...all]; }
  if (caps.dropCapabilities.some(isAll)) { for (const k of kinds) c[k] = []; }
  for (const cap of caps.addCapabilities.filter((x) => !isAll(x)).map(name)) {
    for (const k of kinds) if (!(c[k] ??= []).includes(cap)) c[k]!.push(cap);
  }
  const drop = new Set(caps.dropCapabilities.filter((x) => !isAll(x)).map(name));
  for (const k of kinds) c[k] = (c[k] ?? []).filter((x) => !drop.has(x));
}

/** Sets CPU, memory, hugepage and unified limits, as containerd's `WithResources`. */
function applyResources(spec: Spec, r: LinuxContainerResources): void {
  const res = spec.linux.resources;
  const cpu: Record<string, unknown> = { ...res.cpu };
  if (r.cpuPeriod !== 0n) cpu.period = Number(r.cpuPeriod);
  if (r.cpuQuota !== 0n) cpu.quota = Number(r.cpuQuota);
  if (r.cpuShares !== 0n) cpu.shares = Number(r.cpuShares);
  if (r.cpusetCpus) cpu.cpus = r.cpusetCpus;
  if (r.cpusetMems) cpu.mems = r.cpusetMems;
  if (Object.keys(cpu).length > 0) res.cpu = cpu;

  const limit = Number(r.memoryLimitInBytes);
  const swap = Number(r.memorySwapLimitInBytes);
  if (limit !== 0) {
    res.memory = { ...res.memory, limit };
    // Swap equal to the limit keeps the container from swapping, by default.
    if (swap === 0 && swapControllerAvailable()) res.memory.swap = limit;
  }
  if (swap !== 0 && swapControllerAvailable()) res.memory = { ...res.memory, swap };

  // Without a hugetlb controller the limits are dropped (tolerate_missing_hugetlb_controller).
  if (r.hugepageLimits.length > 0 && hugetlbControllerAvailable()) {
    res.hugepageLimits = r.hugepageLimits.map((h) => ({
      pageSize: h.pageSize,
      limit: Number(h.limit),
    }));
  }
  if (Object.keys(r.unified).length > 0) {
    res.unified = { ...(res.unified as Record<string, string> | undefined), ...r.unified };
  }
}

/** The OOM score adjustment, never below this process's own (`restrictOOMScoreAdj`). */
function restrictOomScoreAdj(preferred: number): number {
  let current = 0;
  try {
    current = Number(Deno.readTextFileSync("/proc/self/oom_score_adj").trim());
  } catch {
    return preferred;
  }
  return preferred < current ? current : preferred;
}

let cgroup2: boolean | undefined;
/** Whether the host runs cgroup v2 (unified hierarchy at `/sys/fs/cgroup`). */
function isCgroup2(): boolean {
  return cgroup2 ??= exists("/sys/fs/cgroup/cgroup.controllers");
}

let swapAvailable: boolean | undefined;
function swapControllerAvailable(): boolean {
  if (swapAvailable !== undefined) return swapAvailable;
  let p = "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes";
  if (isCgroup2()) {
    try {
      const own = Deno.readTextFileSync("/proc/self/cgroup").split("\n")
        .find((l) => l.startsWith("0::"))?.slice(3) ?? "/";
      p = cleanPath(`/sys/fs/cgroup/${own}/memory.swap.max`);
    } catch {
      return swapAvailable = false;
    }
  }
  return swapAvailable = exists(p);
}

let hugetlbAvailable: boolean | undefined;
function hugetlbControllerAvailable(): boolean {
  if (hugetlbAvailable !== undefined) return hugetlbAvailable;
  if (isCgroup2()) {
    try {
      const c = Deno.readTextFileSync("/sys/fs/cgroup/cgroup.controllers");
      return hugetlbAvailable = c.split(/\s+/).includes("hugetlb");
    } catch {
      return hugetlbAvailable = false;
    }
  }
  return hugetlbAvailable = exists("/sys/fs/cgroup/hugetlb");
}
