/**
 * Seccomp for CRI containers, as containerd 1.6's CRI plugin: the runtime's default profile
 * (contrib/seccomp's `DefaultProfile`: an allow list, the capability-conditional rules, the
 * architecture map, everything else refused with EPERM) and the choice of a profile from a
 * CRI `SecurityProfile` (RuntimeDefault, Unconfined, Localhost) or its deprecated path form.
 *
 * @module
 */

import {
  type SecurityProfile,
  SecurityProfile_ProfileType,
} from "../../../api/gen/runtime/v1/api_pb.ts";
import { invalidArgument, notFound } from "../../errdefs.ts";

/** One condition on a syscall's argument (`linux.seccomp.syscalls[].args[]`). */
export interface LinuxSeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: string;
}

/** One rule of a seccomp profile (`linux.seccomp.syscalls[]`). */
export interface LinuxSyscall {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: LinuxSeccompArg[];
}

/** An OCI seccomp profile (`linux.seccomp`). */
export interface LinuxSeccomp {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures?: string[];
  flags?: string[];
  listenerPath?: string;
  listenerMetadata?: string;
  syscalls?: LinuxSyscall[];
}

/** The capabilities a container gets by default (containerd's default spec). */
export const DEFAULT_CAPABILITIES: readonly string[] = [
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

/** Syscalls every container may make (containerd's default allow list). */
const ALLOWED = `
  accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown
  chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
  clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
  copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
  epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat
  exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark
  fchdir fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
  flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64
  fsync ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd
  getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups
  getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
  getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list
  getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid
  getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
  io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get
  ioprio_set io_setup io_submit io_uring_enter io_uring_register io_uring_setup ipc
  kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
  lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr
  lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat
  mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify
  mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64
  mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap nanosleep
  newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
  pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2
  prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
  readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
  remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
  rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
  rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
  sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
  sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
  sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
  semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
  setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid
  setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid
  setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address
  setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
  sigprocmask sigreturn socket socketcall socketpair splice stat stat64 statfs statfs64
  statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create
  timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
  timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
  times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat
  utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
`.trim().split(/\s+/);

/** Syscalls allowed when the bounding set holds a capability. */
const BY_CAPABILITY: Record<string, string[]> = {
  CAP_DAC_READ_SEARCH: ["open_by_handle_at"],
  CAP_SYS_ADMIN: `
    bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount
    mount_setattr move_mount name_to_handle_at open_tree perf_event_open quotactl quotactl_fd
    setdomainname sethostname setns syslog umount umount2 unshare
  `.trim().split(/\s+/),
  CAP_SYS_BOOT: ["reboot"],
  CAP_SYS_CHROOT: ["chroot"],
  CAP_SYS_MODULE: ["delete_module", "init_module", "finit_module"],
  CAP_SYS_PACCT: ["acct"],
  CAP_SYS_PTRACE: [
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
  ],
  CAP_SYS_RAWIO: ["iopl", "ioperm"],
  CAP_SYS_TIME: ["settimeofday", "stime", "clock_settime", "clock_settime64"],
  CAP_SYS_TTY_CONFIG: ["vhangup"],
  CAP_SYS_NICE: ["get_mempolicy", "mbind", "set_mempolicy"],
  CAP_SYSLOG: ["syslog"],
  CAP_BPF: ["bpf"],
  CAP_PERFMON: ["perf_event_open"],
};

/** Syscalls allowed on one architecture only (Deno's `build.arch` names). */
const BY_ARCH: Record<string, string[]> = {
  x86_64: ["arch_prctl", "modify_ldt"],
  aarch64: [
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
  ],
};

/** The seccomp architectures of a build architecture (native first, then its compat ones). */
const ARCHES: Record<string, string[]> = {
  x86_64: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
  aarch64: ["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"],
};

/** The namespace flags of clone(2) a container without CAP_SYS_ADMIN may not pass. */
const CLONE_NAMESPACE_FLAGS = 0x00020000 | // CLONE_NEWNS
  0x02000000 | // CLONE_NEWCGROUP
  0x04000000 | // CLONE_NEWUTS
  0x08000000 | // CLONE_NEWIPC
  0x10000000 | // CLONE_NEWUSER
  0x20000000 | // CLONE_NEWPID
  0x40000000; // CLONE_NEWNET

const ENOSYS = 38;
const EPERM = 1;

/** Whether the running kernel is at least `major.minor`. */
function kernelAtLeast(major: number, minor: number, release = Deno.osRelease()): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release);
  if (!m) return false;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj > major || (maj === major && min >= minor);
}

/**
 * containerd's default seccomp profile for a container whose bounding set is `capabilities`:
 * everything not allowed fails with EPERM; the allow list, plus the syscalls each held
 * capability needs (`CAP_SYS_ADMIN`: mount, unshare, setns, …), plus the architecture's own;
 * without `CAP_SYS_ADMIN`, clone(2) only without namespace flags and clone3(2) fails with
 * ENOSYS (so libcs fall back to clone).
 */
export function defaultSeccompProfile(
  capabilities: readonly string[] = DEFAULT_CAPABILITIES,
  arch: string = Deno.build.arch,
): LinuxSeccomp {
  const allow = (names: string[], args: LinuxSeccompArg[] = []): LinuxSyscall => ({
    names,
    action: "SCMP_ACT_ALLOW",
    args,
  });
  const syscalls: LinuxSyscall[] = [allow([...ALLOWED])];
  // personality(2) only with the personas containerd allows (PER_LINUX, PER_LINUX32,
  // UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff).
  for (const persona of [0x0, 0x0008, 0x20000, 0x20008, 0xffffffff]) {
    syscalls.push(allow(["personality"], [{ index: 0, value: persona, op: "SCMP_CMP_EQ" }]));
  }
  if (kernelAtLeast(4, 8)) syscalls.push(allow(["ptrace"]));
  if (BY_ARCH[arch]) syscalls.push(allow([...BY_ARCH[arch]]));
  for (const cap of capabilities) {
    if (BY_CAPABILITY[cap]) syscalls.push(allow([...BY_CAPABILITY[cap]]));
  }
  if (!capabilities.includes("CAP_SYS_ADMIN")) {
    syscalls.push(
      allow(["clone"], [{
        index: 0,
        value: CLONE_NAMESPACE_FLAGS,
        valueTwo: 0,
        op: "SCMP_CMP_MASKED_EQ",
      }]),
    );
    syscalls.push({ names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS });
  }
  return {
    defaultAction: "SCMP_ACT_ERRNO",
    defaultErrnoRet: EPERM,
    architectures: [...(ARCHES[arch] ?? [])],
    syscalls,
  };
}

/**
 * The security profile a deprecated `seccomp_profile_path` names, as containerd's
 * `generateSecurityProfile`: `runtime/default`, `docker/default` → RuntimeDefault;
 * `unconfined` → Unconfined; `localhost/<path>` → Localhost.
 *
 * @throws {TainerdError} InvalidArgument for any other form
 */
export function legacySeccompProfile(
  path: string,
): { type: SecurityProfile_ProfileType; localhostRef: string } {
  switch (path) {
    case "":
    case "runtime/default":
    case "docker/default":
      return { type: SecurityProfile_ProfileType.RuntimeDefault, localhostRef: "" };
    case "unconfined":
      return { type: SecurityProfile_ProfileType.Unconfined, localhostRef: "" };
  }
  if (!path.startsWith("localhost/")) {
    throw invalidArgument(
      `Invalid seccomp profile "${path}": expected runtime/default, unconfined or localhost/<path>`,
    );
  }
  return {
    type: SecurityProfile_ProfileType.Localhost,
    localhostRef: path.slice("localhost/".length),
  };
}

/** Options of {@link seccompFor}. */
export interface SeccompOptions {
  /** The container's bounding capabilities, for the default profile's conditional rules. */
  capabilities?: readonly string[];
  /** Apply the default profile when neither a profile nor a path is given (`seccompDefault`). */
  defaultWhenUnset?: boolean;
}

/**
 * The seccomp profile of a container, synchronously; see {@link seccompFor}.
 *
 * @throws {TainerdError} InvalidArgument for a bad profile, NotFound for a missing Localhost file
 */
export function seccompForSync(
  profile: SecurityProfile | undefined,
  legacyPath: string,
  privileged: boolean,
  options: SeccompOptions = {},
): LinuxSeccomp | undefined {
  // A privileged container never gets a seccomp profile.
  if (privileged) return undefined;
  let type: SecurityProfile_ProfileType;
  let ref: string;
  if (profile) {
    type = profile.profileType;
    ref = profile.localhostRef;
  } else if (legacyPath) {
    ({ type, localhostRef: ref } = legacySeccompProfile(legacyPath));
  } else if (options.defaultWhenUnset) {
    type = SecurityProfile_ProfileType.RuntimeDefault;
    ref = "";
  } else {
    // containerd leaves a container without any profile unconfined.
    return undefined;
  }
  if (type !== SecurityProfile_ProfileType.Localhost && ref !== "") {
    throw invalidArgument(
      "Invalid seccomp profile: localhost_ref must only be set if profile_type is Localhost",
    );
  }
  switch (type) {
    case SecurityProfile_ProfileType.Unconfined:
      return undefined;
    case SecurityProfile_ProfileType.RuntimeDefault:
      return defaultSeccompProfile(options.capabilities);
    case SecurityProfile_ProfileType.Localhost:
      return readLocalhostProfile(ref.startsWith("localhost/") ? ref.slice(10) : ref);
    default:
      throw invalidArgument(`Invalid seccomp profile: unknown profile type ${type}`);
  }
}

/**
 * The seccomp profile of a container, as containerd's CRI: none when privileged; RuntimeDefault
 * → {@link defaultSeccompProfile}; Unconfined → none; Localhost → the JSON profile in the file
 * at `localhost_ref`. Without a profile, the deprecated `seccomp_profile_path` (`legacyPath`)
 * decides; without either, none (or the default with `defaultWhenUnset`).
 *
 * @throws {TainerdError} InvalidArgument for a bad profile or file, NotFound for a missing file
 */
export function seccompFor(
  profile: SecurityProfile | undefined,
  legacyPath: string,
  privileged: boolean,
  options: SeccompOptions = {},
): Promise<LinuxSeccomp | undefined> {
  try {
    return Promise.resolve(seccompForSync(profile, legacyPath, privileged, options));
  } catch (err) {
    return Promise.reject(err);
  }
}

function readLocalhostProfile(path: string): LinuxSeccomp {
  if (!path.startsWith("/")) {
    throw invalidArgument(`Invalid seccomp profile "${path}": the path must be absolute`);
  }
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw notFound(`Cannot load seccomp profile "${path}": no such file`, { cause: err });
    }
    throw invalidArgument(`Cannot load seccomp profile "${path}": ${(err as Error).message}`, {
      cause: err,
    });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw invalidArgument(`Cannot decode seccomp profile "${path}": ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw invalidArgument(`Cannot decode seccomp profile "${path}": not a JSON object`);
  }
  const p = parsed as Partial<LinuxSeccomp>;
  if (p.syscalls !== undefined && !Array.isArray(p.syscalls)) {
    throw invalidArgument(`Cannot decode seccomp profile "${path}": syscalls is not a list`);
  }
  return p as LinuxSeccomp;
}
