import assert from "node:assert/strict";
import { TainerdError } from "../plugins/errdefs.ts";
import {
  type ByteReader,
  decodeHeader,
  encodeFrame,
  encodeHeader,
  type Frame,
  FrameReader,
  FrameTooLargeError,
  FrameWriter,
  MAX_MESSAGE_LENGTH,
  MessageType,
} from "./frame.ts";

/** A reader over fixed bytes that hands out at most `chunk(i)` bytes per read. */
function chunkedReader(bytes: Uint8Array, chunk: (i: number) => number): ByteReader {
  let off = 0;
  let i = 0;
  return {
    read(p: Uint8Array): Promise<number | null> {
      if (off >= bytes.length) return Promise.resolve(null);
      const n = Math.min(p.length, chunk(i++), bytes.length - off);
      p.set(bytes.subarray(off, off + n));
      off += n;
      return Promise.resolve(n);
    },
  };
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function frame(streamId: number, size: number, type: number = MessageType.Request): Frame {
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = (i * 7 + streamId) & 0xff;
  return { streamId, type, flags: 0, data };
}

async function readAll(reader: FrameReader): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let f = await reader.read(); f !== null; f = await reader.read()) frames.push(f);
  return frames;
}

Deno.test("encodeHeader() writes length, stream id, type and flags big-endian", () => {
  const bytes = encodeHeader({ length: 0x010203, streamId: 0x0a0b0c0d, type: 2, flags: 5 });
  assert.deepEqual([...bytes], [0, 1, 2, 3, 0x0a, 0x0b, 0x0c, 0x0d, 2, 5]);
  assert.deepEqual(decodeHeader(bytes), {
    length: 0x010203,
    streamId: 0x0a0b0c0d,
    type: 2,
    flags: 5,
  });
});

Deno.test("decodeHeader() rejects fewer than 10 bytes", () => {
  assert.throws(() => decodeHeader(new Uint8Array(9)), RangeError);
});

Deno.test("encodeFrame() puts the data after the header", () => {
  const bytes = encodeFrame({ streamId: 3, type: 1, flags: 0, data: new Uint8Array([9, 8]) });
  assert.deepEqual([...bytes], [0, 0, 0, 2, 0, 0, 0, 3, 1, 0, 9, 8]);
});

Deno.test("FrameReader.read() reassembles frames split across one-byte reads", async () => {
  const frames = [frame(1, 0), frame(3, 17), frame(5, 300), frame(7, 1)];
  const wire = concat(...frames.map(encodeFrame));
  const got = await readAll(new FrameReader(chunkedReader(wire, () => 1), { bufferSize: 32 }));
  assert.deepEqual(got, frames);
});

Deno.test("FrameReader.read() handles many frames per read and random splits", async () => {
  const frames = Array.from({ length: 200 }, (_, i) => frame(2 * i + 1, (i * 37) % 700));
  const wire = concat(...frames.map(encodeFrame));
  let seed = 42;
  const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % 2000 + 1;
  for (const bufferSize of [16, 1024, 64 * 1024]) {
    const got = await readAll(new FrameReader(chunkedReader(wire, rand), { bufferSize }));
    assert.deepEqual(got, frames, `bufferSize ${bufferSize}`);
  }
});

Deno.test("FrameReader.read() reads from a ReadableStream", async () => {
  const frames = [frame(1, 5), frame(3, 70_000)];
  const wire = concat(...frames.map(encodeFrame));
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      for (let off = 0; off < wire.length; off += 4096) c.enqueue(wire.slice(off, off + 4096));
      c.close();
    },
  });
  assert.deepEqual(await readAll(new FrameReader(stream)), frames);
});

Deno.test("FrameReader.read() rejects an oversize frame and stays in sync", async () => {
  const wire = concat(encodeFrame(frame(1, 100)), encodeFrame(frame(3, 8)));
  const reader = new FrameReader(chunkedReader(wire, () => 7), { maxMessageLength: 64 });
  const err = await reader.read().then(() => null, (e) => e);
  assert.ok(err instanceof FrameTooLargeError);
  assert.equal(err.header.streamId, 1);
  assert.equal(err.header.length, 100);
  assert.match(err.message, /exceeds the maximum message size of 64/);
  assert.deepEqual(await reader.read(), frame(3, 8));
  assert.equal(await reader.read(), null);
});

Deno.test("FrameReader.read() rejects frames over 4 MiB by default", async () => {
  const header = encodeHeader({ length: MAX_MESSAGE_LENGTH + 1, streamId: 1, type: 1, flags: 0 });
  const wire = concat(header, new Uint8Array(MAX_MESSAGE_LENGTH + 1));
  const reader = new FrameReader(chunkedReader(wire, () => 1 << 20));
  await assert.rejects(reader.read(), FrameTooLargeError);
  assert.equal(await reader.read(), null);
  // Exactly 4 MiB is allowed.
  const ok = frame(3, MAX_MESSAGE_LENGTH);
  assert.deepEqual(await new FrameReader(chunkedReader(encodeFrame(ok), () => 65536)).read(), ok);
});

Deno.test("FrameReader.read() reports a truncated frame as Unavailable", async () => {
  const wire = encodeFrame(frame(1, 50));
  for (const cut of [3, 10, 30]) {
    const reader = new FrameReader(chunkedReader(wire.subarray(0, cut), () => 4));
    const err = await reader.read().then(() => null, (e) => e);
    assert.ok(err instanceof TainerdError, `cut at ${cut}`);
    assert.equal(err.kind, "Unavailable");
  }
});

Deno.test("FrameWriter.write() never interleaves concurrent frames over partial writes", async () => {
  const chunks: Uint8Array[] = [];
  const sink = {
    async write(p: Uint8Array): Promise<number> {
      await new Promise((r) => setTimeout(r, 0));
      const n = Math.min(p.length, 5);
      chunks.push(p.slice(0, n));
      return n;
    },
  };
  const writer = new FrameWriter(sink);
  const frames = Array.from({ length: 20 }, (_, i) => frame(2 * i + 1, i * 3));
  await Promise.all(frames.map((f) => writer.write(f)));
  const got = await readAll(new FrameReader(chunkedReader(concat(...chunks), () => 1000)));
  assert.deepEqual(got, frames);
});

Deno.test("FrameWriter.write() fails every later frame once a write failed", async () => {
  let calls = 0;
  const writer = new FrameWriter({
    write(): Promise<number> {
      calls++;
      return Promise.reject(new Deno.errors.BrokenPipe("gone"));
    },
  });
  await assert.rejects(writer.write(frame(1, 3)), Deno.errors.BrokenPipe);
  await assert.rejects(writer.write(frame(3, 3)), Deno.errors.BrokenPipe);
  assert.equal(calls, 1);
});
