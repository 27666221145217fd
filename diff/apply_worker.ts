/**
 * The worker of `applyLayerInWorker` (./apply.ts): applies one layer (decompression, tar parsing,
 * the file system calls) off the daemon's event loop. It receives
 * `{ blobPath, target, options }` and answers
 * `{ result }` or `{ error: { kind, name, message } }`.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { applyLayerFile, type ApplyLayerOptions } from "./apply.ts";
import type { Mount } from "../sys/mount.ts";

/** The message a worker receives. */
export interface ApplyWorkerRequest {
  /** The blob's file. */
  blobPath: string;
  target: string | Mount[];
  options: Omit<ApplyLayerOptions, "signal">;
}

self.onmessage = async (e: MessageEvent<ApplyWorkerRequest>) => {
  const { blobPath, target, options } = e.data;
  try {
    const result = await applyLayerFile(blobPath, target, options);
    self.postMessage({ result });
  } catch (err) {
    const e = err as Error & { kind?: string };
    self.postMessage({
      error: { kind: e?.kind, name: e?.name ?? "Error", message: e?.message ?? String(err) },
    });
  }
};
