/**
 * OOM notifications of containers' cgroups, as containerd's runc shim's `oom/v1` epoller:
 * on cgroup v1, an eventfd registered on the memory cgroup's `memory.oom_control` through
 * `cgroup.event_control` fires when the cgroup hits its limit (and when the cgroup is
 * removed); each firing of a live cgroup calls `onOom(id)` (the shim publishes `/tasks/oom`).
 * On cgroup v2 nothing is watched (memory.events would need inotify).
 *
 * @module
 */

import {
  close,
  eventfd,
  isErrno,
  O_CLOEXEC,
  O_RDONLY,
  O_WRONLY,
  open,
  pollAsync,
  POLLIN,
  read,
  write,
} from "../sys/libc.ts";
import type { Cgroup } from "./cgroups.ts";

interface Watch {
  id: string;
  /** The memory cgroup's directory. */
  dir: string;
  /** The eventfd the kernel signals. */
  efd: number;
  /** `memory.oom_control`, open while registered. */
  ofd: number;
}

const encoder = new TextEncoder();

/** Watches containers' memory cgroups for OOM events. */
export class OomWatcher {
  readonly #onOom: (id: string) => void;
  readonly #onError: (id: string, err: unknown) => void;
  readonly #watches = new Map<string, Watch>();
  /** Wakes the poll to pick up added and removed watches. */
  readonly #wake = eventfd();
  /** Watches removed while a poll may hold their fds: closed once it returned. */
  #retired: Watch[] = [];
  #loop?: Promise<void>;
  #closed = false;

  constructor(
    onOom: (id: string) => void,
    onError: (id: string, err: unknown) => void = () => {},
  ) {
    this.#onOom = onOom;
    this.#onError = onError;
  }

  /** Watches `cgroup` for container `id`; false when it cannot (cgroup v2, no memory cgroup). */
  add(id: string, cgroup: Cgroup): boolean {
    if (this.#closed || cgroup.version !== 1 || this.#watches.has(id)) return false;
    const dir = cgroup.paths.get("memory");
    if (!dir) return false;
    const efd = eventfd();
    let ofd = -1;
    try {
      ofd = open(`${dir}/memory.oom_control`, O_RDONLY | O_CLOEXEC);
      const control = open(`${dir}/cgroup.event_control`, O_WRONLY | O_CLOEXEC);
      try {
        write(control, encoder.encode(`${efd} ${ofd}`));
      } finally {
        close(control);
      }
    } catch (err) {
      close(efd);
      if (ofd >= 0) close(ofd);
      this.#onError(id, err);
      return false;
    }
    this.#watches.set(id, { id, dir, efd, ofd });
    this.#poke();
    this.#loop ??= this.#run();
    return true;
  }

  /** Stops watching container `id`. */
  remove(id: string): void {
    const w = this.#watches.get(id);
    if (!w) return;
    this.#watches.delete(id);
    this.#retired.push(w);
    this.#poke();
  }

  /** Stops watching everything and waits for the poll loop to end. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const id of [...this.#watches.keys()]) this.remove(id);
    this.#poke();
    await this.#loop;
    this.#closeRetired();
    close(this.#wake);
  }

  #poke(): void {
    const one = new Uint8Array(8);
    new DataView(one.buffer).setBigUint64(0, 1n, true);
    try {
      write(this.#wake, one);
    } catch { /* counter full: a wake is pending anyway */ }
  }

  #closeRetired(): void {
    for (const w of this.#retired) {
      for (const fd of [w.efd, w.ofd]) {
        try {
          close(fd);
        } catch { /* closed */ }
      }
    }
    this.#retired = [];
  }

  async #run(): Promise<void> {
    const buf = new Uint8Array(8);
    // Ends when nothing is watched (a pending poll would hold a thread and the event loop).
    while (!this.#closed && this.#watches.size > 0) {
      const watches = [...this.#watches.values()];
      const revents = await pollAsync([
        { fd: this.#wake, events: POLLIN },
        ...watches.map((w) => ({ fd: w.efd, events: POLLIN })),
      ]);
      this.#closeRetired();
      if (revents[0] & POLLIN) drain(this.#wake, buf);
      watches.forEach((w, i) => {
        if (!(revents[i + 1] & POLLIN) || this.#watches.get(w.id) !== w) return;
        drain(w.efd, buf);
        // The eventfd fires too when the cgroup is removed: then the watch ends.
        let alive = true;
        try {
          Deno.statSync(`${w.dir}/memory.oom_control`);
        } catch {
          alive = false;
        }
        if (alive) this.#onOom(w.id);
        else this.remove(w.id);
      });
    }
    this.#closeRetired();
    this.#loop = undefined;
  }
}

function drain(fd: number, buf: Uint8Array<ArrayBuffer>): void {
  try {
    read(fd, buf);
  } catch (err) {
    if (!isErrno(err, "EAGAIN")) throw err;
  }
}
