/**
 * The daemon's own metrics and the Prometheus text format (0.0.4) they are written in: a
 * process-wide registry the API server's edge interceptor records every call into, as
 * go-grpc-prometheus does for containerd (`grpc_server_handled_total`,
 * `grpc_server_handling_seconds`). Recording is a map lookup and a few additions.
 *
 * @module
 */

/** One metric family in the text format. */
export interface Family {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  samples: { suffix?: string; labels: Record<string, string>; value: number }[];
}

function escapeLabel(v: string): string {
  return v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** Writes families in the Prometheus text exposition format. */
export function writeText(families: readonly Family[]): string {
  const out: string[] = [];
  for (const f of families) {
    if (f.samples.length === 0) continue;
    out.push(`# HELP ${f.name} ${f.help.replaceAll("\\", "\\\\").replaceAll("\n", "\\n")}`);
    out.push(`# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
      const l = labels.length > 0 ? `{${labels.join(",")}}` : "";
      out.push(`${f.name}${s.suffix ?? ""}${l} ${formatValue(s.value)}`);
    }
  }
  return out.join("\n") + "\n";
}

/** go-grpc-prometheus's default buckets, in seconds. */
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

interface CallStats {
  service: string;
  method: string;
  type: string;
  /** Handled calls by code. */
  codes: Map<string, number>;
  /** Cumulative-free bucket counts (one per bound, then +Inf). */
  buckets: number[];
  sum: number;
  count: number;
}

const calls = new Map<string, CallStats>();
let gcRuns = 0;
const GRPC_TYPES: Record<string, string> = {
  unary: "unary",
  server_streaming: "server_stream",
  client_streaming: "client_stream",
  bidi_streaming: "bidi_stream",
};

/**
 * Records one API call: `code` is "ok" or a Connect code name ("NotFound"…), `kind` the
 * method kind (`unary`, `server_streaming`…), `ms` its duration.
 */
export function recordApiCall(
  service: string,
  method: string,
  kind: string,
  code: string,
  ms: number,
): void {
  const key = `${service}/${method}`;
  let s = calls.get(key);
  if (!s) {
    s = {
      service,
      method,
      type: GRPC_TYPES[kind] ?? kind,
      codes: new Map(),
      buckets: new Array(BUCKETS.length + 1).fill(0),
      sum: 0,
      count: 0,
    };
    calls.set(key, s);
  }
  const c = code === "ok" ? "OK" : code;
  s.codes.set(c, (s.codes.get(c) ?? 0) + 1);
  const secs = ms / 1000;
  let i = 0;
  while (i < BUCKETS.length && secs > BUCKETS[i]) i++;
  s.buckets[i]++;
  s.sum += secs;
  s.count++;
}

/** Counts one garbage collection. */
export function recordGcRun(): void {
  gcRuns++;
}

/** The API call and GC families. */
export function daemonFamilies(): Family[] {
  const handled: Family = {
    name: "grpc_server_handled_total",
    help: "Total number of RPCs completed on the server, regardless of success or failure.",
    type: "counter",
    samples: [],
  };
  const latency: Family = {
    name: "grpc_server_handling_seconds",
    help: "Histogram of response latency (seconds) of gRPC that had been application-level " +
      "handled by the server.",
    type: "histogram",
    samples: [],
  };
  for (const s of calls.values()) {
    const base = { grpc_method: s.method, grpc_service: s.service, grpc_type: s.type };
    for (const [code, n] of s.codes) {
      handled.samples.push({ labels: { grpc_code: code, ...base }, value: n });
    }
    let cum = 0;
    for (let i = 0; i <= BUCKETS.length; i++) {
      cum += s.buckets[i];
      const le = i < BUCKETS.length ? String(BUCKETS[i]) : "+Inf";
      latency.samples.push({ suffix: "_bucket", labels: { ...base, le }, value: cum });
    }
    latency.samples.push({ suffix: "_sum", labels: base, value: s.sum });
    latency.samples.push({ suffix: "_count", labels: base, value: s.count });
  }
  return [handled, latency, {
    name: "tainerd_gc_runs_total",
    help: "Garbage collections run by the metadata collector.",
    type: "counter",
    samples: [{ labels: {}, value: gcRuns }],
  }];
}
