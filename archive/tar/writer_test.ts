import assert from "node:assert/strict";
import { TainerdError } from "../../plugins/errdefs.ts";
import { BLOCK_SIZE, type TarHeader, type TarHeaderInit, TarType } from "./header.ts";
import { readTar } from "./reader.ts";
import {
  collect,
  getXattr,
  hasProgram,
  mtimeNs,
  readAll,
  run,
  userXattrsWork,
} from "./test_helpers.ts";
import { TarWriter, writeTar } from "./writer.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const isRoot = Deno.uid() === 0;

function kindOf(err: unknown): string | undefined {
  return err instanceof TainerdError ? err.kind : undefined;
}

const BIN_XATTR = Uint8Array.from([0x01, 0x00, 0x00, 0x02, 0xff, 0x00, 0x0a, 0x3d, 0xfe, 0x00]);
const LONG_DIR = `${"a".repeat(90)}/${"b".repeat(90)}`;
const LONG_FILE = `${LONG_DIR}/${"c".repeat(100)}`;
const SINGLE_150 = "s".repeat(150);
const MID_FILE = `${"p".repeat(60)}/${"q".repeat(80)}`;

/** Type flags of the header blocks of an archive, in order, with their names. */
function headerBlocks(archive: Uint8Array): string[] {
  const out: string[] = [];
  let off = 0;
  while (off + BLOCK_SIZE <= archive.length) {
    const b = archive.subarray(off, off + BLOCK_SIZE);
    if (b.every((x) => x === 0)) break;
    const type = String.fromCharCode(b[156]);
    const size = parseInt(dec.decode(b.subarray(124, 135)), 8);
    out.push(type);
    off += BLOCK_SIZE + Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE;
  }
  return out;
}

async function write(
  entries: { header: TarHeaderInit; body?: Uint8Array }[],
  options?: { subsecondTimes?: boolean },
) {
  return await collect(writeTar(entries, options));
}

function full(init: TarHeaderInit): TarHeader {
  return {
    type: "0",
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: 0,
    mtime: { sec: 0, nsec: 0 },
    linkname: "",
    uname: "",
    gname: "",
    devmajor: 0,
    devminor: 0,
    xattrs: new Map(),
    pax: new Map(),
    ...init,
  };
}

Deno.test("TarWriter writes plain ustar when every field fits", async () => {
  const archive = await write([
    {
      header: { name: "a.txt", uid: 1000, gid: 1000, uname: "u", gname: "g" },
      body: enc.encode("hi"),
    },
    { header: { name: MID_FILE }, body: enc.encode("mid") },
    { header: { name: "dir/", type: TarType.Dir } },
  ]);
  assert.deepEqual(headerBlocks(archive), ["0", "0", "5"]);
  assert.equal(archive.length, 512 * 3 + 512 * 2 + 1024);
  assert.equal(dec.decode(archive.subarray(257, 265)), "ustar\x0000");
  // The 141-byte name went into prefix + name.
  assert.equal(dec.decode(archive.subarray(1024 + 345, 1024 + 345 + 60)), "p".repeat(60));
  const entries = await readAll(archive);
  assert.deepEqual(entries.map((e) => e.header.name), ["a.txt", MID_FILE, "dir/"]);
});

Deno.test("TarWriter adds a PAX header exactly when a field needs one", async () => {
  const cases: [TarHeaderInit, string][] = [
    [{ name: SINGLE_150 }, "path"],
    [{ name: LONG_FILE }, "path"],
    [{ name: "héllo" }, "path"],
    [{ name: "l", type: TarType.Symlink, linkname: "t".repeat(101) }, "linkpath"],
    [{ name: "u", uid: 3_000_000 }, "uid"],
    [{ name: "g", gid: 2_097_152 }, "gid"],
    [{ name: "n", uname: "ü" }, "uname"],
    [{ name: "n", gname: "g".repeat(33) }, "gname"],
    [{ name: "x", xattrs: new Map([["user.bin", BIN_XATTR]]) }, "SCHILY.xattr.user.bin"],
    [{ name: "m", mtime: { sec: -1, nsec: 0 } }, "mtime"],
    [{ name: "m", mtime: { sec: 8 ** 11, nsec: 0 } }, "mtime"],
    [{ name: "t", atime: { sec: 5, nsec: 0 } }, "atime"],
    [{ name: "p", pax: new Map([["LIBARCHIVE.creationtime", "7"]]) }, "LIBARCHIVE.creationtime"],
  ];
  for (const [header, key] of cases) {
    const archive = await write([{ header }]);
    assert.deepEqual(headerBlocks(archive), ["x", header.type ?? "0"], key);
    assert.ok(dec.decode(archive.subarray(512, 1024)).includes(` ${key}=`), key);
    const [entry] = await readAll(archive);
    const want = full({ ...header, size: 0 });
    if (isHeaderOnlyTypeFlag(want.type)) want.mode = header.mode ?? 0o777;
    assert.deepEqual(entry.header, want, key);
  }
  // A sub-second mtime is dropped unless asked for.
  const t = { sec: 1_700_000_000, nsec: 123_456_789 };
  const plain = await write([{ header: { name: "f", mtime: t } }]);
  assert.deepEqual(headerBlocks(plain), ["0"]);
  assert.deepEqual((await readAll(plain))[0].header.mtime, { sec: t.sec, nsec: 0 });
  const precise = await write([{ header: { name: "f", mtime: t } }], { subsecondTimes: true });
  assert.deepEqual(headerBlocks(precise), ["x", "0"]);
  assert.deepEqual((await readAll(precise))[0].header.mtime, t);
});

function isHeaderOnlyTypeFlag(t: string): boolean {
  return t >= "1" && t <= "6";
}

Deno.test("TarWriter and readTar() round-trip every field", async () => {
  const headers: TarHeaderInit[] = [
    { name: "dir/", type: TarType.Dir, mode: 0o1777, uid: 1, gid: 2, uname: "a", gname: "b" },
    {
      name: "dir/file",
      mode: 0o4755,
      uid: 3_000_000,
      gid: 3_000_001,
      mtime: { sec: 1_700_000_000, nsec: 5 },
      atime: { sec: 1_700_000_001, nsec: 999_999_999 },
      ctime: { sec: 1_700_000_002, nsec: 1 },
      xattrs: new Map([["user.bin", BIN_XATTR], ["user.empty", new Uint8Array(0)], [
        "security.capability",
        Uint8Array.from([1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
      ]]),
      pax: new Map([["comment", "héllo\nworld"]]),
    },
    { name: "dir/hard", type: TarType.Hardlink, linkname: "dir/file" },
    { name: "dir/sym", type: TarType.Symlink, linkname: "../" + "z".repeat(200) },
    { name: "dev/null", type: TarType.Char, mode: 0o666, devmajor: 1, devminor: 3 },
    { name: "dev/loop0", type: TarType.Block, mode: 0o660, devmajor: 7, devminor: 1048575 },
    { name: "fifo", type: TarType.Fifo, mode: 0o2644 },
    { name: `${LONG_FILE}`, mtime: { sec: -100, nsec: 500 } },
    { name: "日本語/ファイル.txt", uname: "ユーザー" },
  ];
  const bodies = new Map([["dir/file", enc.encode("file body")], [LONG_FILE, new Uint8Array(513)]]);
  const archive = await write(
    headers.map((h) => ({ header: h, body: bodies.get(h.name) })),
    { subsecondTimes: true },
  );
  const entries = await readAll(archive, [777]);
  assert.equal(entries.length, headers.length);
  for (const [i, { header, data }] of entries.entries()) {
    const want = full({ ...headers[i], size: bodies.get(headers[i].name)?.length ?? 0 });
    if (headers[i].mode === undefined) {
      want.mode = want.type === TarType.Dir ? 0o755 : want.type === TarType.Symlink ? 0o777 : 0o644;
    }
    assert.deepEqual(header, want, headers[i].name);
    assert.deepEqual(data, bodies.get(headers[i].name) ?? new Uint8Array(0));
  }
});

Deno.test("TarWriter writes a 9 GiB size into PAX (header only)", async () => {
  const size = 9 * 2 ** 30;
  const w = new TarWriter();
  const body = new ReadableStream<Uint8Array>({ pull: (c) => c.enqueue(new Uint8Array(65536)) });
  const writing = w.writeEntry({ name: "huge", size }, body);
  const reader = readTar(w.readable);
  const entry = await reader.nextEntry();
  assert.equal(entry?.header.size, size);
  w.abort(new Error("enough"));
  await assert.rejects(writing);
  await reader.cancel();
});

Deno.test("TarWriter rejects invalid headers and bodies of the wrong size", async () => {
  const w = new TarWriter();
  const reading = collect(w.readable);
  const bad: [TarHeaderInit, Uint8Array | undefined][] = [
    [{ name: "" }, undefined],
    [{ name: "a\0b" }, undefined],
    [{ name: "a", type: "x" }, undefined],
    [{ name: "a", type: "ab" }, undefined],
    [{ name: "a", uid: -1 }, undefined],
    [{ name: "a", size: 1.5 }, undefined],
    [{ name: "a", mtime: { sec: 0, nsec: 1e9 } }, undefined],
    [{ name: "a", devmajor: 8 ** 7 }, undefined],
    [{ name: "a", xattrs: new Map([["a=b", new Uint8Array(0)]]) }, undefined],
    [{ name: "a", pax: new Map([["path", "x"]]) }, undefined],
    [{ name: "a", size: 3 }, enc.encode("ab")],
    [{ name: "a", size: 3 }, undefined],
    [{ name: "l", type: TarType.Symlink, linkname: "t" }, enc.encode("data")],
  ];
  for (const [h, body] of bad) {
    await assert.rejects(w.writeEntry(h, body), (err) => {
      assert.equal(kindOf(err), "InvalidArgument", JSON.stringify(h));
      return true;
    });
  }
  // None of these broke the archive.
  await w.writeEntry({ name: "ok" }, enc.encode("ok"));
  await w.close();
  await assert.rejects(w.writeEntry({ name: "late" }), /the writer is closed/);
  const entries = await readAll(await reading);
  assert.deepEqual(entries.map((e) => e.header.name), ["ok"]);
});

function streamOf(...chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    pull(c) {
      const next = chunks.shift();
      if (next) c.enqueue(next);
      else c.close();
    },
  });
}

Deno.test("TarWriter fails the archive when a stream body's length differs from size", async () => {
  for (
    const [size, chunks, msg] of [
      [10, [new Uint8Array(6), new Uint8Array(6)], /longer than the 10 bytes/],
      [10, [new Uint8Array(6)], /ended after 6 of 10 bytes/],
    ] as const
  ) {
    const w = new TarWriter();
    const reading = collect(w.readable);
    await assert.rejects(w.writeEntry({ name: "f", size }, streamOf(...chunks)), (err) => {
      assert.equal(kindOf(err), "InvalidArgument");
      assert.match((err as Error).message, msg);
      return true;
    });
    await assert.rejects(reading, msg);
    await assert.rejects(w.close(), msg);
  }
  const w = new TarWriter();
  await assert.rejects(
    w.writeEntry({ name: "f" }, streamOf()),
    /a stream body needs header.size/,
  );
});

Deno.test("TarWriter waits for its consumer (backpressure)", async () => {
  const chunk = 256 * 1024;
  let produced = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(c) {
      produced += chunk;
      c.enqueue(new Uint8Array(chunk));
    },
  }, { highWaterMark: 0 });
  const w = new TarWriter({ highWaterMark: 64 * 1024 });
  const writing = w.writeEntry({ name: "big", size: 100 * chunk }, body);
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(produced <= 2 * chunk, `produced ${produced} with nobody reading`);
  const reader = w.readable.getReader();
  let got = 0;
  for (let i = 0; i < 10; i++) got += (await reader.read()).value!.length;
  await new Promise((r) => setTimeout(r, 20));
  assert.ok(produced <= got + 2 * chunk, `produced ${produced} after ${got} were read`);
  await reader.cancel();
  await assert.rejects(writing, (err) => kindOf(err) === "Canceled");
});

// ---------------------------------------------------------------------------------------------
// GNU tar extracts what we write

Deno.test({
  name: "TarWriter output extracts with GNU tar: modes, owners, links, devices, xattrs, times",
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "tainerd-tarw-" });
    try {
      const xattrs = await userXattrsWork(tmp);
      const mtime = { sec: 1_600_000_000, nsec: 987_654_321 };
      const w = new TarWriter({ subsecondTimes: true });
      const entries: [TarHeaderInit, Uint8Array?][] = [
        [{ name: "d/", type: TarType.Dir, mode: 0o755, mtime }],
        [{ name: "d/sticky/", type: TarType.Dir, mode: 0o1777, mtime }],
        [
          {
            name: "d/file",
            mode: 0o4755,
            uid: 3_000_000,
            gid: 3_000_001,
            mtime,
            xattrs: xattrs
              ? new Map([["user.bin", BIN_XATTR], ["user.text", enc.encode("plain")]])
              : undefined,
          },
          enc.encode("#!/bin/sh\necho hi\n"),
        ],
        [{ name: "d/setgid", mode: 0o2711, uid: 1234, gid: 5678, mtime }, new Uint8Array(0)],
        [{ name: "d/hard", type: TarType.Hardlink, linkname: "d/file" }],
        [{ name: "d/sym", type: TarType.Symlink, linkname: "file", mtime }],
        [{ name: "d/longsym", type: TarType.Symlink, linkname: "y".repeat(180) }],
        [{ name: "d/fifo", type: TarType.Fifo, mode: 0o640, mtime }],
        ...(isRoot
          ? [[{ name: "d/null", type: TarType.Char, mode: 0o666, devmajor: 1, devminor: 3 }]] as [
            TarHeaderInit,
          ][]
          : []),
        [{ name: `d/${LONG_DIR}/`, type: TarType.Dir }],
        [{ name: `d/${LONG_FILE}`, mtime }, enc.encode("long")],
        [{ name: `d/${SINGLE_150}`, mtime }, enc.encode("single")],
        [{ name: "d/héllo-ü.txt", mtime }, new Uint8Array(100_000).fill(0xab)],
      ];
      const writing = (async () => {
        for (const [h, b] of entries) await w.writeEntry(h, b);
        await w.close();
      })();
      const out = `${tmp}/out`;
      await Deno.mkdir(out);
      const args = [
        "-x",
        "--xattrs",
        "--xattrs-include=*",
        "--same-owner",
        "--numeric-owner",
        "-p",
        "-f",
        "-",
        "-C",
        out,
      ];
      const { stderr } = await run("tar", args, { stdin: w.readable });
      await writing;
      assert.equal(stderr, "", "GNU tar had nothing to complain about");

      const file = await Deno.lstat(`${out}/d/file`);
      assert.ok(file.isFile);
      assert.equal(file.mode! & 0o7777, 0o4755);
      assert.equal(file.uid, 3_000_000);
      assert.equal(file.gid, 3_000_001);
      assert.equal(file.nlink, 2);
      assert.equal((await Deno.lstat(`${out}/d/hard`)).ino, file.ino);
      assert.equal(await Deno.readTextFile(`${out}/d/file`), "#!/bin/sh\necho hi\n");
      assert.deepEqual(await mtimeNs(`${out}/d/file`), [mtime.sec, mtime.nsec]);
      const setgid = await Deno.lstat(`${out}/d/setgid`);
      assert.equal(setgid.mode! & 0o7777, 0o2711);
      assert.deepEqual([setgid.uid, setgid.gid, setgid.size], [1234, 5678, 0]);
      assert.equal((await Deno.lstat(`${out}/d/sticky`)).mode! & 0o7777, 0o1777);
      assert.equal(await Deno.readLink(`${out}/d/sym`), "file");
      assert.equal(await Deno.readLink(`${out}/d/longsym`), "y".repeat(180));
      const fifo = await Deno.lstat(`${out}/d/fifo`);
      assert.ok(fifo.isFifo);
      assert.equal(fifo.mode! & 0o7777, 0o640);
      if (isRoot) {
        const dev = await Deno.lstat(`${out}/d/null`);
        assert.ok(dev.isCharDevice);
        assert.equal(dev.rdev, (1 << 8) | 3);
        assert.equal(dev.mode! & 0o7777, 0o666);
      }
      assert.equal(await Deno.readTextFile(`${out}/d/${LONG_FILE}`), "long");
      assert.deepEqual(await mtimeNs(`${out}/d/${LONG_FILE}`), [mtime.sec, mtime.nsec]);
      assert.equal(await Deno.readTextFile(`${out}/d/${SINGLE_150}`), "single");
      assert.deepEqual(
        await Deno.readFile(`${out}/d/héllo-ü.txt`),
        new Uint8Array(100_000).fill(0xab),
      );
      if (xattrs) {
        assert.deepEqual(await getXattr(`${out}/d/file`, "user.bin"), BIN_XATTR);
        assert.deepEqual(await getXattr(`${out}/d/file`, "user.text"), enc.encode("plain"));
      }
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test({
  name: "TarWriter output lists cleanly with bsdtar",
  ignore: !hasProgram("bsdtar"),
  fn: async () => {
    const archive = await write([
      { header: { name: LONG_FILE, uid: 3_000_000 }, body: enc.encode("x") },
      { header: { name: "f", xattrs: new Map([["user.bin", BIN_XATTR]]) } },
    ]);
    const { stdout, stderr } = await run("bsdtar", ["-tvf", "-", "--numeric-owner"], {
      stdin: archive,
    });
    assert.equal(stderr, "");
    const text = dec.decode(stdout);
    assert.match(text, /3000000/);
    assert.ok(text.includes(LONG_FILE));
  },
});

// ---------------------------------------------------------------------------------------------
// Large entries stream through without being held in memory

const MiB = 1 << 20;

Deno.test("a 200 MiB entry streams through writer, reader, writer and reader", async () => {
  const size = 200 * MiB;
  const chunk = MiB;
  let produced = 0;
  let consumed = 0;
  let maxInFlight = 0;
  const source = new ReadableStream<Uint8Array>({
    pull(c) {
      if (produced >= size) return c.close();
      const n = Math.min(chunk, size - produced);
      c.enqueue(new Uint8Array(n).fill((produced / chunk) & 0xff));
      produced += n;
      maxInFlight = Math.max(maxInFlight, produced - consumed);
    },
  }, { highWaterMark: 0 });

  // Stage 1: writer.
  const w1 = new TarWriter();
  const writing1 = (async () => {
    await w1.writeEntry({ name: "small-before" }, enc.encode("before"));
    await w1.writeEntry({ name: "big", size, mode: 0o600 }, source);
    await w1.writeEntry({ name: "small-after" }, enc.encode("after"));
    await w1.close();
  })();
  // Stage 2: reader → writer (a copy, as a layer rewrite would do).
  const w2 = new TarWriter();
  const copying = (async () => {
    for await (const { header, body } of readTar(w1.readable)) await w2.writeEntry(header, body);
    await w2.close();
  })();
  // Stage 3: reader, checking every chunk's position and content.
  const names: string[] = [];
  for await (const { header, body } of readTar(w2.readable)) {
    names.push(header.name);
    if (header.name !== "big") {
      await collect(body);
      continue;
    }
    assert.equal(header.size, size);
    for await (const piece of body) {
      const first = (consumed / chunk) & 0xff;
      const last = ((consumed + piece.length - 1) / chunk) & 0xff;
      assert.equal(piece[0], first);
      assert.equal(piece[piece.length - 1], last);
      consumed += piece.length;
    }
    assert.equal(consumed, size);
  }
  await writing1;
  await copying;
  assert.deepEqual(names, ["small-before", "big", "small-after"]);
  assert.equal(produced, size);
  // Never more than a few chunks between the generator and the final consumer.
  assert.ok(maxInFlight <= 8 * chunk, `up to ${maxInFlight / MiB} MiB in flight`);
});
