/**
 * tainerd's own streaming tar codec (read and write), for image layers: ustar, GNU and PAX,
 * binary-safe xattrs, device numbers, big ids and sizes, nanosecond times, with backpressure
 * in both directions.
 *
 * ```ts
 * import { readTar, TarWriter } from "./archive/tar/mod.ts";
 *
 * const writer = new TarWriter();
 * const copy = (async () => {
 *   for await (const { header, body } of readTar(input)) await writer.writeEntry(header, body);
 *   await writer.close();
 * })();
 * await writer.readable.pipeTo(output);
 * await copy;
 * ```
 *
 * @module
 */

export {
  BLOCK_SIZE,
  isHeaderOnlyType,
  type TarEntryType,
  type TarHeader,
  type TarHeaderInit,
  type TarTime,
  tarTimeFromDate,
  tarTimeToDate,
  TarType,
} from "./header.ts";
export { readTar, type TarEntry, TarReader, type TarReaderOptions } from "./reader.ts";
export {
  type TarBody,
  TarWriter,
  type TarWriterEntry,
  type TarWriterOptions,
  writeTar,
} from "./writer.ts";
