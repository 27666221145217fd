/**
 * Leveled logging, one line per event on stderr in logfmt (`time=… level=… msg="…" k=v`),
 * the form containerd writes and journald keeps whole.
 *
 * @module
 */

/** Log levels, most verbose first. */
export const LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "panic"] as const;

/** A log level name. */
export type LogLevel = typeof LEVELS[number];

/** Fields attached to a log line. */
export type LogFields = Record<string, string | number | boolean | undefined>;

/** Whether `s` names a log level. */
export function isLogLevel(s: string): s is LogLevel {
  return (LEVELS as readonly string[]).includes(s);
}

function quote(v: string): string {
  return /^[A-Za-z0-9_./:@+-]+$/.test(v) ? v : JSON.stringify(v);
}

/** Where log lines go; replaced in tests. */
export type LogSink = (line: string) => void;

const encoder = new TextEncoder();
const stderrSink: LogSink = (line) => {
  try {
    Deno.stderr.writeSync(encoder.encode(line + "\n"));
  } catch {
    // stderr closed: nothing sensible left to do with the line.
  }
};

/** A leveled logger with fixed fields. */
export class Logger {
  readonly #level: number;
  readonly #fields: LogFields;
  readonly #sink: LogSink;

  constructor(level: LogLevel = "info", fields: LogFields = {}, sink: LogSink = stderrSink) {
    this.#level = LEVELS.indexOf(level);
    this.#fields = fields;
    this.#sink = sink;
  }

  /** A logger with more fields. */
  child(fields: LogFields): Logger {
    return new Logger(LEVELS[this.#level], { ...this.#fields, ...fields }, this.#sink);
  }

  /** Whether lines at `level` are written. */
  enabled(level: LogLevel): boolean {
    return LEVELS.indexOf(level) >= this.#level;
  }

  /** Writes one line at `level`. */
  log(level: LogLevel, msg: string, fields: LogFields = {}): void {
    if (!this.enabled(level)) return;
    let line = `time=${new Date().toISOString()} level=${level} msg=${JSON.stringify(msg)}`;
    for (const [k, v] of Object.entries({ ...this.#fields, ...fields })) {
      if (v !== undefined) line += ` ${k}=${quote(String(v))}`;
    }
    this.#sink(line);
  }

  /** Writes at trace level. */
  trace(msg: string, fields?: LogFields): void {
    this.log("trace", msg, fields);
  }
  /** Writes at debug level. */
  debug(msg: string, fields?: LogFields): void {
    this.log("debug", msg, fields);
  }
  /** Writes at info level. */
  info(msg: string, fields?: LogFields): void {
    this.log("info", msg, fields);
  }
  /** Writes at warn level. */
  warn(msg: string, fields?: LogFields): void {
    this.log("warn", msg, fields);
  }
  /** Writes at error level. */
  error(msg: string, fields?: LogFields): void {
    this.log("error", msg, fields);
  }
}
