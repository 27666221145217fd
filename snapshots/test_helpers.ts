/**
 * Helpers shared by the tests of `snapshots/` and `diff/`: temporary directories that are
 * always unmounted and removed, commands, and tree descriptions made with `find`, `stat` and
 * `getfattr` (independent of the code under test) for comparing filesystems.
 *
 * @module
 */

import { MNT_DETACH, umount2 } from "../sys/libc.ts";
import { mountinfo } from "../sys/mountinfo.ts";

/** Detaches every mount at or below `dir`, deepest first, then removes `dir` recursively. */
export function cleanupDir(dir: string): void {
  let real: string;
  try {
    real = Deno.realPathSync(dir);
  } catch {
    return;
  }
  const below = mountinfo((m) => m.mountpoint === real || m.mountpoint.startsWith(real + "/"))
    .sort((a, b) => b.mountpoint.length - a.mountpoint.length);
  for (const m of below) {
    try {
      umount2(m.mountpoint, MNT_DETACH);
    } catch {
      // already gone
    }
  }
  Deno.removeSync(dir, { recursive: true });
}

/** Runs `fn` with a new temporary directory, cleaned up (unmounted, removed) afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T> | T): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-test-" });
  let result: T;
  try {
    result = await fn(dir);
  } finally {
    cleanupDir(dir);
  }
  if (mountinfo((m) => m.mountpoint.startsWith(dir)).length > 0) {
    throw new Error(`Mounts left under ${dir}`);
  }
  return result;
}

/** Runs a command; throws unless it exits 0. Returns stdout as text. */
export async function sh(
  cmd: string,
  args: string[],
  options: { cwd?: string; stdin?: Uint8Array } = {},
): Promise<string> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: options.cwd,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin) {
    const w = child.stdin.getWriter();
    await w.write(options.stdin);
    await w.close();
  }
  const out = await child.output();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (${out.code}): ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

/** Runs a shell script (`bash -euo pipefail -c`). */
export function bash(script: string, cwd?: string): Promise<string> {
  return sh("bash", ["-euo", "pipefail", "-c", script], { cwd });
}

/** Options of {@link describeTree}. */
export interface DescribeOptions {
  /** Include modification times (nanoseconds) of non-directories (default true). */
  mtimes?: boolean;
  /** Include modification times of directories (default true). */
  dirMtimes?: boolean;
  /** Include the root directory's own attributes (default false). */
  root?: boolean;
}

/**
 * One line per entry of the tree at `dir`, sorted: path, type, mode, owner, size (files),
 * mtime, symlink target, device numbers, content hash, hard-link group, and xattrs (hex), all
 * as `find -printf`, `stat`, `sha256sum` and `getfattr` report them.
 */
export async function describeTree(dir: string, options: DescribeOptions = {}): Promise<string[]> {
  const mtimes = options.mtimes ?? true;
  const dirMtimes = options.dirMtimes ?? true;
  const listing = await sh("find", [
    dir,
    ...(options.root ? [] : ["-mindepth", "1"]),
    "-printf",
    "%P\\0%y\\0%m\\0%U\\0%G\\0%s\\0%T@\\0%l\\0%i\\0%n\\n",
  ]);
  const devices = new Map<string, string>();
  const devOut = await bash(
    `cd ${JSON.stringify(dir)} && find . \\( -type c -o -type b \\) -exec stat -c '%n %t:%T' {} +`,
  );
  for (const line of devOut.split("\n").filter(Boolean)) {
    const [name, dev] = line.split(" ");
    devices.set(name.replace(/^\.\//, ""), dev);
  }
  const hashes = new Map<string, string>();
  const hashOut = await bash(
    `cd ${JSON.stringify(dir)} && find . -type f -print0 | xargs -0 -r sha256sum`,
  );
  for (const line of hashOut.split("\n").filter(Boolean)) {
    hashes.set(line.slice(66).replace(/^\.\//, ""), line.slice(0, 12));
  }
  const xattrs = new Map<string, string[]>();
  const xOut = await bash(
    `cd ${JSON.stringify(dir)} && getfattr -R -P -h -d -m - -e hex . 2>/dev/null || true`,
  );
  let current = "";
  for (const line of xOut.split("\n")) {
    if (line.startsWith("# file: ")) {
      current = line.slice(8).replace(/^\.\/?/, "");
    } else if (line.includes("=")) {
      const list = xattrs.get(current) ?? [];
      list.push(line);
      xattrs.set(current, list);
    }
  }
  const inodes = new Map<string, string[]>();
  const rows = listing.split("\n").filter(Boolean).map((l) => l.split("\0"));
  for (const r of rows) {
    if (r[1] !== "d" && Number(r[9]) > 1) {
      const list = inodes.get(r[8]) ?? [];
      list.push(r[0]);
      inodes.set(r[8], list);
    }
  }
  const out: string[] = [];
  for (const [path, type, mode, uid, gid, size, mtime, link, ino] of rows) {
    const fields = [path, type, mode, `${uid}:${gid}`];
    if (type === "f") fields.push(`size=${size}`, `sha=${hashes.get(path)}`);
    if ((type === "d" && dirMtimes) || (type !== "d" && mtimes)) fields.push(`mtime=${mtime}`);
    if (type === "l") fields.push(`-> ${link}`);
    if (type === "c" || type === "b") fields.push(`dev=${devices.get(path)}`);
    const group = inodes.get(ino);
    if (group && group.length > 1) fields.push(`links=${[...group].sort().join(",")}`);
    const x = xattrs.get(path);
    if (x) fields.push(`xattrs=${x.sort().join(";")}`);
    out.push(fields.join(" "));
  }
  return out.sort();
}

/** The bytes of a whole stream. */
export async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let n = 0;
  for await (const c of stream) {
    chunks.push(c);
    n += c.length;
  }
  const out = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** A stream over `bytes`, in chunks of `chunk` bytes. */
export function streamOf(bytes: Uint8Array, chunk = 64 * 1024): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (at >= bytes.length) {
        controller.close();
        return;
      }
      controller.enqueue(bytes.slice(at, at + chunk));
      at += chunk;
    },
  });
}

/** A `WritableStream` collecting everything written to it. */
export function collector(): { stream: WritableStream<Uint8Array>; bytes: () => Uint8Array } {
  const chunks: Uint8Array[] = [];
  return {
    stream: new WritableStream<Uint8Array>({
      write(c) {
        chunks.push(c.slice());
      },
    }),
    bytes: () => {
      const n = chunks.reduce((a, c) => a + c.length, 0);
      const out = new Uint8Array(n);
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.length;
      }
      return out;
    },
  };
}

/** The `sha256:` digest of bytes, computed by `sha256sum`. */
export async function sha256sum(bytes: Uint8Array): Promise<string> {
  const out = await sh("sha256sum", [], { stdin: bytes });
  return `sha256:${out.slice(0, 64)}`;
}

/**
 * Fills `dir` with every kind of entry a layer can hold: directories (setgid, sticky), regular
 * files (empty, setuid, big), hard links, relative and absolute symlinks (with their own
 * mtime), char and block devices, a FIFO, a huge uid/gid, binary xattrs (NUL and 0xff bytes),
 * sub-second mtimes, and names with spaces and non-ASCII characters.
 */
export async function makeRichTree(dir: string): Promise<void> {
  await bash(`
    cd ${JSON.stringify(dir)}
    mkdir -p d/sub sticky 'sp ace/ünï' deep/a/b/c
    printf 'hello\\n' > d/file
    : > d/empty
    head -c 300000 /dev/urandom > d/big
    printf 'x' > 'sp ace/ünï/fïle'
    printf 'deep' > deep/a/b/c/leaf
    chmod 4755 d/file
    chmod 2755 d/sub
    chmod 1777 sticky
    chmod 0640 d/empty
    ln d/file d/hard
    ln d/file sticky/hard2
    ln -s ../d/file d/sym
    ln -s /nonexistent/target abs-sym
    mknod chr c 1 3
    mknod blk b 7 0
    mkfifo fifo
    chmod 0600 fifo
    touch big-uid
    chown 4000000000:4000000001 big-uid
    chown 1000:1000 d/sub
    setfattr -n user.bin -v 0x00ff00ff41 d/file
    setfattr -n user.text -v hello d/sub
    setfattr -n user.empty d/empty
    touch -d '2021-02-03 04:05:06.123456789' d/file
    touch -d '2019-05-06 07:08:09' d/big d/empty 'sp ace/ünï/fïle' deep/a/b/c/leaf big-uid
    touch -h -d '2020-01-01 00:00:00.5' d/sym abs-sym
    touch -d '2018-01-01 00:00:00.25' chr blk fifo
    touch -d '2017-03-04 05:06:07.75' d/sub sticky 'sp ace/ünï' 'sp ace' deep/a/b/c deep/a/b deep/a deep d
  `);
}
