/**
 * Tests of the CRI log writer: record format, line cutting, both streams in one file,
 * rotation.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  CriLineSplitter,
  type CriLogRecord,
  CriLogWriter,
  encodeRecords,
  formatTimestamp,
  joinPartialLines,
  nowNanos,
  parseCriLog,
  parseTimestamp,
} from "./log.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function split(max: number, ...chunks: string[]): { tag: string; text: string }[] {
  const s = new CriLineSplitter(max);
  const out: CriLogRecord[] = [];
  for (const c of chunks) out.push(...s.push(enc.encode(c)));
  out.push(...s.end());
  return out.map((r) => ({ tag: r.partial ? "P" : "F", text: dec.decode(r.content) }));
}

/** A stream fed by hand. */
function manualStream() {
  const ts = new TransformStream<Uint8Array, Uint8Array>();
  const w = ts.writable.getWriter();
  return {
    readable: ts.readable,
    write: (s: string) => w.write(enc.encode(s)),
    end: () => w.close(),
  };
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-crilog-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const LINE_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z (stdout|stderr) [FP] /;

Deno.test("formatTimestamp() prints Go's RFC3339Nano in UTC", () => {
  const base = BigInt(Date.UTC(2026, 10, 27, 4, 1, 2)) * 1_000_000n;
  assert.equal(formatTimestamp(base + 123456789n), "2026-11-27T04:01:02.123456789Z");
  assert.equal(formatTimestamp(base + 120000000n), "2026-11-27T04:01:02.12Z");
  assert.equal(formatTimestamp(base + 1n), "2026-11-27T04:01:02.000000001Z");
  assert.equal(formatTimestamp(base), "2026-11-27T04:01:02Z");
  assert.equal(parseTimestamp("2026-11-27T04:01:02.12Z"), base + 120000000n);
  assert.equal(parseTimestamp("2026-11-27T05:01:02.000000001+01:00"), base + 1n);
  assert.equal(parseTimestamp("yesterday"), undefined);
});

Deno.test("nowNanos() is close to the wall clock and strictly increasing", () => {
  let last = nowNanos();
  assert.ok(Math.abs(Number(last / 1_000_000n) - Date.now()) < 1000);
  for (let i = 0; i < 10_000; i++) {
    const t = nowNanos();
    assert.ok(t > last);
    last = t;
  }
});

Deno.test("CriLineSplitter cuts full lines, CRLF, empty lines and a final partial line", () => {
  assert.deepEqual(split(16384, "a\nb\r\n\nc\rd\n", "tail"), [
    { tag: "F", text: "a" },
    { tag: "F", text: "b" },
    { tag: "F", text: "" },
    { tag: "F", text: "c\rd" },
    { tag: "P", text: "tail" },
  ]);
  // A line across chunks, and \r\n split between chunks.
  assert.deepEqual(split(16384, "hel", "lo\r", "\nwor", "ld\n"), [
    { tag: "F", text: "hello" },
    { tag: "F", text: "world" },
  ]);
  assert.deepEqual(split(16384, ""), []);
  assert.deepEqual(split(16384, "x\r"), [{ tag: "P", text: "x\r" }]);
});

Deno.test("CriLineSplitter cuts a 40 KiB line into P 16 KiB, P 16 KiB, F 8 KiB", () => {
  const line = "0123456789abcdef".repeat(40 * 64); // 40 KiB
  for (const chunks of [[line + "\n"], [line.slice(0, 5000), line.slice(5000) + "\n"]]) {
    const out = split(16 * 1024, ...chunks);
    assert.deepEqual(out.map((r) => [r.tag, r.text.length]), [
      ["P", 16384],
      ["P", 16384],
      ["F", 8192],
    ]);
    assert.equal(out.map((r) => r.text).join(""), line);
  }
  // Exactly the limit: one full line; limit + CR + LF: still one; no limit: never cut.
  assert.deepEqual(split(8, "12345678\n").map((r) => r.tag), ["F"]);
  assert.deepEqual(split(8, "12345678\r", "\n"), [{ tag: "F", text: "12345678" }]);
  assert.deepEqual(split(8, "123456789").map((r) => [r.tag, r.text]), [
    ["P", "12345678"],
    ["P", "9"],
  ]);
  assert.deepEqual(split(-1, "x".repeat(100_000) + "\n").map((r) => r.tag), ["F"]);
});

Deno.test("encodeRecords() writes `<time> <stream> <tag> <content>` lines", () => {
  const ns = BigInt(Date.UTC(2026, 0, 2, 3, 4, 5)) * 1_000_000n + 600n;
  const out = dec.decode(encodeRecords("stderr", [
    { partial: true, content: enc.encode("ab") },
    { partial: false, content: enc.encode("c d") },
  ], () => ns));
  assert.equal(
    out,
    "2026-01-02T03:04:05.0000006Z stderr P ab\n2026-01-02T03:04:05.0000006Z stderr F c d\n",
  );
});

Deno.test("parseCriLog() reads tags, empty content and rejects malformed lines", () => {
  const entries = parseCriLog(
    "2026-01-02T03:04:05Z stdout P ab\n2026-01-02T03:04:05.1Z stderr F:x e\n" +
      "2026-01-02T03:04:06Z stdout F c\n2026-01-02T03:04:07Z stdout F \n",
  );
  assert.deepEqual(entries.map((e) => [e.stream, e.partial, e.content]), [
    ["stdout", true, "ab"],
    ["stderr", false, "e"],
    ["stdout", false, "c"],
    ["stdout", false, ""],
  ]);
  assert.deepEqual(joinPartialLines(entries), [
    { stream: "stdout", content: "abc" },
    { stream: "stderr", content: "e" },
    { stream: "stdout", content: "" },
  ]);
  assert.throws(() => parseCriLog("nope\n"), { kind: "InvalidArgument" });
  assert.throws(() => parseCriLog("2026-01-02T03:04:05Z stdin F x\n"), /unknown stream/);
});

Deno.test("CriLogWriter writes both streams into one file without interleaving lines", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/c.log`;
    const log = await CriLogWriter.open(path, { maxLineSize: 1000 });
    // Two writers, lines of varied sizes sent in odd-sized chunks, at the same time.
    const make = (name: string, n: number) => {
      const lines = Array.from(
        { length: n },
        (_, i) => `${name}-${i}-` + name[0].repeat((i * 37) % 700),
      );
      const text = lines.join("\n") + "\n";
      const s = manualStream();
      const feed = (async () => {
        for (let off = 0, step = 1; off < text.length; off += step, step = (step * 7) % 997 + 1) {
          await s.write(text.slice(off, off + step));
          if (off % 5 === 0) await Promise.resolve();
        }
        await s.end();
      })();
      return { lines, readable: s.readable, feed };
    };
    const a = make("out", 400);
    const b = make("err", 400);
    const copies = [log.copy("stdout", a.readable), log.copy("stderr", b.readable)];
    await Promise.all([a.feed, b.feed, ...copies]);
    await log.close();

    const text = await Deno.readTextFile(path);
    for (const line of text.split("\n").slice(0, -1)) assert.match(line, LINE_RE);
    const entries = parseCriLog(text);
    for (let i = 1; i < entries.length; i++) {
      assert.ok(entries[i].timeNs > entries[i - 1].timeNs, "timestamps increase");
    }
    assert.ok(entries.every((e) => !e.partial));
    const byStream = (s: string) => entries.filter((e) => e.stream === s).map((e) => e.content);
    assert.deepEqual(byStream("stdout"), a.lines);
    assert.deepEqual(byStream("stderr"), b.lines);
    // Both streams really were interleaved line by line.
    const switches = entries.filter((e, i) => i > 0 && e.stream !== entries[i - 1].stream);
    assert.ok(switches.length > 10, `only ${switches.length} switches`);
  }));

Deno.test("CriLogWriter.reopen() continues in a new file after rotation", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/c.log`;
    const log = await CriLogWriter.open(path);
    const s = manualStream();
    const copy = log.copy("stdout", s.readable);
    await s.write("one\ntw");
    await s.write("o\n");
    // Lines in flight while the kubelet renames and asks for a reopen.
    const inFlight = s.write("three\n");
    await Deno.rename(path, `${path}.1`);
    await log.reopen();
    await inFlight;
    await s.write("four\nfive");
    await s.end();
    await copy;
    await log.close();
    const old = parseCriLog(await Deno.readTextFile(`${path}.1`)).map((e) => e.content);
    const cur = parseCriLog(await Deno.readTextFile(path));
    assert.deepEqual([...old, ...cur.map((e) => e.content)], [
      "one",
      "two",
      "three",
      "four",
      "five",
    ]);
    assert.deepEqual(cur.slice(-2).map((e) => e.content), ["four", "five"]);
    assert.equal(cur[cur.length - 1].partial, true, "unterminated last line is P");
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o640);
    // A failed reopen keeps the old file; a closed writer refuses.
    await assert.rejects(log.reopen(), { kind: "FailedPrecondition" });
  }));

Deno.test("CriLogWriter.reopen() failing keeps writing to the old file", () =>
  withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/logs`);
    const path = `${dir}/logs/c.log`;
    const log = await CriLogWriter.open(path);
    const s = manualStream();
    const copy = log.copy("stderr", s.readable);
    await s.write("a\n");
    await Deno.rename(`${dir}/logs`, `${dir}/moved`);
    await assert.rejects(log.reopen(), Deno.errors.NotFound);
    await s.write("b\n");
    await s.end();
    await copy;
    await log.close();
    const entries = parseCriLog(await Deno.readTextFile(`${dir}/moved/c.log`));
    assert.deepEqual(entries.map((e) => [e.stream, e.content]), [["stderr", "a"], [
      "stderr",
      "b",
    ]]);
  }));

Deno.test("CriLogWriter.close() cancels a source that never ends", () =>
  withTempDir(async (dir) => {
    const log = await CriLogWriter.open(`${dir}/c.log`);
    const s = manualStream();
    const copy = log.copy("stdout", s.readable);
    s.write("half").catch(() => {});
    await new Promise((r) => setTimeout(r, 10));
    await log.close();
    await copy;
    const entries = parseCriLog(await Deno.readTextFile(`${dir}/c.log`));
    assert.deepEqual(entries.map((e) => [e.partial, e.content]), [[true, "half"]]);
    assert.throws(() => log.copy("stdout", new ReadableStream()), {
      kind: "FailedPrecondition",
    });
  }));
