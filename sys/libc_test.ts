import assert from "node:assert/strict";
import {
  AT_FDCWD,
  AT_SYMLINK_NOFOLLOW,
  cstring,
  decodeWaitStatus,
  Errno,
  errnoName,
  getpid,
  isChildSubreaper,
  isErrno,
  kill,
  lchown,
  lgetxattr,
  llistxattr,
  lremovexattr,
  lsetxattr,
  major,
  makedev,
  minor,
  mknod,
  mount,
  MS_NOSUID,
  PR_GET_CHILD_SUBREAPER,
  prctl,
  S_IFCHR,
  S_IFIFO,
  setChildSubreaper,
  setsid,
  signalName,
  signalNumber,
  SysError,
  umask,
  umount2,
  UTIME_OMIT,
  utimensat,
  waitpid,
  waitpidAsync,
  WNOHANG,
  XATTR_CREATE,
} from "./libc.ts";

async function withDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-libc-test" });
  try {
    await fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

/** A process started with posix_spawn, so that Deno does not reap it. */
function spawnUnreaped(argv: string[]): number {
  const lib = Deno.dlopen("libc.so.6", {
    posix_spawn: {
      parameters: ["buffer", "buffer", "pointer", "pointer", "buffer", "pointer"],
      result: "i32",
    },
  });
  try {
    const strings = argv.map(cstring);
    const ptrs = new BigUint64Array(argv.length + 1);
    strings.forEach((s, i) => ptrs[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(s))));
    const pid = new Int32Array(1);
    const env = new BigUint64Array(1);
    const r = lib.symbols.posix_spawn(
      pid,
      strings[0],
      null,
      null,
      ptrs,
      Deno.UnsafePointer.of(env),
    );
    assert.equal(r, 0, `posix_spawn: ${errnoName(r)}`);
    return pid[0];
  } finally {
    lib.close();
  }
}

Deno.test("SysError names the call, its arguments and the errno", () => {
  const e = new SysError(Errno.EINVAL, "mount", ["overlay", "/x", "overlay"]);
  assert.equal(e.message, `mount("overlay", "/x", "overlay"): EINVAL (Invalid argument)`);
  assert.equal(e.code, "EINVAL");
  assert.equal(e.errno, 22);
  assert.equal(e.syscall, "mount");
  assert.equal(e.kind, "InvalidArgument");
  assert.equal(e.name, "SysError");
  assert.ok(e instanceof Error);
  assert.equal(new SysError(Errno.EPERM, "x").kind, "PermissionDenied");
  assert.equal(new SysError(Errno.EBUSY, "x").code, "EBUSY");
  assert.equal(new SysError(Errno.EBUSY, "x").kind, "Unavailable");
  assert.equal(new SysError(9999, "x").code, "E9999");
  assert.equal(new SysError(9999, "x").kind, "Internal");
});

Deno.test("makedev() encodes as glibc and major()/minor() decode it", () => {
  assert.equal(makedev(1, 3), 0x103n);
  assert.equal(makedev(8, 17), 0x811n);
  const big = makedev(0x12345, 0x6789a);
  assert.equal(big, (0x345n << 8n) | (0x12000n << 32n) | 0x9an | (0x67800n << 12n));
  assert.equal(major(big), 0x12345);
  assert.equal(minor(big), 0x6789a);
});

Deno.test("mknod() creates a character device and a FIFO", async () => {
  await withDir((dir) => {
    mknod(`${dir}/null`, S_IFCHR | 0o666, makedev(1, 3));
    const st = Deno.lstatSync(`${dir}/null`);
    assert.equal(st.isCharDevice, true);
    assert.equal(st.rdev, Number(makedev(1, 3)));
    assert.equal(major(st.rdev!), 1);
    assert.equal(minor(st.rdev!), 3);
    mknod(`${dir}/fifo`, S_IFIFO | 0o600);
    assert.equal(Deno.lstatSync(`${dir}/fifo`).isFifo, true);
    assert.throws(() => mknod(`${dir}/fifo`, S_IFIFO | 0o600), (e) => isErrno(e, "EEXIST"));
  });
});

Deno.test("lchown() changes a symlink, not its target", async () => {
  await withDir((dir) => {
    Deno.writeTextFileSync(`${dir}/target`, "x");
    Deno.symlinkSync(`${dir}/target`, `${dir}/link`);
    lchown(`${dir}/link`, 1234, 5678);
    const link = Deno.lstatSync(`${dir}/link`);
    assert.equal(link.uid, 1234);
    assert.equal(link.gid, 5678);
    const target = Deno.statSync(`${dir}/target`);
    assert.equal(target.uid, 0);
    assert.equal(target.gid, 0);
    lchown(`${dir}/link`, -1, 42);
    assert.equal(Deno.lstatSync(`${dir}/link`).uid, 1234);
    assert.equal(Deno.lstatSync(`${dir}/link`).gid, 42);
    assert.throws(() => lchown(`${dir}/missing`, 0, 0), (e) => isErrno(e, "ENOENT"));
  });
});

Deno.test("lsetxattr() and lgetxattr() round-trip binary values", async () => {
  await withDir((dir) => {
    // The temp dir (ext4 here) takes user.*; a tmpfs as root takes trusted.*.
    Deno.mkdirSync(`${dir}/tmpfs`);
    mount("tmpfs", `${dir}/tmpfs`, "tmpfs", MS_NOSUID, "size=1m");
    try {
      for (const [file, name] of [[`${dir}/f`, "user.tainerd"], [`${dir}/tmpfs/f`, "trusted.x"]]) {
        Deno.writeTextFileSync(file, "content");
        const value = new Uint8Array([0x00, 0xff, 0x10, 0x00, 0xfe, 0xff]);
        lsetxattr(file, name, value);
        assert.deepEqual(lgetxattr(file, name), value);
        assert.ok(llistxattr(file).includes(name));
        lsetxattr(file, `${name}.empty`, new Uint8Array());
        assert.deepEqual(lgetxattr(file, `${name}.empty`), new Uint8Array());
        const large = new Uint8Array(3000).map((_, i) => i & 0xff);
        lsetxattr(file, name, large);
        assert.deepEqual(lgetxattr(file, name), large);
        assert.throws(
          () => lsetxattr(file, name, value, XATTR_CREATE),
          (e) => isErrno(e, "EEXIST"),
        );
        assert.equal(lgetxattr(file, `${name}.missing`), null);
        lremovexattr(file, name);
        assert.equal(lgetxattr(file, name), null);
        assert.ok(!llistxattr(file).includes(name));
      }
      assert.throws(() => lgetxattr(`${dir}/missing`, "user.x"), (e) => isErrno(e, "ENOENT"));
    } finally {
      umount2(`${dir}/tmpfs`);
    }
  });
});

Deno.test("utimensat() with AT_SYMLINK_NOFOLLOW sets a symlink's times, not its target's", async () => {
  await withDir((dir) => {
    Deno.writeTextFileSync(`${dir}/target`, "x");
    Deno.symlinkSync(`${dir}/target`, `${dir}/link`);
    const before = Deno.statSync(`${dir}/target`).mtime!.getTime();
    utimensat(
      AT_FDCWD,
      `${dir}/link`,
      { sec: 1_000_000_000, nsec: 0 },
      { sec: 1_000_000_123, nsec: 456_000_000 },
      AT_SYMLINK_NOFOLLOW,
    );
    const link = Deno.lstatSync(`${dir}/link`);
    assert.equal(link.mtime!.getTime(), 1_000_000_123_456);
    assert.equal(link.atime!.getTime(), 1_000_000_000_000);
    assert.equal(Deno.statSync(`${dir}/target`).mtime!.getTime(), before);
    utimensat(AT_FDCWD, `${dir}/target`, { sec: 5, nsec: 0 }, { sec: 0, nsec: UTIME_OMIT });
    assert.equal(Deno.statSync(`${dir}/target`).atime!.getTime(), 5000);
    assert.equal(Deno.statSync(`${dir}/target`).mtime!.getTime(), before);
  });
});

Deno.test("setChildSubreaper() is readable with PR_GET_CHILD_SUBREAPER", () => {
  const was = isChildSubreaper();
  try {
    setChildSubreaper(true);
    assert.equal(isChildSubreaper(), true);
    const out = new Int32Array(1);
    prctl(PR_GET_CHILD_SUBREAPER, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(out))));
    assert.equal(out[0], 1);
    setChildSubreaper(false);
    assert.equal(isChildSubreaper(), false);
  } finally {
    setChildSubreaper(was);
  }
});

Deno.test("getpid(), kill() and umask() behave as the system calls", () => {
  assert.equal(getpid(), Deno.pid);
  kill(Deno.pid, 0);
  assert.throws(() => kill(0x7ffffff0, 0), (e) => isErrno(e, "ESRCH") && e.kind === "NotFound");
  assert.throws(() => kill(Deno.pid, "SIGNOPE" as Deno.Signal), TypeError);
  assert.equal(signalNumber("SIGTERM"), 15);
  assert.equal(signalNumber("KILL"), 9);
  assert.equal(signalName(9), "SIGKILL");
  const old = umask(0o027);
  try {
    assert.equal(umask(0o027), 0o027);
  } finally {
    umask(old);
  }
});

Deno.test("setsid() fails with EPERM in a process group leader", () => {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const pgrp = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
  if (pgrp !== Deno.pid) return; // would detach the test runner from its terminal
  assert.throws(() => setsid(), (e) => isErrno(e, "EPERM"));
});

Deno.test("waitpid() with WNOHANG on a pid that is not a child fails with ECHILD", async () => {
  assert.throws(() => waitpid(0x7ffffff0, WNOHANG), (e) => isErrno(e, "ECHILD"));
  await assert.rejects(waitpidAsync(0x7ffffff0), (e) => isErrno(e, "ECHILD"));
});

Deno.test("waitpidAsync() reaps exits and signals of children Deno does not know", async () => {
  const exits = spawnUnreaped(["/bin/sh", "-c", "exit 7"]);
  const r = await waitpidAsync(exits);
  assert.equal(r.pid, exits);
  assert.equal(r.exited, true);
  assert.equal(r.exitCode, 7);
  assert.equal(r.signaled, false);

  const sleeper = spawnUnreaped(["/bin/sleep", "30"]);
  const running = waitpid(sleeper, WNOHANG);
  assert.equal(running.pid, 0);
  assert.equal(running.exited, false);
  const waiting = waitpidAsync(sleeper);
  kill(sleeper, "SIGKILL");
  const killed = await waiting;
  assert.equal(killed.pid, sleeper);
  assert.equal(killed.signaled, true);
  assert.equal(killed.signal, 9);
  assert.equal(killed.exitCode, 137);
  assert.throws(() => waitpid(sleeper, WNOHANG), (e) => isErrno(e, "ECHILD"));
});

Deno.test("decodeWaitStatus() follows the W* macros", () => {
  assert.deepEqual(decodeWaitStatus(5, 0x0300), {
    pid: 5,
    status: 0x300,
    exited: true,
    exitCode: 3,
    signaled: false,
    signal: 0,
    coreDumped: false,
    stopped: false,
  });
  const core = decodeWaitStatus(5, 0x86);
  assert.equal(core.signaled, true);
  assert.equal(core.signal, 6);
  assert.equal(core.coreDumped, true);
  const stopped = decodeWaitStatus(5, 0x137f);
  assert.equal(stopped.stopped, true);
  assert.equal(stopped.signal, 19);
});
