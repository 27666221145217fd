import assert from "node:assert/strict";
import { TainerdError } from "../../plugins/errdefs.ts";
import { BLOCK_SIZE, formatOctal, formatPaxRecord, TarType, writeChecksum } from "./header.ts";
import { readTar } from "./reader.ts";
import {
  chunked,
  collect,
  hasProgram,
  readAll,
  type ReadEntry,
  run,
  runText,
  userXattrsWork,
} from "./test_helpers.ts";
import { TarWriter, writeTar } from "./writer.ts";

const enc = new TextEncoder();
const isRoot = Deno.uid() === 0;

function kindOf(err: unknown): string | undefined {
  return err instanceof TainerdError ? err.kind : undefined;
}

/** Bytes like a `security.capability` value, with NUL, 0xff, '\n' and '='. */
const BIN_XATTR = Uint8Array.from([
  0x01,
  0x00,
  0x00,
  0x02,
  0x00,
  0x04,
  0x00,
  0x00,
  0x00,
  0x00,
  0x00,
  0x00,
  0xff,
  0x0a,
  0x3d,
  0x00,
  0x00,
  0x00,
  0x00,
  0xff,
]);

const LONG_DIR = `${"a".repeat(90)}/${"b".repeat(90)}`;
const LONG_FILE = `${LONG_DIR}/${"c".repeat(100)}`; // 282 bytes
const MID_FILE = `${"p".repeat(60)}/${"q".repeat(80)}`; // 141 bytes, splits into ustar prefix
const LONG_TARGET = "t".repeat(150);
const UNICODE_FILE = "héllo-ü.txt";

interface Fixture {
  dir: string;
  xattrs: boolean;
}

/** Builds a tree with every kind of entry; returns whether xattrs could be set. */
async function makeTree(dir: string, opts: { big?: boolean; long?: boolean } = {}) {
  const big = opts.big ?? true;
  const long = opts.long ?? true;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/file.txt`, "hello\n");
  const xattrs = await userXattrsWork(dir);
  if (xattrs) {
    await run("setfattr", ["-n", "user.bin", "-v", `0x${hexOf(BIN_XATTR)}`, `${dir}/file.txt`]);
    await run("setfattr", ["-n", "user.text", "-v", "plain", `${dir}/file.txt`]);
    await run("setfattr", ["-n", "user.empty", `${dir}/file.txt`]);
  }
  await run("touch", ["-h", "-d", "@1700000000.123456789", `${dir}/file.txt`]);
  await Deno.writeTextFile(`${dir}/setuid`, "#!/bin/sh\n");
  await Deno.chmod(`${dir}/setuid`, 0o4755);
  await Deno.writeTextFile(`${dir}/setgid`, "");
  await Deno.chmod(`${dir}/setgid`, 0o2711);
  await Deno.mkdir(`${dir}/sticky`);
  await Deno.chmod(`${dir}/sticky`, 0o1777);
  await Deno.symlink("file.txt", `${dir}/link`);
  await Deno.writeTextFile(`${dir}/orig`, "linked data");
  await Deno.link(`${dir}/orig`, `${dir}/hard`);
  await run("mkfifo", [`${dir}/fifo`]);
  if (isRoot) await run("mknod", [`${dir}/chardev`, "c", "1", "7"]);
  await Deno.writeTextFile(`${dir}/${UNICODE_FILE}`, "ü");
  await Deno.mkdir(`${dir}/${MID_FILE.split("/")[0]}`);
  await Deno.writeTextFile(`${dir}/${MID_FILE}`, "mid");
  if (long) {
    await Deno.mkdir(`${dir}/${LONG_DIR}`, { recursive: true });
    await Deno.writeTextFile(`${dir}/${LONG_FILE}`, "long name");
    await Deno.symlink(LONG_TARGET, `${dir}/longlink`);
  }
  if (big && isRoot) {
    await Deno.writeTextFile(`${dir}/bigid`, "big");
    await Deno.chown(`${dir}/bigid`, 3_000_000, 3_000_001);
  }
  return { dir, xattrs };
}

function hexOf(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** Nanosecond mtimes of every path under `dir`, from GNU find. */
async function mtimes(dir: string): Promise<Map<string, [number, number]>> {
  const out = await runText("find", [".", "-printf", "%p\\t%T@\\n"], dir);
  const map = new Map<string, [number, number]>();
  for (const line of out.split("\n").filter(Boolean)) {
    const [p, t] = line.split("\t");
    const [s, f = ""] = t.split(".");
    map.set(p, [Number(s), Number(f.padEnd(9, "0").slice(0, 9))]);
  }
  return map;
}

function expectedType(info: Deno.FileInfo): string {
  if (info.isSymlink) return TarType.Symlink;
  if (info.isDirectory) return TarType.Dir;
  if (info.isFifo) return TarType.Fifo;
  if (info.isCharDevice) return TarType.Char;
  if (info.isBlockDevice) return TarType.Block;
  return TarType.Regular;
}

/**
 * Checks every entry against the file it came from: type, mode, ids, names, size, body,
 * mtime (to the nanosecond when `nsec`), link target, device numbers.
 */
async function checkAgainstTree(
  entries: ReadEntry[],
  fx: Fixture,
  opts: { nsec: boolean; names: boolean; xattrs: boolean },
) {
  const times = await mtimes(fx.dir);
  const seen = new Set<string>();
  for (const { header: h, data } of entries) {
    const rel = h.name.replace(/\/$/, "");
    seen.add(rel);
    const path = `${fx.dir}/${rel}`;
    const info = await Deno.lstat(path);
    const what = `${h.name} (${h.type})`;
    if (h.type === TarType.Hardlink) {
      const target = await Deno.lstat(`${fx.dir}/${h.linkname}`);
      assert.equal(target.ino, info.ino, `${what}: hard link target`);
      assert.equal(data.length, 0);
    } else {
      assert.equal(h.type, expectedType(info), what);
    }
    assert.equal(h.mode, info.mode! & 0o7777, `${what}: mode`);
    assert.equal(h.uid, info.uid, `${what}: uid`);
    assert.equal(h.gid, info.gid, `${what}: gid`);
    if (opts.names) {
      assert.equal(h.uname, info.uid === 0 ? "root" : "", `${what}: uname`);
      assert.equal(h.gname, info.gid === 0 ? "root" : "", `${what}: gname`);
    }
    const [sec, nsec] = times.get(rel === "." ? "." : `./${rel.replace(/^\.\//, "")}`)!;
    assert.equal(h.mtime.sec, sec, `${what}: mtime`);
    assert.equal(h.mtime.nsec, opts.nsec ? nsec : 0, `${what}: mtime nsec`);
    if (h.type === TarType.Regular) {
      assert.equal(h.size, info.size, `${what}: size`);
      assert.deepEqual(data, await Deno.readFile(path), `${what}: body`);
    } else {
      assert.equal(data.length, 0, `${what}: body of a header-only entry`);
    }
    if (h.type === TarType.Symlink) assert.equal(h.linkname, await Deno.readLink(path));
    if (h.type === TarType.Char) {
      assert.deepEqual([h.devmajor, h.devminor], [1, 7], `${what}: device`);
    }
    if (opts.xattrs && fx.xattrs && rel === "./file.txt") {
      assert.deepEqual(h.xattrs.get("user.bin"), BIN_XATTR);
      assert.deepEqual(h.xattrs.get("user.text"), enc.encode("plain"));
      assert.deepEqual(h.xattrs.get("user.empty"), new Uint8Array(0));
    }
  }
  return seen;
}

async function tarOf(dir: string, args: string[], paths = ["."]): Promise<Uint8Array> {
  return (await run("tar", [...args, "-cf", "-", "-C", dir, ...paths])).stdout;
}

async function withTemp(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-tar-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const ODD_CHUNKS = [1, 511, 7, 1000, 513, 4096, 3];

Deno.test("readTar() reads GNU tar's PAX archives: xattrs, long names, devices, big ids", async () => {
  await withTemp(async (tmp) => {
    const fx = await makeTree(`${tmp}/src`);
    const archive = await tarOf(fx.dir, ["--xattrs", "--xattrs-include=*", "--format=pax"]);
    const entries = await readAll(archive);
    const seen = await checkAgainstTree(entries, fx, { nsec: true, names: true, xattrs: true });
    for (
      const p of [
        "./file.txt",
        `./${LONG_FILE}`,
        `./${MID_FILE}`,
        `./${UNICODE_FILE}`,
        "./longlink",
        "./fifo",
        "./sticky",
        "./hard",
        ...(isRoot ? ["./chardev", "./bigid"] : []),
      ]
    ) {
      assert.ok(seen.has(p), `missing ${p}`);
    }
    const byName = new Map(entries.map((e) => [e.header.name, e.header]));
    assert.equal(byName.get("./longlink")?.linkname, LONG_TARGET);
    assert.equal(byName.get("./setuid")?.mode, 0o4755);
    assert.equal(byName.get("./sticky/")?.mode, 0o1777);
    if (isRoot) {
      assert.equal(byName.get("./bigid")?.uid, 3_000_000);
      assert.equal(byName.get("./bigid")?.gid, 3_000_001);
    }
    // GNU tar records atime and ctime in PAX with sub-second precision.
    assert.ok(byName.get("./file.txt")?.atime);
    assert.ok(byName.get("./file.txt")?.ctime);
    if (fx.xattrs) assert.ok(byName.get("./file.txt")?.xattrs.has("user.bin"));

    // The same archive cut into odd chunks reads the same.
    const again = await readAll(archive, ODD_CHUNKS);
    assert.deepEqual(again, entries);
  });
});

Deno.test("readTar() reads GNU format: 'L' and 'K' long names, base-256 ids", async () => {
  await withTemp(async (tmp) => {
    const fx = await makeTree(`${tmp}/src`);
    const archive = await tarOf(fx.dir, ["--format=gnu"]);
    // The archive really uses GNU extensions.
    const types = new Set<number>();
    for (let off = 0; off < archive.length; off += BLOCK_SIZE) types.add(archive[off + 156]);
    assert.ok(types.has("L".charCodeAt(0)) && types.has("K".charCodeAt(0)));
    const entries = await readAll(archive, ODD_CHUNKS);
    await checkAgainstTree(entries, fx, { nsec: false, names: true, xattrs: false });
    const byName = new Map(entries.map((e) => [e.header.name, e.header]));
    assert.ok(byName.has(`./${LONG_FILE}`));
    assert.equal(byName.get("./longlink")?.linkname, LONG_TARGET);
    if (isRoot) assert.equal(byName.get("./bigid")?.uid, 3_000_000);
  });
});

Deno.test("readTar() reads ustar archives that use the prefix field", async () => {
  await withTemp(async (tmp) => {
    const fx = await makeTree(`${tmp}/src`, { big: false, long: false });
    const archive = await tarOf(fx.dir, ["--format=ustar"]);
    const entries = await readAll(archive);
    await checkAgainstTree(entries, fx, { nsec: false, names: true, xattrs: false });
    const mid = entries.find((e) => e.header.name === `./${MID_FILE}`);
    assert.ok(mid, "prefix + name joined");
    assert.equal(new TextDecoder().decode(mid.data), "mid");
  });
});

Deno.test("readTar() reads old v7 archives", async () => {
  await withTemp(async (tmp) => {
    const dir = `${tmp}/src`;
    await Deno.mkdir(`${dir}/d`, { recursive: true });
    await Deno.writeTextFile(`${dir}/d/f`, "v7 data");
    await Deno.symlink("d/f", `${dir}/s`);
    await Deno.link(`${dir}/d/f`, `${dir}/h`);
    const archive = await tarOf(dir, ["--format=v7"]);
    const entries = await readAll(archive);
    await checkAgainstTree(entries, { dir, xattrs: false }, {
      nsec: false,
      names: false,
      xattrs: false,
    });
    assert.equal(entries.find((e) => e.header.name === "./d/")?.header.type, TarType.Dir);
    assert.ok(entries.every((e) => e.header.uname === ""));
  });
});

Deno.test("readTar() applies PAX global headers to every later entry", async () => {
  await withTemp(async (tmp) => {
    const dir = `${tmp}/src`;
    await Deno.mkdir(`${dir}/d`, { recursive: true });
    await Deno.writeTextFile(`${dir}/d/f`, "x");
    const archive = await tarOf(dir, ["--format=pax", "--pax-option=uname=globaluser"]);
    assert.equal(archive[156], "g".charCodeAt(0));
    const entries = await readAll(archive);
    assert.equal(entries.length, 3);
    assert.ok(entries.every((e) => e.header.uname === "globaluser"));
  });

  // Hand-made: 'g' sets, a per-entry 'x' overrides, a later 'g' with an empty value deletes.
  const block = (name: string, type: string, size: number) => {
    const b = new Uint8Array(BLOCK_SIZE);
    b.set(enc.encode(name));
    formatOctal(b.subarray(100, 108), 0o644);
    formatOctal(b.subarray(108, 116), 0);
    formatOctal(b.subarray(116, 124), 0);
    formatOctal(b.subarray(124, 136), size);
    formatOctal(b.subarray(136, 148), 0);
    b[156] = type.charCodeAt(0);
    b.set(enc.encode("ustar\x0000"), 257);
    b.set(enc.encode("ustaruser"), 265);
    writeChecksum(b);
    return b;
  };
  const paxEntry = (type: string, records: [string, string][]) => {
    const data = new Uint8Array(
      records.flatMap(([k, v]) => [...formatPaxRecord(k, enc.encode(v))]),
    );
    const padded = new Uint8Array(Math.ceil(data.length / BLOCK_SIZE) * BLOCK_SIZE);
    padded.set(data);
    return [block("pax", type, data.length), padded];
  };
  const parts = [
    ...paxEntry("g", [["uname", "g1"], ["comment", "global"]]),
    block("a", "0", 0),
    ...paxEntry("x", [["uname", "x1"]]),
    block("b", "0", 0),
    ...paxEntry("g", [["uname", ""]]),
    block("c", "0", 0),
    new Uint8Array(1024),
  ];
  const archive = new Uint8Array(parts.flatMap((p) => [...p]));
  const entries = await readAll(archive);
  assert.deepEqual(entries.map((e) => [e.header.name, e.header.uname]), [
    ["a", "g1"],
    ["b", "x1"],
    ["c", "ustaruser"],
  ]);
  assert.equal(entries[2].header.pax.get("comment"), "global");
});

Deno.test({
  name: "readTar() reads bsdtar's PAX archives with binary xattrs",
  ignore: !hasProgram("bsdtar"),
  fn: async () => {
    await withTemp(async (tmp) => {
      const fx = await makeTree(`${tmp}/src`, { long: true });
      const archive =
        (await run("bsdtar", ["--format=pax", "--xattrs", "-cf", "-", "-C", fx.dir, "."]))
          .stdout;
      const entries = await readAll(archive, ODD_CHUNKS);
      await checkAgainstTree(entries, fx, { nsec: true, names: true, xattrs: true });
    });
  },
});

// ---------------------------------------------------------------------------------------------
// Malformed archives

async function archiveOf(entries: { name: string; data: Uint8Array }[]): Promise<Uint8Array> {
  return await collect(
    writeTar(entries.map(({ name, data }) => ({ header: { name }, body: data }))),
  );
}

async function readError(archive: Uint8Array, sizes?: number[]): Promise<Error> {
  try {
    await readAll(archive, sizes);
  } catch (err) {
    return err as Error;
  }
  throw new Error("Expected the archive to be rejected");
}

Deno.test("readTar() rejects a bad checksum with InvalidArgument and its offset", async () => {
  const archive = await archiveOf([
    { name: "a", data: new Uint8Array(600) },
    { name: "b", data: enc.encode("b") },
  ]);
  archive[1536 + 3] ^= 1;
  const err = await readError(archive);
  assert.equal(kindOf(err), "InvalidArgument");
  assert.equal(err.message, "Invalid tar header at offset 1536: bad checksum");
});

Deno.test("readTar() rejects a truncated body instead of returning a short file", async () => {
  const archive = await archiveOf([{ name: "a", data: new Uint8Array(5000).fill(7) }]);
  for (const cut of [512 + 100, 512 + 4999, 512 + 4096]) {
    const err = await readError(archive.subarray(0, cut), [333]);
    assert.equal(kindOf(err), "InvalidArgument");
    assert.match(err.message, /unexpected end of data in the body of "a"/);
  }
  // Truncated padding after the body.
  const err = await readError(archive.subarray(0, 512 + 5000 + 10));
  assert.match(err.message, /unexpected end of data in the padding of "a"/);
  // The archive ends right after a body: like Go, that is a (sloppy) end, not an error.
  assert.equal((await readAll(archive.subarray(0, 512 + 5000))).length, 1);
});

Deno.test("readTar() rejects a truncated header", async () => {
  const archive = await archiveOf([
    { name: "a", data: enc.encode("x") },
    { name: "b", data: enc.encode("y") },
  ]);
  const err = await readError(archive.subarray(0, 1024 + 100));
  assert.equal(kindOf(err), "InvalidArgument");
  assert.match(err.message, /unexpected end of data in the tar header at offset 1024/);
});

Deno.test("readTar() rejects a PAX record with a wrong length", async () => {
  const archive = await collect(
    writeTar([{ header: { name: "x".repeat(150) }, body: enc.encode("1") }]),
  );
  assert.equal(archive[156], "x".charCodeAt(0));
  const text = new TextDecoder().decode(archive.subarray(512, 1024));
  const at = text.indexOf(" path=");
  archive[512 + at - 1] += 1; // "160 path=..." → "161 path=..." (same block, same checksum)
  const err = await readError(archive);
  assert.equal(kindOf(err), "InvalidArgument");
  assert.match(err.message, /^Invalid tar header at offset 0: bad PAX record at byte 0/);
});

Deno.test("readTar() rejects garbage after a zero block and oversized extended headers", async () => {
  const archive = await archiveOf([{ name: "a", data: enc.encode("x") }]);
  const garbage = new Uint8Array([...archive.subarray(0, 1024), ...new Uint8Array(512), 1]);
  const padded = new Uint8Array(Math.ceil(garbage.length / 512) * 512);
  padded.set(garbage);
  assert.match((await readError(padded)).message, /a zero block is followed by data/);

  const big = new Uint8Array(2048);
  big.set(enc.encode("huge"));
  formatOctal(big.subarray(124, 136), 2 << 20);
  big[156] = "x".charCodeAt(0);
  writeChecksum(big.subarray(0, 512));
  assert.match((await readError(big)).message, /extended header of 2097152 bytes/);
});

Deno.test("readTar() refuses GNU sparse files with NotImplemented", async () => {
  const archive = await archiveOf([{ name: "a", data: new Uint8Array(0) }]);
  archive[156] = "S".charCodeAt(0);
  writeChecksum(archive.subarray(0, 512));
  assert.equal(kindOf(await readError(archive)), "NotImplemented");
});

// ---------------------------------------------------------------------------------------------
// Streaming behaviour

/** A source that counts the bytes it handed out, serving `bytes` in `chunk`-sized pieces. */
function countingSource(bytes: Uint8Array, chunk: number) {
  const stats = { pulled: 0, canceled: false };
  let pos = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (pos >= bytes.length) return controller.close();
      const piece = bytes.subarray(pos, pos + chunk);
      pos += piece.length;
      stats.pulled += piece.length;
      controller.enqueue(piece);
    },
    cancel() {
      stats.canceled = true;
    },
  }, { highWaterMark: 0 });
  return { stream, stats };
}

Deno.test("readTar() pulls the source only as far as the consumer reads", async () => {
  const size = 4 << 20;
  const archive = await archiveOf([
    { name: "big", data: new Uint8Array(size).fill(1) },
    { name: "small", data: enc.encode("s") },
  ]);
  const chunk = 64 * 1024;
  const { stream, stats } = countingSource(archive, chunk);
  const reader = readTar(stream);
  const first = await reader.nextEntry();
  assert.equal(first?.header.name, "big");
  assert.ok(stats.pulled <= chunk, `pulled ${stats.pulled} for a header`);
  const body = first!.body.getReader();
  let got = 0;
  for (let i = 0; i < 3; i++) got += (await body.read()).value!.length;
  assert.ok(stats.pulled <= got + chunk, `pulled ${stats.pulled} after reading ${got}`);
  // Chunks are views of the source's chunks, not copies.
  const { value } = await body.read();
  assert.equal(value!.buffer, archive.buffer);
  body.releaseLock();

  // Moving on skips the rest of the body; the old body then errors.
  const second = await reader.nextEntry();
  assert.equal(second?.header.name, "small");
  await assert.rejects(first!.body.getReader().read(), (err) => {
    assert.equal(kindOf(err), "FailedPrecondition");
    return true;
  });
  assert.equal(new TextDecoder().decode(await collect(second!.body)), "s");
  assert.equal(await reader.nextEntry(), null);
  assert.equal(stats.pulled, archive.length, "trailer drained");
});

Deno.test("readTar() skips unread and canceled bodies", async () => {
  const archive = await archiveOf([
    { name: "a", data: new Uint8Array(3000).fill(1) },
    { name: "b", data: new Uint8Array(70000).fill(2) },
    { name: "c", data: enc.encode("c") },
  ]);
  const names: string[] = [];
  for await (const { header, body } of readTar(chunked(archive, [4096]))) {
    names.push(header.name);
    if (header.name === "b") await body.cancel();
    if (header.name === "c") assert.equal(new TextDecoder().decode(await collect(body)), "c");
  }
  assert.deepEqual(names, ["a", "b", "c"]);
});

Deno.test("readTar() cancels the source when the consumer stops early, unless told not to", async () => {
  const archive = await archiveOf([
    { name: "a", data: enc.encode("a") },
    { name: "b", data: enc.encode("b") },
  ]);
  const one = countingSource(archive, 512);
  for await (const _ of readTar(one.stream)) break;
  assert.ok(one.stats.canceled);

  const two = countingSource(archive, 512);
  for await (const _ of readTar(two.stream, { preventCancel: true })) break;
  assert.ok(!two.stats.canceled);
  assert.ok(!two.stream.locked);
  // The caller keeps the rest of the stream.
  const rest = await two.stream.getReader().read();
  assert.ok(!rest.done && rest.value.length > 0);
});

Deno.test("readTar() propagates a source error to the body and the iterator", async () => {
  let sent = false;
  const boom = new Error("network down");
  const source = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent) return controller.error(boom);
      sent = true;
      const w = new Uint8Array(BLOCK_SIZE * 2);
      w.set(enc.encode("f"));
      formatOctal(w.subarray(100, 108), 0o644);
      formatOctal(w.subarray(124, 136), 4096);
      w[156] = 0x30;
      writeChecksum(w.subarray(0, 512));
      controller.enqueue(w);
    },
  }, { highWaterMark: 0 });
  const reader = readTar(source);
  const entry = await reader.nextEntry();
  await assert.rejects(collect(entry!.body), /network down/);
  await assert.rejects(reader.nextEntry(), /network down/);
});

Deno.test("readTar() reads what TarWriter writes, across odd chunk boundaries", async () => {
  const w = new TarWriter();
  const done = (async () => {
    await w.writeEntry({ name: "d/", type: TarType.Dir });
    await w.writeEntry({ name: "d/f", mode: 0o600 }, enc.encode("data"));
    await w.close();
  })();
  const archive = await collect(w.readable);
  await done;
  for (const sizes of [[1], [2], [511], [513], [1023], [100000]]) {
    const entries = await readAll(archive, sizes);
    assert.deepEqual(entries.map((e) => [e.header.name, e.header.mode, e.data.length]), [
      ["d/", 0o755, 0],
      ["d/f", 0o600, 4],
    ]);
  }
});
