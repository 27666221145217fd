/**
 * A readers–writer lock for async sections of the metadata stores: ordinary operations share
 * it; the garbage collector's backend cleanup holds it alone, so nothing is recorded while the
 * cleanup decides what is unreferenced. Writers are not starved: a waiting writer blocks new
 * readers.
 *
 * @module
 */

/** The lock. */
export class RwLock {
  #readers = 0;
  #writer = false;
  readonly #waiting: { write: boolean; go: () => void }[] = [];

  async #acquire(write: boolean): Promise<void> {
    const free = write
      ? !this.#writer && this.#readers === 0 && this.#waiting.length === 0
      : !this.#writer && !this.#waiting.some((w) => w.write);
    if (!free) await new Promise<void>((go) => this.#waiting.push({ write, go }));
    else if (write) this.#writer = true;
    else this.#readers++;
  }

  #release(write: boolean): void {
    if (write) this.#writer = false;
    else this.#readers--;
    while (this.#waiting.length > 0 && !this.#writer) {
      const next = this.#waiting[0];
      if (next.write) {
        if (this.#readers > 0) break;
        this.#waiting.shift();
        this.#writer = true;
        next.go();
        break;
      }
      this.#waiting.shift();
      this.#readers++;
      next.go();
    }
  }

  /** Runs `fn` holding the lock shared. */
  async read<T>(fn: () => Promise<T>): Promise<T> {
    await this.#acquire(false);
    try {
      return await fn();
    } finally {
      this.#release(false);
    }
  }

  /** Runs `fn` holding the lock alone. */
  async write<T>(fn: () => Promise<T>): Promise<T> {
    await this.#acquire(true);
    try {
      return await fn();
    } finally {
      this.#release(true);
    }
  }
}
