// --wait: poll a backup, restore or drill until it ends. On a terminal the
// progress is a bar on stderr; otherwise (logs, CI) a line per change, so the
// output stays readable when it is not a screen.
import cliProgress from 'cli-progress';
import { ACTIVE_STATUSES, type Progress } from '../domain/types.ts';
import { bytes, type Out } from './format.ts';

export interface JobState {
  status: string | null;
  info?: string | null;
  progress?: Progress | null;
}

const RUNNING = new Set<string>(ACTIVE_STATUSES);

export function isRunning(status: string | null): boolean {
  return status !== null && RUNNING.has(status);
}

export interface WaitOptions<T> {
  /** e.g. "backup 65f0..." */
  label: string;
  first: T;
  poll: () => Promise<T>;
  state: (view: T) => JobState;
  /** the command that shows the job, suggested when the user stops waiting */
  followUp: string;
  tty: boolean;
  err: Out;
  intervalMs?: number;
}

interface Display {
  update(s: JobState): void;
  stop(): void;
}

function describe(s: JobState): string {
  const p = s.progress;
  if (!p) return s.status ?? 'unknown';
  const parts = [p.phase, p.resource].filter(Boolean).join(' ');
  return `${s.status}${parts ? ` (${parts})` : ''}, ${p.resources_done}/${p.resources_total} resources, ${bytes(p.bytes_done)}`;
}

function lineDisplay(label: string, err: Out): Display {
  let last = '';
  return {
    update(s) {
      // Bytes change on every poll; a line per change of step is enough for a log.
      const p = s.progress;
      const key = `${s.status}|${p?.phase ?? ''}|${p?.resource ?? ''}|${p?.resources_done ?? ''}`;
      if (key === last) return;
      last = key;
      err(`${label}: ${describe(s)}`);
    },
    stop() {},
  };
}

function barDisplay(label: string): Display {
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} |{bar}| {value}/{total} resources | {size} | {step}`,
      barsize: 24,
      hideCursor: true,
      clearOnComplete: false,
      fps: 8,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  let last: Progress | null = null;
  return {
    update(s) {
      // A finished job shows no progress any more: keep the last figures, and fill the bar on success.
      const p = s.progress ?? last;
      if (s.progress) last = s.progress;
      const total = Math.max(1, p?.resources_total ?? 1);
      const done = s.status === 'success' ? total : (p?.resources_done ?? 0);
      const payload = { size: bytes(p?.bytes_done ?? 0), step: [s.status, isRunning(s.status) ? p?.phase : null, isRunning(s.status) ? p?.resource : null].filter(Boolean).join(' ') };
      if (!started) {
        bar.start(total, done, payload);
        started = true;
        return;
      }
      bar.setTotal(total);
      bar.update(done, payload);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until the job is no longer scheduled, running or uploading; returns the last view. */
export async function waitFor<T>(o: WaitOptions<T>): Promise<T> {
  let view = o.first;
  if (!isRunning(o.state(view).status)) return view;
  const display = o.tty ? barDisplay(o.label) : lineDisplay(o.label, o.err);
  // Stopping the CLI does not stop the job on the server; say so rather than leave the user guessing.
  const onSigint = () => {
    display.stop();
    o.err(`\nstopped waiting; ${o.label} goes on on the server (follow it with: ${o.followUp})`);
    process.exit(130);
  };
  process.once('SIGINT', onSigint);
  try {
    for (;;) {
      const s = o.state(view);
      display.update(s);
      if (!isRunning(s.status)) break;
      await sleep(o.intervalMs ?? 500);
      view = await o.poll();
    }
  } finally {
    display.stop();
    process.removeListener('SIGINT', onSigint);
  }
  return view;
}
