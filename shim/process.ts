/**
 * A container's processes and their life cycles, as containerd's `pkg/process`: the init
 * process (`runc create/start/delete/kill/pause/resume/update`) and exec'd processes
 * (`runc exec --detach`, signalled directly), each with the state machine containerd's runc
 * shim uses (`created → running ⇄ paused → stopped → deleted`; an exec has no paused state of
 * its own but reports its container's).
 *
 * @module
 */

import { failedPrecondition, notFound, TainerdError } from "../plugins/errdefs.ts";
import type { Logger } from "../log.ts";
import { unmountAll } from "../sys/mount.ts";
import { isErrno, kill as killPid, SIGNALS } from "../sys/libc.ts";
import { listenConsoleSocket } from "../sys/console_socket.ts";
import { type Exit, type Reaper, UNKNOWN_EXIT_STATUS } from "./reaper.ts";
import { ProcessIO, type Stdio } from "./io.ts";
import { readPidFile, type Runc, RuncError } from "./runc.ts";

/** A process state as containerd's shim reports it. */
export type ProcessState = "created" | "running" | "pausing" | "paused" | "stopped" | "deleted";

/** How long to wait for runc to hand over the console. */
const CONSOLE_TIMEOUT_MS = 30_000;
/** How long `Delete` waits for the output copy to finish (containerd: 2 s). */
const DRAIN_TIMEOUT_MS = 2_000;

/** What a process reports when it exits: called once per process. */
export type ExitHandler = (process: Process, exit: Exit) => void | Promise<void>;

/** The error of `runc kill` (or kill(2)) as containerd's `checkKillError`. */
function killError(err: unknown): unknown {
  const message = err instanceof RuncError
    ? err.runcMessage
    : err instanceof Error
    ? err.message
    : String(err);
  if (
    /container not running|no such process|process already finished/i.test(message) ||
    isErrno(err, "ESRCH")
  ) {
    return notFound("Cannot signal the process: process already finished");
  }
  if (/does not exist/i.test(message)) {
    return notFound("Cannot signal the process: no such container");
  }
  return err;
}

/** Runs runc with a console socket; resolves with the pty master runc sent. */
async function withConsole(run: (socketPath: string) => Promise<void>): Promise<number> {
  const dir = await Deno.makeTempDir({ prefix: "pty" });
  const socket = listenConsoleSocket(`${dir}/pty.sock`);
  try {
    const accepting = socket.accept();
    accepting.catch(() => {});
    await run(socket.path);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        accepting,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new TainerdError("DeadlineExceeded", "runc did not send the console's pty master"),
              ),
            CONSOLE_TIMEOUT_MS,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  } finally {
    await socket.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** What both kinds of process share: identity, stdio, exit status and waiters. */
export abstract class Process {
  /** The exec id, or the container id for the init process. */
  readonly id: string;
  /** The stdio the client asked for. */
  readonly stdio: Stdio;
  /** The host pid, 0 until the process exists. */
  pid = 0;
  /** The exit, once observed. */
  exit: Exit | null = null;
  protected io: ProcessIO | null = null;
  protected readonly log: Logger;
  readonly #exited: Promise<Exit>;
  #resolveExited!: (exit: Exit) => void;

  constructor(id: string, stdio: Stdio, log: Logger) {
    this.id = id;
    this.stdio = stdio;
    this.log = log;
    this.#exited = new Promise((resolve) => this.#resolveExited = resolve);
  }

  /** The exit status (0 until exited). */
  get exitStatus(): number {
    return this.exit?.status ?? 0;
  }

  /** Resolves when the process has exited (or failed to start). */
  wait(): Promise<Exit> {
    return this.#exited;
  }

  /** The current state. */
  abstract state(): ProcessState;

  /** Records the exit; false when it was already recorded (an exit is reported once). */
  setExited(exit: Exit): boolean {
    if (this.exit !== null) return false;
    this.exit = exit;
    this.onExited();
    this.#resolveExited(exit);
    return true;
  }

  protected abstract onExited(): void;

  /** `CloseIO`: closes the process's stdin once the client has closed its end. */
  closeStdin(): void {
    this.io?.closeStdin();
  }

  /** `ResizePty`; a no-op without a terminal. */
  resize(width: number, height: number): void {
    if (this.state() === "stopped" || this.state() === "deleted") {
      throw failedPrecondition(`Cannot resize the terminal of process "${this.id}": it has exited`);
    }
    this.io?.resize(width, height);
  }

  /** Starts the process. */
  abstract start(): Promise<void>;
  /** Signals the process. */
  abstract kill(signal: number, all: boolean): Promise<void>;
  /** Releases the process (and, for init, the container). */
  abstract delete(): Promise<void>;

  /** Opens the stdio, runs runc with pipes or a console, and attaches the copies. */
  protected async runWithIO(
    run: (opts: {
      consoleSocket?: string;
      stdio?: ReturnType<ProcessIO["runcStdio"]>;
      attach?: (child: Deno.ChildProcess) => void;
    }) => Promise<void>,
  ): Promise<void> {
    const io = await ProcessIO.open(this.stdio, this.log);
    try {
      if (this.stdio.terminal) {
        const master = await withConsole((consoleSocket) => run({ consoleSocket }));
        io.attachConsole(master);
      } else {
        await run({ stdio: io.runcStdio(), attach: (child) => io.attachPipes(child) });
      }
    } catch (err) {
      await io.close();
      throw err;
    }
    this.io = io;
  }
}

/** Options of an init process. */
export interface InitOptions {
  id: string;
  bundle: string;
  /** `<bundle>/rootfs` when the shim mounted the rootfs, else empty. */
  rootfs: string;
  stdio: Stdio;
  runc: Runc;
  reaper: Reaper;
  log: Logger;
  noPivotRoot: boolean;
  noNewKeyring: boolean;
  onExit: ExitHandler;
}

/** A container's init process. */
export class InitProcess extends Process {
  readonly bundle: string;
  readonly rootfs: string;
  readonly runc: Runc;
  readonly #reaper: Reaper;
  readonly #opts: InitOptions;
  #state: Exclude<ProcessState, "pausing"> = "created";
  #pausing = false;

  constructor(opts: InitOptions) {
    super(opts.id, opts.stdio, opts.log);
    this.bundle = opts.bundle;
    this.rootfs = opts.rootfs;
    this.runc = opts.runc;
    this.#reaper = opts.reaper;
    this.#opts = opts;
  }

  /** The pid file runc writes: `<bundle>/init.pid`. */
  get pidFile(): string {
    return `${this.bundle}/init.pid`;
  }

  state(): ProcessState {
    return this.#pausing ? "pausing" : this.#state;
  }

  /** `runc create`, with stdio; then watches the init pid. */
  async create(): Promise<void> {
    const release = this.#reaper.hold();
    try {
      await this.runWithIO((io) =>
        this.runc.create(this.id, this.bundle, {
          pidFile: this.pidFile,
          noPivot: this.#opts.noPivotRoot,
          noNewKeyring: this.#opts.noNewKeyring,
          ...io,
        })
      );
      this.pid = await readPidFile(this.pidFile);
      this.#reaper.watch(this.pid).then(
        (exit) => this.#opts.onExit(this, exit),
        (err) => this.log.error("cannot wait for the init process", { error: `${err}` }),
      );
    } finally {
      release();
    }
  }

  async start(): Promise<void> {
    switch (this.state()) {
      case "created":
        break;
      case "running":
      case "pausing":
        throw failedPrecondition("Cannot start a running process");
      case "paused":
        throw failedPrecondition("Cannot start a paused process");
      default:
        throw failedPrecondition(`Cannot start a ${this.state()} process`);
    }
    await this.#reaper.holding(() => this.runc.start(this.id));
    if (this.#state === "created") this.#state = "running";
  }

  protected onExited(): void {
    const wasPaused = this.#state === "paused";
    if (this.#state !== "deleted") this.#state = "stopped";
    if (wasPaused) {
      // a frozen cgroup would keep the container's other processes stuck
      this.runc.resume(this.id).catch((err) =>
        this.log.warn("cannot resume the exited container", { error: `${err}` })
      );
    }
  }

  async kill(signal: number, all: boolean): Promise<void> {
    if (this.#state === "deleted") throw notFound("Cannot signal the process: it was deleted");
    try {
      await this.#reaper.holding(() => this.runc.kill(this.id, signal, all));
    } catch (err) {
      throw killError(err);
    }
  }

  /** `runc kill --all <id> SIGKILL`, when the init exited without its own pid namespace. */
  async killAll(): Promise<void> {
    await this.#reaper.holding(() => this.runc.kill(this.id, SIGNALS.SIGKILL, true));
  }

  async pause(): Promise<void> {
    switch (this.state()) {
      case "running":
        break;
      case "created":
        throw failedPrecondition("Cannot pause a task in created state");
      case "paused":
      case "pausing":
        throw failedPrecondition("Cannot pause a paused container");
      default:
        throw failedPrecondition(`Cannot pause a ${this.state()} container`);
    }
    this.#pausing = true;
    try {
      await this.#reaper.holding(() => this.runc.pause(this.id));
      if (this.#state === "running") this.#state = "paused";
    } finally {
      this.#pausing = false;
    }
  }

  async resume(): Promise<void> {
    if (this.state() !== "paused") {
      throw failedPrecondition(`Cannot resume a ${this.state()} container`);
    }
    await this.#reaper.holding(() => this.runc.resume(this.id));
    if (this.#state === "paused") this.#state = "running";
  }

  /** `runc update` with an OCI `LinuxResources` JSON document. */
  async update(resources: Uint8Array): Promise<void> {
    if (this.#state === "stopped" || this.#state === "deleted") {
      throw failedPrecondition(`Cannot update a ${this.#state} container`);
    }
    await this.#reaper.holding(() => this.runc.update(this.id, resources));
  }

  /** `runc ps`: the host pids of the container's processes. */
  pids(): Promise<number[]> {
    return this.#reaper.holding(() => this.runc.ps(this.id));
  }

  /**
   * Deletes the container: waits briefly for the output to be copied, `runc delete`, closes
   * the stdio and unmounts the rootfs. Only a created or stopped container can be deleted.
   */
  async delete(): Promise<void> {
    const state = this.state();
    if (state === "running" || state === "pausing" || state === "paused") {
      throw failedPrecondition(`Cannot delete a ${state === "pausing" ? "paused" : state} process`);
    }
    if (state === "deleted") throw notFound(`The task "${this.id}" was already deleted`);
    await this.io?.drain(DRAIN_TIMEOUT_MS);
    let error: unknown = null;
    try {
      await this.#reaper.holding(() => this.runc.delete(this.id));
    } catch (err) {
      if (!(err instanceof RuncError && /does not exist/i.test(err.runcMessage))) error = err;
    }
    await this.io?.close();
    try {
      await this.#reaper.holding(() => unmountAll(this.rootfs));
    } catch (err) {
      this.log.warn("cannot unmount the rootfs", { rootfs: this.rootfs, error: `${err}` });
      error ??= new TainerdError(
        "Internal",
        `Cannot unmount the rootfs "${this.rootfs}": ${err instanceof Error ? err.message : err}`,
      );
    }
    if (error !== null) throw error;
    this.#state = "deleted";
  }

  /** Forcibly cleans up after a failed create: `runc delete --force`, stdio, rootfs. */
  async abandon(): Promise<void> {
    await this.#reaper.holding(() => this.runc.delete(this.id, { force: true })).catch(() => {});
    await this.io?.close();
    this.#state = "deleted";
  }
}

/** Options of an exec'd process. */
export interface ExecOptions {
  id: string;
  parent: InitProcess;
  /** The OCI process spec (JSON object); `terminal` is set from the request. */
  spec: Record<string, unknown>;
  stdio: Stdio;
  reaper: Reaper;
  log: Logger;
  onExit: ExitHandler;
}

/** A process exec'd into a running container. */
export class ExecProcess extends Process {
  readonly parent: InitProcess;
  readonly spec: Record<string, unknown>;
  readonly #reaper: Reaper;
  readonly #onExit: ExitHandler;
  #state: "created" | "running" | "stopped" | "deleted" = "created";

  constructor(opts: ExecOptions) {
    super(opts.id, opts.stdio, opts.log);
    this.parent = opts.parent;
    this.spec = { ...opts.spec, terminal: opts.stdio.terminal };
    this.#reaper = opts.reaper;
    this.#onExit = opts.onExit;
  }

  /** The pid file runc writes: `<bundle>/<exec id>.pid`. */
  get pidFile(): string {
    return `${this.parent.bundle}/${this.id}.pid`;
  }

  state(): ProcessState {
    const parent = this.parent.state();
    if (parent === "paused" || parent === "pausing") return parent;
    return this.#state;
  }

  /** `runc exec --detach` with the stored spec; then watches the exec pid. */
  async start(): Promise<void> {
    if (this.#state !== "created") {
      throw failedPrecondition(`Cannot start a ${this.#state} process`);
    }
    const parentState = this.parent.state();
    if (parentState !== "running" && parentState !== "created") {
      throw failedPrecondition(`Cannot exec in a ${parentState} container`);
    }
    const release = this.#reaper.hold();
    const specFile = await Deno.makeTempFile({ prefix: "runc-process", suffix: ".json" });
    try {
      await Deno.writeTextFile(specFile, JSON.stringify(this.spec));
      try {
        await this.runWithIO((io) =>
          this.parent.runc.exec(this.parent.id, specFile, { pidFile: this.pidFile, ...io })
        );
      } catch (err) {
        // as containerd: Wait returns once the start failed
        this.#state = "stopped";
        this.setExited({ pid: 0, status: UNKNOWN_EXIT_STATUS, exitedAt: new Date() });
        throw err;
      }
      this.pid = await readPidFile(this.pidFile);
      this.#state = "running";
      this.#reaper.watch(this.pid).then(
        (exit) => this.#onExit(this, exit),
        (err) => this.log.error("cannot wait for an exec'd process", { error: `${err}` }),
      );
    } finally {
      release();
      await Deno.remove(specFile).catch(() => {});
    }
  }

  protected onExited(): void {
    if (this.#state !== "deleted") this.#state = "stopped";
  }

  kill(signal: number): Promise<void> {
    if (this.pid === 0) {
      return Promise.reject(
        failedPrecondition(`Cannot signal process "${this.id}": it was not started`),
      );
    }
    if (this.exit !== null) {
      return Promise.reject(
        notFound(`Cannot signal process "${this.id}": process already finished`),
      );
    }
    try {
      killPid(this.pid, signal);
    } catch (err) {
      return Promise.reject(killError(err));
    }
    return Promise.resolve();
  }

  /** Forgets the process: a created or stopped exec only. */
  async delete(): Promise<void> {
    if (this.#state === "running") {
      throw failedPrecondition(`Cannot delete a running process`);
    }
    await this.io?.drain(DRAIN_TIMEOUT_MS);
    await this.io?.close();
    await Deno.remove(this.pidFile).catch(() => {});
    this.#state = "deleted";
  }
}
