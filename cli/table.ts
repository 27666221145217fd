/**
 * Column-aligned tables for CLI output, as Go's tabwriter prints them for ctr.
 *
 * @module
 */

/** Formats rows (the first is the header) with columns padded to their widest cell. */
export function formatTable(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  }
  return rows.map((row) =>
    row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] + 4))).join("")
      .trimEnd()
  ).join("\n") + "\n";
}

/** Formats labels as `k=v,k2=v2` sorted by key. */
export function formatLabels(labels: Record<string, string>): string {
  return Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join(",");
}

/** Parses `k=v` arguments into labels; a bare `k` (or `k=`) means an empty value. */
export function parseLabelArgs(args: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const a of args) {
    const i = a.indexOf("=");
    if (i < 0) out[a] = "";
    else out[a.slice(0, i)] = a.slice(i + 1);
  }
  return out;
}
