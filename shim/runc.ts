/**
 * The runc command line as the shim drives it, as containerd's go-runc: global flags
 * `--root <root>/<namespace> --log <bundle>/log.json --log-format json [--systemd-cgroup]`, and
 * one method per sub-command. A failed command throws a {@linkcode RuncError} whose message is
 * runc's last error from the JSON log (written by this invocation only), as containerd reports
 * `OCI runtime create failed: …`.
 *
 * `create` and `exec` can hand runc pipes for the container's stdio: `attach` receives the
 * spawned runc child before it exits, so that its `stdin`/`stdout`/`stderr` streams, which the
 * container process inherits, can be wired to the task's FIFOs.
 *
 * @module
 */

import { type ErrorKind, TainerdError } from "../plugins/errdefs.ts";

/** How to run runc. */
export interface RuncConfig {
  /** The runc binary name or path (`Options.binary_name`); default `runc`. */
  command?: string;
  /** runc's `--root`: the state directory, including the namespace. */
  root: string;
  /** runc's `--log` (JSON format): `<bundle>/log.json`. */
  log: string;
  /** Pass `--systemd-cgroup`. */
  systemdCgroup?: boolean;
}

/** Which of the container's stdio streams runc gets as pipes (the rest are `/dev/null`). */
export interface RuncStdio {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

/** Options of {@linkcode Runc.create}. */
export interface CreateOptions {
  /** `--pid-file`. */
  pidFile: string;
  /** `--console-socket`, for a terminal. */
  consoleSocket?: string;
  /** `--no-pivot`. */
  noPivot?: boolean;
  /** `--no-new-keyring`. */
  noNewKeyring?: boolean;
  /** Pipes for the container's stdio; all `/dev/null` when absent. */
  stdio?: RuncStdio;
  /** Receives the runc child right after it was spawned, to wire up its piped stdio. */
  attach?: (child: Deno.ChildProcess) => void;
}

/** Options of {@linkcode Runc.exec}. */
export interface ExecOptions {
  /** `--pid-file`. */
  pidFile: string;
  /** `--console-socket`, for a terminal. */
  consoleSocket?: string;
  /** Pipes for the process's stdio; all `/dev/null` when absent. */
  stdio?: RuncStdio;
  /** Receives the runc child right after it was spawned, to wire up its piped stdio. */
  attach?: (child: Deno.ChildProcess) => void;
}

/** A failed runc command. `runcMessage` is runc's own error text. */
export class RuncError extends TainerdError {
  /** runc's error message (from its log, else its stderr, else the exit status). */
  readonly runcMessage: string;

  constructor(kind: ErrorKind, message: string, runcMessage: string) {
    super(kind, message);
    this.name = "RuncError";
    this.runcMessage = runcMessage;
  }
}

/** The error kind of a runc failure, from its message. */
function classify(message: string): ErrorKind {
  if (/container .*does not exist|container does not exist/i.test(message)) return "NotFound";
  if (/already exists|container with id exists/i.test(message)) return "AlreadyExists";
  return "Internal";
}

/** Reads the pid from a runc `--pid-file`. */
export async function readPidFile(path: string): Promise<number> {
  const text = (await Deno.readTextFile(path)).trim();
  const pid = Number(text);
  if (!Number.isInteger(pid) || pid <= 0) {
    throw new TainerdError("Internal", `The pid file "${path}" holds no pid: "${text}"`);
  }
  return pid;
}

const decoder = new TextDecoder();

/** A runc command line for one root. */
export class Runc {
  readonly command: string;
  readonly root: string;
  readonly log: string;
  readonly systemdCgroup: boolean;

  constructor(config: RuncConfig) {
    this.command = config.command || "runc";
    this.root = config.root;
    this.log = config.log;
    this.systemdCgroup = config.systemdCgroup ?? false;
  }

  /** The global flags followed by `args`. */
  args(args: readonly string[]): string[] {
    const global = ["--root", this.root, "--log", this.log, "--log-format", "json"];
    if (this.systemdCgroup) global.push("--systemd-cgroup");
    return [...global, ...args];
  }

  /** `runc create`: creates the container, leaving its init waiting for `start`. */
  async create(id: string, bundle: string, opts: CreateOptions): Promise<void> {
    const args = ["create", "--bundle", bundle, "--pid-file", opts.pidFile];
    if (opts.consoleSocket) args.push("--console-socket", opts.consoleSocket);
    if (opts.noPivot) args.push("--no-pivot");
    if (opts.noNewKeyring) args.push("--no-new-keyring");
    args.push(id);
    await this.#run("OCI runtime create failed", args, { stdio: opts.stdio, attach: opts.attach });
  }

  /** `runc start`: runs the user process of a created container. */
  async start(id: string): Promise<void> {
    await this.#run("OCI runtime start failed", ["start", id]);
  }

  /**
   * `runc exec --detach --process <specPath>`: starts an additional process in the container;
   * its pid is written to `pidFile`.
   */
  async exec(id: string, specPath: string, opts: ExecOptions): Promise<void> {
    const args = ["exec", "--detach", "--pid-file", opts.pidFile, "--process", specPath];
    if (opts.consoleSocket) args.push("--console-socket", opts.consoleSocket);
    args.push(id);
    await this.#run("OCI runtime exec failed", args, { stdio: opts.stdio, attach: opts.attach });
  }

  /** `runc delete [--force]`. */
  async delete(id: string, opts: { force?: boolean } = {}): Promise<void> {
    await this.#run("OCI runtime delete failed", [
      "delete",
      ...(opts.force ? ["--force"] : []),
      id,
    ]);
  }

  /** `runc kill [--all] <id> <signal>`. */
  async kill(id: string, signal: number, all = false): Promise<void> {
    const args = ["kill", ...(all ? ["--all"] : []), id, String(signal)];
    await this.#run("OCI runtime kill failed", args);
  }

  /** `runc pause`. */
  async pause(id: string): Promise<void> {
    await this.#run("OCI runtime pause failed", ["pause", id]);
  }

  /** `runc resume`. */
  async resume(id: string): Promise<void> {
    await this.#run("OCI runtime resume failed", ["resume", id]);
  }

  /** `runc ps --format json`: the host pids of the container's processes. */
  async ps(id: string): Promise<number[]> {
    const out = await this.#run("OCI runtime ps failed", ["ps", "--format", "json", id]);
    const pids: unknown = JSON.parse(out.trim() || "[]");
    if (pids === null) return [];
    if (!Array.isArray(pids) || !pids.every((p) => Number.isInteger(p))) {
      throw new TainerdError("Internal", `runc ps printed no list of pids: ${out.slice(0, 200)}`);
    }
    return pids as number[];
  }

  /** `runc update --resources -`, with the OCI `LinuxResources` JSON on stdin. */
  async update(id: string, resources: Uint8Array): Promise<void> {
    await this.#run("OCI runtime update failed", ["update", "--resources", "-", id], {
      stdin: resources,
    });
  }

  /** `runc state`: the container's state document (`status`, `pid`, …). */
  async state(id: string): Promise<{ status: string; pid: number; [key: string]: unknown }> {
    const out = await this.#run("OCI runtime state failed", ["state", id]);
    return JSON.parse(out);
  }

  async #logSize(): Promise<number> {
    try {
      return (await Deno.stat(this.log)).size;
    } catch {
      return 0;
    }
  }

  /** The last `error` message runc logged after byte `offset` of its log. */
  async #lastLogError(offset: number): Promise<string> {
    let text: string;
    try {
      const bytes = await Deno.readFile(this.log);
      text = decoder.decode(bytes.subarray(Math.min(offset, bytes.length)));
    } catch {
      return "";
    }
    let message = "";
    for (const line of text.split("\n")) {
      if (line.trim() === "") continue;
      try {
        const entry = JSON.parse(line) as { level?: string; msg?: string };
        if (entry.level === "error" && typeof entry.msg === "string") message = entry.msg.trim();
      } catch {
        // not JSON: ignore
      }
    }
    return message;
  }

  async #run(
    what: string,
    args: string[],
    opts: { stdin?: Uint8Array; stdio?: RuncStdio; attach?: (c: Deno.ChildProcess) => void } = {},
  ): Promise<string> {
    const offset = await this.#logSize();
    const piped = opts.attach !== undefined;
    const stdio = opts.stdio ?? { stdin: false, stdout: false, stderr: false };
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(this.command, {
        args: this.args(args),
        stdin: piped ? (stdio.stdin ? "piped" : "null") : opts.stdin ? "piped" : "null",
        stdout: piped ? (stdio.stdout ? "piped" : "null") : "piped",
        stderr: piped ? (stdio.stderr ? "piped" : "null") : "piped",
      }).spawn();
    } catch (err) {
      const detail = err instanceof Error ? err.message : String(err);
      throw new RuncError(
        err instanceof Deno.errors.NotFound ? "FailedPrecondition" : "Internal",
        `${what}: cannot run "${this.command}": ${detail}`,
        detail,
      );
    }
    let stdout = "";
    let stderr = "";
    let code: number;
    if (piped) {
      opts.attach!(child);
      code = (await child.status).code;
    } else {
      if (opts.stdin) {
        const writer = child.stdin.getWriter();
        try {
          await writer.write(opts.stdin);
          await writer.close();
        } catch {
          // runc exited early; its status tells why
        }
      }
      const out = await child.output();
      stdout = decoder.decode(out.stdout);
      stderr = decoder.decode(out.stderr);
      code = out.code;
    }
    if (code === 0) return stdout;
    const message = await this.#lastLogError(offset) ||
      stderr.trim().split("\n").filter((l) => l.trim() !== "").at(-1)?.trim() ||
      `runc exited with status ${code}`;
    throw new RuncError(classify(message), `${what}: ${message}`, message);
  }
}
