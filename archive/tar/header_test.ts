import assert from "node:assert/strict";
import { TainerdError } from "../../plugins/errdefs.ts";
import {
  applyPaxRecords,
  BLOCK_SIZE,
  computeChecksums,
  detectFormat,
  formatBase256,
  formatOctal,
  formatPaxRecord,
  formatPaxTime,
  parseHeaderBlock,
  parseNumeric,
  parsePaxRecords,
  parsePaxTime,
  type TarHeader,
  tarTimeFromDate,
  tarTimeToDate,
  writeChecksum,
} from "./header.ts";

const enc = new TextEncoder();

function isInvalidArgument(err: unknown): boolean {
  return err instanceof TainerdError && err.kind === "InvalidArgument";
}

function bytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

function emptyHeader(): TarHeader {
  return {
    name: "f",
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
  };
}

Deno.test("parseNumeric() reads octal padded with spaces and NULs", () => {
  assert.equal(parseNumeric(bytes("0000644\0")), 0o644);
  assert.equal(parseNumeric(bytes("   644 \0")), 0o644);
  assert.equal(parseNumeric(bytes("\0\0\0\0\0\0\0\0")), 0);
  assert.equal(parseNumeric(bytes("77777777777\0")), 8 ** 11 - 1);
  assert.equal(parseNumeric(bytes("0000 89\0")), null);
  assert.equal(parseNumeric(bytes("00x00\0")), null);
});

Deno.test("parseNumeric() reads GNU base-256, positive and negative", () => {
  const field = new Uint8Array(8);
  formatBase256(field, 3_000_000);
  assert.equal(field[0], 0x80);
  assert.equal(parseNumeric(field), 3_000_000);
  const big = new Uint8Array(12);
  formatBase256(big, 20 * 2 ** 30);
  assert.equal(parseNumeric(big), 20 * 2 ** 30);
  const neg = new Uint8Array(12);
  formatBase256(neg, -1);
  assert.deepEqual([...neg], [0xff, ...new Array(11).fill(0xff)]);
  assert.equal(parseNumeric(neg), -1);
  formatBase256(neg, -1_000_000_000);
  assert.equal(parseNumeric(neg), -1_000_000_000);
  // Beyond the safe integer range.
  assert.equal(
    parseNumeric(Uint8Array.from([0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])),
    null,
  );
});

Deno.test("parseHeaderBlock() accepts signed checksums and rejects bad ones", () => {
  const block = new Uint8Array(BLOCK_SIZE);
  block.set(enc.encode("héllo"), 0); // bytes ≥ 0x80 make signed and unsigned sums differ
  formatOctal(block.subarray(100, 108), 0o644);
  formatOctal(block.subarray(124, 136), 0);
  block[156] = 0x30;
  block.set(bytes("ustar\0" + "00"), 257);
  writeChecksum(block);
  assert.equal(parseHeaderBlock(block, 0).name, "héllo");
  const { unsigned, signed } = computeChecksums(block);
  assert.notEqual(unsigned, signed);
  // Old Sun tar wrote the signed sum.
  formatOctal(block.subarray(148, 155), signed);
  assert.equal(parseHeaderBlock(block, 0).name, "héllo");
  block[148] = 0x37;
  assert.throws(() => parseHeaderBlock(block, 1536), (err) => {
    assert.ok(isInvalidArgument(err));
    assert.equal((err as Error).message, "Invalid tar header at offset 1536: bad checksum");
    return true;
  });
});

Deno.test("parseHeaderBlock() reports a malformed numeric field by name", () => {
  const block = new Uint8Array(BLOCK_SIZE);
  block.set(bytes("f"), 0);
  block.set(bytes("12x4\0"), 124);
  block[156] = 0x30;
  writeChecksum(block);
  assert.equal(detectFormat(block), "v7");
  assert.throws(() => parseHeaderBlock(block, 512), /offset 512: bad size field/);
});

Deno.test("parsePaxRecords() keeps binary values byte for byte", () => {
  const value = Uint8Array.from([0, 0xff, 0x0a, 0x3d, 0x20, 0x01, 0x00]);
  const data = new Uint8Array([
    ...formatPaxRecord("path", enc.encode("a/ü")),
    ...formatPaxRecord("SCHILY.xattr.user.bin", value),
    ...formatPaxRecord("SCHILY.xattr.user.empty", new Uint8Array(0)),
  ]);
  const records = parsePaxRecords(data, 0);
  assert.deepEqual([...records.keys()], [
    "path",
    "SCHILY.xattr.user.bin",
    "SCHILY.xattr.user.empty",
  ]);
  assert.deepEqual(records.get("SCHILY.xattr.user.bin"), value);
  assert.deepEqual(records.get("SCHILY.xattr.user.empty"), new Uint8Array(0));
  const h = emptyHeader();
  applyPaxRecords(h, records, 0);
  assert.equal(h.name, "a/ü");
  assert.deepEqual(h.xattrs.get("user.bin"), value);
  assert.deepEqual(h.xattrs.get("user.empty"), new Uint8Array(0));
});

Deno.test("formatPaxRecord() gets the length right across digit boundaries", () => {
  for (let n = 0; n < 1200; n++) {
    const rec = formatPaxRecord("k", new Uint8Array(n).fill(0x61));
    const len = Number(new TextDecoder().decode(rec.subarray(0, rec.indexOf(0x20))));
    assert.equal(len, rec.length, `value length ${n}`);
    assert.equal(parsePaxRecords(rec, 0).get("k")?.length, n);
  }
});

Deno.test("parsePaxRecords() rejects malformed records with InvalidArgument", () => {
  const cases = [
    "30 path=foo\n", // length too long
    "11 path=foo\n", // length ends before the newline
    "13 path=foo\nX", // length off by one
    "12 pathfoo\n\n", // no '='
    "path=foo\n", // no length
    "4 a=\n", // too short
    "9 =value\n", // empty key
  ];
  for (const c of cases) {
    assert.throws(() => parsePaxRecords(enc.encode(c), 2048), (err) => {
      assert.ok(isInvalidArgument(err), c);
      assert.match((err as Error).message, /^Invalid tar header at offset 2048: bad PAX record/);
      return true;
    });
  }
  assert.throws(() => parsePaxRecords(enc.encode("12 path=a\0b\n"), 0), /NUL in path/);
});

Deno.test("applyPaxRecords() rejects bad numbers and times, keeps unknown records", () => {
  const h = emptyHeader();
  applyPaxRecords(
    h,
    new Map([
      ["uid", enc.encode("3000000")],
      ["size", enc.encode("10737418240")],
      ["mtime", enc.encode("1700000000.123456789")],
      ["atime", enc.encode("-1.5")],
      ["LIBARCHIVE.creationtime", enc.encode("42")],
      ["gname", enc.encode("")], // empty: keep the header block's value
    ]),
    0,
  );
  assert.equal(h.uid, 3_000_000);
  assert.equal(h.size, 10 * 2 ** 30);
  assert.deepEqual(h.mtime, { sec: 1_700_000_000, nsec: 123_456_789 });
  assert.deepEqual(h.atime, { sec: -2, nsec: 500_000_000 });
  assert.deepEqual([...h.pax], [["LIBARCHIVE.creationtime", "42"]]);
  for (
    const [k, v] of [["uid", "-1"], ["size", "1e3"], ["mtime", "x"], ["gid", "99999999999999999"]]
  ) {
    assert.throws(
      () => applyPaxRecords(emptyHeader(), new Map([[k, enc.encode(v)]]), 0),
      isInvalidArgument,
    );
  }
});

Deno.test("applyPaxRecords() decodes libarchive xattrs when no SCHILY record names them", () => {
  const h = emptyHeader();
  applyPaxRecords(
    h,
    new Map([
      ["LIBARCHIVE.xattr.user.a%3Db", enc.encode(btoa("\x00\xff"))],
      ["LIBARCHIVE.xattr.user.c", enc.encode(btoa("lib"))],
      ["SCHILY.xattr.user.c", enc.encode("schily")],
    ]),
    0,
  );
  assert.deepEqual(h.xattrs.get("user.a=b"), Uint8Array.from([0, 0xff]));
  assert.deepEqual(h.xattrs.get("user.c"), enc.encode("schily"));
});

Deno.test("parsePaxTime() and formatPaxTime() round trip with nanoseconds", () => {
  const cases: [string, number, number][] = [
    ["0", 0, 0],
    ["1700000000", 1_700_000_000, 0],
    ["1.5", 1, 500_000_000],
    ["1.000000001", 1, 1],
    ["-1.5", -2, 500_000_000],
    ["-0.25", -1, 750_000_000],
  ];
  for (const [s, sec, nsec] of cases) {
    assert.deepEqual(parsePaxTime(s), { sec, nsec }, s);
    assert.equal(formatPaxTime({ sec, nsec }), s);
  }
  assert.deepEqual(parsePaxTime("1.1234567899"), { sec: 1, nsec: 123_456_789 });
  assert.deepEqual(parsePaxTime("7."), { sec: 7, nsec: 0 });
  for (const bad of ["", ".5", "1.2.3", "1e9", "abc", "1.-5"]) {
    assert.equal(parsePaxTime(bad), null, bad);
  }
});

Deno.test("tarTimeFromDate() and tarTimeToDate() convert at millisecond precision", () => {
  assert.deepEqual(tarTimeFromDate(new Date(1_700_000_000_123)), {
    sec: 1_700_000_000,
    nsec: 123_000_000,
  });
  assert.deepEqual(tarTimeFromDate(new Date(-1500)), { sec: -2, nsec: 500_000_000 });
  assert.equal(tarTimeToDate({ sec: 5, nsec: 999_999_999 }).getTime(), 5999);
});
