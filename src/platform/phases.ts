// Wall time of the named steps of one piece of work (a resource's restore:
// spool, load, count, swap), so a user and the bench can see where the time
// went from the product itself rather than from ad hoc timing.

/** Milliseconds per step, in the order the steps first ran; a step run twice adds up. */
export type Phases = Record<string, number>;

export class PhaseTimer {
  private readonly ms: Phases = {};
  private lapStart = performance.now();

  /** Adds the time since the last lap (or since the timer was made) to `name`: for steps that are stretches of one function. */
  lap(name: string): void {
    const now = performance.now();
    this.add(name, now - this.lapStart);
    this.lapStart = now;
  }

  /** Runs fn and adds its wall time (also when it fails) to `name`. */
  async time<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.add(name, performance.now() - t0);
    }
  }

  add(name: string, ms: number): void {
    this.ms[name] = (this.ms[name] ?? 0) + ms;
  }

  /** The steps so far, rounded to whole milliseconds. */
  result(): Phases {
    return Object.fromEntries(Object.entries(this.ms).map(([k, v]) => [k, Math.round(v)]));
  }
}
