/**
 * Layer compression, as containerd's `archive/compression`: detection from magic bytes
 * (gzip, zstd — skippable frames included —, and the unsupported bzip2 and xz), layer media
 * types, and streaming decompression and compression through `node:zlib`.
 *
 * @module
 */

import * as zlib from "node:zlib";
import type { Transform } from "node:stream";
import { invalidArgument, notImplemented } from "../plugins/errdefs.ts";

/** The compressions tainerd reads and writes. */
export type Compression = "none" | "gzip" | "zstd";

/** What {@link detectCompression} can recognise. */
export type DetectedCompression = Compression | "bzip2" | "xz";

/** Layer media types (OCI and Docker). */
export const MediaType = {
  /** OCI uncompressed layer. */
  OciLayer: "application/vnd.oci.image.layer.v1.tar",
  /** OCI gzip layer. */
  OciLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  /** OCI zstd layer. */
  OciLayerZstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  /** OCI non-distributable uncompressed layer. */
  OciLayerNonDistributable: "application/vnd.oci.image.layer.nondistributable.v1.tar",
  /** OCI non-distributable gzip layer. */
  OciLayerNonDistributableGzip: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  /** OCI non-distributable zstd layer. */
  OciLayerNonDistributableZstd: "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
  /** Docker uncompressed layer. */
  DockerLayer: "application/vnd.docker.image.rootfs.diff.tar",
  /** Docker gzip layer. */
  DockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  /** Docker foreign gzip layer. */
  DockerLayerForeignGzip: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
} as const;

const MEDIA_TYPE_COMPRESSION: ReadonlyMap<string, Compression> = new Map<string, Compression>([
  [MediaType.OciLayer, "none"],
  [MediaType.OciLayerGzip, "gzip"],
  [MediaType.OciLayerZstd, "zstd"],
  [MediaType.OciLayerNonDistributable, "none"],
  [MediaType.OciLayerNonDistributableGzip, "gzip"],
  [MediaType.OciLayerNonDistributableZstd, "zstd"],
  [MediaType.DockerLayer, "none"],
  [MediaType.DockerLayerGzip, "gzip"],
  [MediaType.DockerLayerForeignGzip, "gzip"],
  ["application/vnd.docker.image.rootfs.foreign.diff.tar", "none"],
]);

/**
 * The compression a layer media type declares.
 *
 * @throws {TainerdError} NotImplemented for a media type that is not a supported layer
 *   (encrypted layers, unknown suffixes)
 */
export function compressionOfMediaType(mediaType: string): Compression {
  const c = MEDIA_TYPE_COMPRESSION.get(mediaType);
  if (c === undefined) {
    throw notImplemented(`Unsupported layer media type ${JSON.stringify(mediaType)}`);
  }
  return c;
}

/** The OCI layer media type of a compression. */
export function ociLayerMediaType(compression: Compression): string {
  return compression === "gzip"
    ? MediaType.OciLayerGzip
    : compression === "zstd"
    ? MediaType.OciLayerZstd
    : MediaType.OciLayer;
}

/** How many leading bytes {@link detectCompression} looks at. */
export const MAGIC_BYTES = 6;

/** Recognises a compression from the first bytes of a stream ("none" when no magic matches). */
export function detectCompression(head: Uint8Array): DetectedCompression {
  const starts = (...bytes: number[]) =>
    head.length >= bytes.length && bytes.every((b, i) => head[i] === b);
  if (starts(0x1f, 0x8b, 0x08)) return "gzip";
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return "zstd";
  // zstd skippable frame: magic 0x184D2A5? little-endian.
  if (head.length >= 4 && (head[0] & 0xf0) === 0x50 && starts(head[0], 0x2a, 0x4d, 0x18)) {
    return "zstd";
  }
  if (starts(0x42, 0x5a, 0x68)) return "bzip2";
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return "xz";
  return "none";
}

/**
 * Reads at least `n` bytes (fewer at the end) off `source` and returns them together with a
 * stream that replays them followed by the rest of `source`.
 */
export async function peek(
  source: ReadableStream<Uint8Array>,
  n: number,
): Promise<{ head: Uint8Array; stream: ReadableStream<Uint8Array> }> {
  const reader = source.getReader();
  const chunks: Uint8Array[] = [];
  let length = 0;
  let eof = false;
  try {
    while (length < n) {
      const r = await reader.read();
      if (r.done) {
        eof = true;
        break;
      }
      chunks.push(r.value);
      length += r.value.length;
    }
  } catch (err) {
    reader.releaseLock();
    throw err;
  }
  let head: Uint8Array;
  if (chunks.length === 1) {
    head = chunks[0];
  } else {
    head = new Uint8Array(length);
    let at = 0;
    for (const c of chunks) {
      head.set(c, at);
      at += c.length;
    }
  }
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      if (head.length > 0) controller.enqueue(head);
      if (eof) {
        controller.close();
        reader.releaseLock();
      }
    },
    async pull(controller) {
      const r = await reader.read();
      if (r.done) {
        controller.close();
        reader.releaseLock();
      } else {
        controller.enqueue(r.value);
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return { head: head.subarray(0, Math.min(head.length, n)), stream };
}

/** Output chunk size of the zlib streams: big chunks mean fewer hops downstream. */
const CHUNK_SIZE = 128 * 1024;

/**
 * Wraps a `node:zlib` transform as a web `TransformStream`, with backpressure (a chunk is
 * written only once the previous one was processed and the readable side wants more).
 */
export function nodeTransform(z: Transform): TransformStream<Uint8Array, Uint8Array> {
  let failure: unknown = null;
  let controller: TransformStreamDefaultController<Uint8Array>;
  const fail = (err: unknown) => {
    failure ??= invalidArgument(
      `Cannot decompress or compress the stream: ${(err as Error)?.message ?? String(err)}`,
      { cause: err },
    );
  };
  return new TransformStream<Uint8Array, Uint8Array>({
    start(c) {
      controller = c;
      z.on("data", (d: Uint8Array) => {
        controller.enqueue(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
      });
      z.on("error", fail);
    },
    transform(chunk) {
      if (failure !== null) return Promise.reject(failure);
      return new Promise<void>((resolve, reject) => {
        z.write(chunk, (err) => {
          if (err) fail(err);
          if (failure !== null) reject(failure);
          else resolve();
        });
      });
    },
    flush() {
      if (failure !== null) return Promise.reject(failure);
      return new Promise<void>((resolve, reject) => {
        z.once("end", () => failure !== null ? reject(failure) : resolve());
        z.once("error", () => reject(failure));
        z.end();
      });
    },
    cancel() {
      z.destroy();
    },
  });
}

/** A decompressing transform for `compression` ("none": identity). */
export function decompressor(compression: Compression): TransformStream<Uint8Array, Uint8Array> {
  switch (compression) {
    case "gzip":
      return nodeTransform(zlib.createGunzip({ chunkSize: CHUNK_SIZE }));
    case "zstd":
      return nodeTransform(zlib.createZstdDecompress({ chunkSize: CHUNK_SIZE }));
    default:
      return new TransformStream<Uint8Array, Uint8Array>();
  }
}

/** Options of {@link compressor}. */
export interface CompressOptions {
  /** gzip level 1–9 (default 6) or zstd level 1–22 (default 3). */
  level?: number;
}

/** A compressing transform for `compression` ("none": identity). */
export function compressor(
  compression: Compression,
  options: CompressOptions = {},
): TransformStream<Uint8Array, Uint8Array> {
  switch (compression) {
    case "gzip":
      return nodeTransform(zlib.createGzip({ chunkSize: CHUNK_SIZE, level: options.level ?? 6 }));
    case "zstd": {
      const params: Record<number, number> = {};
      if (options.level !== undefined) {
        params[zlib.constants.ZSTD_c_compressionLevel] = options.level;
      }
      return nodeTransform(zlib.createZstdCompress({ chunkSize: CHUNK_SIZE, params }));
    }
    default:
      return new TransformStream<Uint8Array, Uint8Array>();
  }
}

/** What {@link decompressStream} returns. */
export interface Decompressed {
  /** The uncompressed bytes. */
  stream: ReadableStream<Uint8Array>;
  /** The compression found by magic bytes. */
  compression: Compression;
}

/**
 * Decompresses a layer stream. The compression is detected from the magic bytes (a layer whose
 * media type says gzip but whose bytes are a plain tar is read as a plain tar, as containerd's
 * `DecompressStream` does); a given `mediaType` must be a supported layer type.
 *
 * @throws {TainerdError} NotImplemented for unsupported media types, bzip2 and xz
 */
export async function decompressStream(
  source: ReadableStream<Uint8Array>,
  options: { mediaType?: string } = {},
): Promise<Decompressed> {
  if (options.mediaType !== undefined && options.mediaType !== "") {
    try {
      compressionOfMediaType(options.mediaType);
    } catch (err) {
      await source.cancel(err).catch(() => {});
      throw err;
    }
  }
  const { head, stream } = await peek(source, MAGIC_BYTES);
  const detected = detectCompression(head);
  if (detected === "bzip2" || detected === "xz") {
    await stream.cancel().catch(() => {});
    throw notImplemented(`Unsupported layer compression ${detected}`);
  }
  return { stream: stream.pipeThrough(decompressor(detected)), compression: detected };
}
