/**
 * Transfer progress as ctr prints it (`ref: status |++++----| 1.2 MiB/3.4 MiB`, then
 * `elapsed: … total: …`): redrawn in place ten times a second when stdout is a terminal,
 * printed once at the end otherwise.
 *
 * @module
 */

import type { ProgressEvent } from "../images/registry_options.ts";

const BINARY_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];

/** A size as ctr's `progress.Bytes` prints it (binary units, one decimal): `"22.3 MiB"`. */
export function bytesSize(bytes: number): string {
  let size = bytes;
  let i = 0;
  while (size >= 1024 && i < BINARY_UNITS.length - 1) {
    size /= 1024;
    i++;
  }
  return `${size.toFixed(1).padStart(2, "0")} ${BINARY_UNITS[i]}`;
}

/** Go's `%<width>.<precision>s`: truncated to `precision`, padded on the left to `width`. */
function goString(s: string, width: number, precision: number): string {
  return s.slice(0, precision).padStart(width);
}

/** ctr's progress bar (`%40r`): `|+++---|`, `width` characters wide. */
export function progressBar(fraction: number, width = 40): string {
  const inner = width - 2;
  const n = Math.max(0, Math.min(inner, Math.floor(inner * fraction)));
  return `|${"+".repeat(n)}${"-".repeat(inner - n)}|`;
}

/** Aligns cells as Go's tabwriter with padding 1 (every cell ends with a tab). */
export function tabwrite(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((row) => row.map((c, i) => c.padEnd(widths[i] + 1)).join("") + "\n").join("");
}

interface Job {
  ref: string;
  status: string;
  offset: number;
  total: number;
}

/** Collects progress events and renders ctr's table. */
export class ProgressDisplay {
  readonly #jobs = new Map<string, Job>();
  readonly #start = performance.now();
  readonly #tty: boolean;
  readonly #out: (s: string) => void;
  #lines = 0;
  #timer?: ReturnType<typeof setInterval>;
  #transferred = new Map<string, number>();

  constructor(opts: { tty?: boolean; out?: (s: string) => void } = {}) {
    this.#tty = opts.tty ?? Deno.stdout.isTerminal();
    this.#out = opts.out ??
      ((s) => {
        const bytes = new TextEncoder().encode(s);
        for (let off = 0; off < bytes.length;) off += Deno.stdout.writeSync(bytes.subarray(off));
      });
    if (this.#tty) this.#timer = setInterval(() => this.#draw(), 100);
  }

  /** The handler to pass as `onProgress`. */
  readonly handler = (e: ProgressEvent): void => {
    if (e.status === "unpacking" || e.status === "unpacked") return;
    const job = this.#jobs.get(e.ref) ?? { ref: e.ref, status: e.status, offset: 0, total: 0 };
    job.status = e.status;
    job.offset = e.offset;
    job.total = e.total;
    this.#jobs.set(e.ref, job);
    if (e.status === "downloading" || e.status === "uploading" || e.status === "done") {
      this.#transferred.set(e.ref, e.offset);
    }
  };

  #frame(): string {
    const rows: string[][] = [];
    for (const j of this.#jobs.values()) {
      const ref = `${j.ref}:`;
      if (j.status === "downloading" || j.status === "uploading") {
        const bar = progressBar(j.total > 0 ? j.offset / j.total : 0);
        rows.push([
          ref,
          j.status,
          bar,
          `${goString(bytesSize(j.offset), 8, 8)}/${bytesSize(j.total)}`,
        ]);
      } else if (j.status === "resolving" || j.status === "waiting") {
        rows.push([ref, j.status, progressBar(0)]);
      } else {
        rows.push([ref, j.status, progressBar(1)]);
      }
    }
    const elapsed = (performance.now() - this.#start) / 1000;
    let total = 0;
    for (const n of this.#transferred.values()) total += n;
    const rate = elapsed > 0 ? total / elapsed : 0;
    return tabwrite(rows) +
      `elapsed: ${elapsed.toFixed(1).padEnd(4)}s total: ${goString(bytesSize(total), 7, 6)} (${
        bytesSize(rate)
      }/s)\n`;
  }

  #draw(): void {
    const frame = this.#frame();
    // Move up over the previous frame and clear to the end of the screen.
    const up = this.#lines > 0 ? `\x1b[${this.#lines}A\r\x1b[J` : "";
    this.#out(up + frame);
    this.#lines = frame.split("\n").length - 1;
  }

  /** Stops redrawing and prints the final frame. */
  finish(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#draw();
  }

  /** Stops without a final frame (on failure, when not a terminal). */
  stop(): void {
    if (this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
      this.#draw();
    }
  }
}
