/**
 * The results: machine facts, the JSON record and the Markdown table (which the README's
 * "Benchmarks" section shows between its markers).
 *
 * @module
 */

import { exec } from "./proc.ts";
import { type Cell, measured, type Row } from "./stats.ts";

/** Facts about the machine and the software measured. */
export interface Machine {
  date: string;
  nproc: number;
  cpu: string;
  memoryGiB: number;
  kernel: string;
  deno: string;
  containerd: string;
  runc: string;
  ctr: string;
  tainerd: string;
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
  try {
    const r = await exec(cmd, args);
    return (r.stdout.trim() || r.stderr.trim()).split("\n")[0];
  } catch {
    return "unknown";
  }
}

/** Collects the machine facts (`tainerd` is filled in from the daemon's Version). */
export async function machineFacts(): Promise<Machine> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  const memKiB = Number(meminfo.match(/^MemTotal:\s+(\d+)/m)?.[1] ?? 0);
  return {
    date: new Date().toISOString(),
    nproc: navigator.hardwareConcurrency,
    cpu: cpuinfo.match(/^model name\s*:\s*(.*)$/m)?.[1]?.trim() ?? "unknown",
    memoryGiB: Math.round(memKiB / 1024 / 1024 * 10) / 10,
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    containerd: (await firstLine("containerd", ["--version"])).split(" ")[2] ?? "unknown",
    runc: (await firstLine("runc", ["--version"])).replace(/^runc version /, ""),
    ctr: (await firstLine("ctr", ["--version"])).split(" ").slice(2).join(" "),
    tainerd: "unknown",
  };
}

function fmtNumber(v: number, unit: string): string {
  if (unit === "ms") return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  if (unit === "s") return v >= 10 ? v.toFixed(1) : v.toFixed(2);
  if (unit === "MiB") return v >= 100 ? v.toFixed(0) : v.toFixed(1);
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

function fmtCell(c: Cell | undefined, unit: string): string {
  if (c === undefined) return "";
  if (!measured(c)) {
    const na = c.na.length > 160 ? `${c.na.slice(0, 160)}…` : c.na;
    return `n/a (${na.replaceAll("|", "\\|")})`;
  }
  if (c.n === 1 || c.min === c.max) return fmtNumber(c.median, unit);
  return `${fmtNumber(c.median, unit)} (${fmtNumber(c.min, unit)}–${fmtNumber(c.max, unit)})`;
}

/** The full record written to `bench/results/<date>.json`. */
export interface Results {
  machine: Machine;
  options: Record<string, unknown>;
  /** Which tainerd plugins were ok, and the probes' outcomes. */
  availability: Record<string, string>;
  /** Daemons that died during the run (with their last log lines). */
  incidents: string[];
  rows: Row[];
  /** Seconds the whole run took. */
  elapsedS: number;
}

/** Renders the Markdown table with the machine facts. */
export function markdown(res: Results): string {
  const m = res.machine;
  const lines = [
    `Measured ${m.date.slice(0, 16).replace("T", " ")} UTC on ${m.nproc} CPUs (${m.cpu}), ` +
    `${m.memoryGiB} GiB RAM, Linux ${m.kernel}; deno ${m.deno}, containerd ${m.containerd}, ` +
    `runc ${m.runc}, ctr ${m.ctr}, tainerd ${m.tainerd}. ` +
    `Mode: ${res.options.quick ? "quick" : "full"}` +
    `${res.options.only ? `, figures ${(res.options.only as number[]).join(",")}` : ""}` +
    `${
      res.options.perContainerShims
        ? ", tainerd with one shim per container"
        : ", tainerd with its default shared shim"
    }${res.options.fromSource ? " from source" : " from its bundle"}; ` +
    `${res.elapsedS.toFixed(0)} s in all.`,
    "",
    "Each cell: median (min–max) of n runs, the two daemons interleaved; ratio = tainerd median " +
    "/ containerd median (↓: lower is better, ↑: higher is better). A shared, noisy 2-core VM: " +
    "read the ratios, not the absolute numbers.",
    "",
    "| # | metric | containerd | tainerd | tainerd/containerd | notes |",
    "|---|---|---|---|---|---|",
  ];
  for (const r of res.rows) {
    const arrow = r.better === "lower" ? "↓" : "↑";
    const metric = `${r.metric} [${r.unit} ${arrow}]`;
    let c = fmtCell(r.containerd, r.unit);
    let t = fmtCell(r.tainerd, r.unit);
    if (r.single) {
      c = fmtCell(r.single, r.unit);
      t = "(same)";
    }
    const n = [r.containerd, r.tainerd, r.single].filter(measured).map((s) => s.n);
    const notes = [n.length ? `n=${Math.max(...n)}` : "", r.note ?? ""].filter((s) => s).join("; ");
    const ratio = r.ratio === undefined ? "" : `${r.ratio.toFixed(2)}×`;
    lines.push(
      `| ${r.figure} | ${metric} | ${c} | ${t} | ${ratio} | ${notes.replaceAll("|", "\\|")} |`,
    );
  }
  const avail = Object.entries(res.availability);
  if (avail.length) {
    lines.push(
      "",
      "Prerequisites on tainerd at run time: " + avail.map(([k, v]) => `${k}: ${v}`).join("; ") +
        ".",
    );
  }
  for (const i of res.incidents) {
    lines.push("", `Incident: ${i.split("\n")[0]} (log tail in the JSON results).`);
  }
  return lines.join("\n") + "\n";
}

const BEGIN = "<!-- bench:begin -->";
const END = "<!-- bench:end -->";

/** Replaces the table between the README's bench markers; false when they are missing. */
export async function updateReadme(readme: string, table: string): Promise<boolean> {
  const text = await Deno.readTextFile(readme);
  const a = text.indexOf(BEGIN);
  const b = text.indexOf(END);
  if (a < 0 || b < a) return false;
  const next = `${text.slice(0, a + BEGIN.length)}\n\n${table}\n${text.slice(b)}`;
  if (next !== text) await Deno.writeTextFile(readme, next);
  return true;
}
