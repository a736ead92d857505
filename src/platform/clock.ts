/** Time as the rest of the code sees it; tests pass a clock they drive. */
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };
