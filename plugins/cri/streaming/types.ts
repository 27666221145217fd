/**
 * The contract between the CRI streaming server and the runtime that executes the requests.
 * Re-exported by `server.ts`.
 *
 * @module
 */

/** The standard streams of an exec or attach session, as the client requested them. */
export interface StreamIO {
  /** The client's stdin; ends when the client closes it. Null when not requested. */
  stdin: ReadableStream<Uint8Array> | null;
  /** Goes to the client's stdout (the terminal when `tty`). Null when not requested. */
  stdout: WritableStream<Uint8Array> | null;
  /** Goes to the client's stderr. Always null when `tty`. */
  stderr: WritableStream<Uint8Array> | null;
  /** True when the client asked for a terminal. */
  tty: boolean;
  /** Terminal size changes from the client (only with `tty` on protocols that carry them). */
  resize: AsyncIterable<{ width: number; height: number }> | null;
  /**
   * Resolves when the client's connection is gone (it closed or reset it): nothing written
   * reaches it any more. An attach ends then; an exec's process runs on, as with kubelet.
   */
  clientGone?: Promise<void>;
}

/** What the streaming server needs from the container runtime. */
export interface StreamingRuntime {
  /**
   * Runs `cmd` in the container with the given streams and resolves with its exit code; a
   * non-zero code reaches the client as kubelet reports it (a `metav1.Status` with reason
   * `NonZeroExitCode`). A rejection reaches the client as an internal error.
   */
  exec(containerId: string, cmd: string[], io: StreamIO): Promise<{ exitCode: number }>;
  /** Attaches the streams to the container's main process; resolves when it detaches. */
  attach(containerId: string, io: StreamIO): Promise<void>;
  /**
   * Connects `conn` to `port` inside the pod sandbox's network namespace, copying both ways;
   * resolves when the forwarding is done. A rejection is reported on the request's error stream.
   */
  portForward(
    podSandboxId: string,
    port: number,
    conn: { readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> },
  ): Promise<void>;
}
