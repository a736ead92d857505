// Summarizes V8 CPU profiles (node --cpu-prof) of the server's threads over
// time windows (one per operation): how busy the event loop, or the worker
// threads together, were, and which functions took the time. Sample timestamps and the bench's
// process.hrtime are the same monotonic clock, so windows line up.
import { readFile } from 'node:fs/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface WindowSummary {
  label: string;
  wallMs: number;
  /** share of the window the main thread ran JavaScript or native code (not idle) */
  busyShare: number;
  gcShare: number;
  top: { fn: string; ms: number; share: number }[];
  /** self time grouped by where the code lives */
  byArea: { area: string; ms: number; share: number }[];
}

function where(url: string): string {
  if (!url) return '';
  const m = /\/work\/main\/(.*)$/.exec(url) ?? /(node_modules\/.*)$/.exec(url);
  return (m ? m[1]! : url.replace(/^file:\/\//, '')).replace(/^node_modules\//, '');
}

function area(node: ProfileNode): string {
  const { functionName, url } = node.callFrame;
  if (functionName === '(idle)') return 'idle';
  if (functionName === '(garbage collector)') return 'garbage collector';
  if (functionName === '(program)') return '(program: native, outside JS)';
  if (!url) return `native: ${functionName || '(anonymous)'}`;
  const w = where(url);
  if (w.startsWith('src/')) return w.split('/').slice(0, 3).join('/');
  if (w.startsWith('node:')) return w;
  return w.split('/')[0]!.startsWith('@') ? w.split('/').slice(0, 2).join('/') : w.split('/')[0]!;
}

/** Self time (µs) per profile node inside one window of one thread's profile. */
function selfTimes(prof: CpuProfile, times: number[], w: { startUs: number; endUs: number }): { self: Map<number, number>; total: number } {
  const self = new Map<number, number>();
  let total = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const at = times[i]!;
    if (at < w.startUs || at > w.endUs) continue;
    // a sample stands for the time until the next one
    const dt = (i + 1 < times.length ? times[i + 1]! : prof.endTime) - at;
    self.set(prof.samples[i]!, (self.get(prof.samples[i]!) ?? 0) + dt);
    total += dt;
  }
  return { self, total };
}

/**
 * Summarizes one or more threads' profiles over the same windows. With one
 * profile (the main thread) busyShare is the share of wall time the thread
 * was not idle; with several (worker threads) the threads' busy times add up,
 * so busyShare is busy thread-time over wall time and can exceed 1.
 */
export async function summarize(paths: string | string[], windows: { label: string; startUs: number; endUs: number }[], topN = 10): Promise<WindowSummary[]> {
  const profs: { prof: CpuProfile; byId: Map<number, ProfileNode>; times: number[] }[] = [];
  for (const path of Array.isArray(paths) ? paths : [paths]) {
    const prof = JSON.parse(await readFile(path, 'utf8')) as CpuProfile;
    // absolute timestamp of each sample
    const times: number[] = new Array(prof.samples.length);
    let t = prof.startTime;
    for (let i = 0; i < prof.samples.length; i++) {
      t += prof.timeDeltas[i]!;
      times[i] = t;
    }
    profs.push({ prof, byId: new Map(prof.nodes.map((n) => [n.id, n])), times });
  }
  return windows.map((w) => {
    const wallUs = Math.max(1, w.endUs - w.startUs);
    let busy = 0;
    let gc = 0;
    const fns = new Map<string, number>();
    const areas = new Map<string, number>();
    for (const { prof, byId, times } of profs) {
      const { self, total } = selfTimes(prof, times, w);
      let idle = 0;
      for (const [id, us] of self) {
        const n = byId.get(id)!;
        const a = area(n);
        if (a === 'idle') {
          idle += us;
          continue;
        }
        if (a === 'garbage collector') gc += us;
        const name = `${n.callFrame.functionName || '(anonymous)'}${n.callFrame.url ? ` ${where(n.callFrame.url)}:${n.callFrame.lineNumber + 1}` : ''}`;
        fns.set(name, (fns.get(name) ?? 0) + us);
        areas.set(a, (areas.get(a) ?? 0) + us);
      }
      // Time not covered by samples (the profiler pauses during some native work) counts as busy: it was not idle.
      if (total > 0) busy += Math.max(0, Math.min(wallUs, total) - idle);
    }
    const sorted = (m: Map<string, number>) =>
      [...m.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, topN)
        .map(([k, us]) => ({ k, ms: us / 1000, share: us / wallUs }));
    return {
      label: w.label,
      wallMs: wallUs / 1000,
      busyShare: busy / wallUs,
      gcShare: gc / wallUs,
      top: sorted(fns).map(({ k, ms, share }) => ({ fn: k, ms, share })),
      byArea: sorted(areas).map(({ k, ms, share }) => ({ area: k, ms, share })),
    };
  });
}
