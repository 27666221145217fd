/**
 * Result rows and their statistics: min/median/max of repeated samples, and the ratio
 * tainerd/containerd of the medians.
 *
 * @module
 */

/** min/median/max of some samples. */
export interface Summary {
  n: number;
  min: number;
  median: number;
  max: number;
  samples: number[];
}

/** Summarises samples. */
export function summarize(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  return { n: s.length, min: s[0], median, max: s[s.length - 1], samples };
}

/** A measured value, or why there is none. */
export type Cell = Summary | { na: string };

/** Whether a cell holds a measurement. */
export function measured(c: Cell | undefined): c is Summary {
  return c !== undefined && !("na" in c);
}

/** One row of the results. */
export interface Row {
  figure: number;
  metric: string;
  /** "ms", "s", "MiB", "containers/s", "calls/s". */
  unit: string;
  /** Which direction is better. */
  better: "lower" | "higher";
  containerd?: Cell;
  tainerd?: Cell;
  /** A value that belongs to neither daemon (e.g. the runc floor). */
  single?: Cell;
  /** tainerd median / containerd median. */
  ratio?: number;
  note?: string;
}

/** Builds a row from samples (or reasons), computing the ratio when both are measured. */
export function row(
  r: Omit<Row, "containerd" | "tainerd" | "ratio" | "single"> & {
    containerd?: number[] | string;
    tainerd?: number[] | string;
    single?: number[] | string;
  },
): Row {
  const cell = (v: number[] | string | undefined): Cell | undefined =>
    v === undefined
      ? undefined
      : typeof v === "string"
      ? { na: v }
      : v.length === 0
      ? { na: "no samples" }
      : summarize(v);
  const out: Row = {
    figure: r.figure,
    metric: r.metric,
    unit: r.unit,
    better: r.better,
    containerd: cell(r.containerd),
    tainerd: cell(r.tainerd),
    single: cell(r.single),
    note: r.note,
  };
  if (measured(out.containerd) && measured(out.tainerd) && out.containerd.median > 0) {
    out.ratio = out.tainerd.median / out.containerd.median;
  }
  return out;
}
