// The worker pool: runs up to `concurrency` jobs at once in this process,
// renews their leases, aborts them on cancel, and hands every failure
// (thrown, cancelled, interrupted) to the job kind's handler so the subject
// row (backup, restore) never stays running.
import { randomBytes } from 'node:crypto';
import { settleAfterWork } from '../platform/gc.ts';
import { AppError, publicMessage } from '../errors/index.ts';
import type { JobKind } from '../catalog/schema.ts';
import type { Job, JobQueue } from './queue.ts';

export interface JobHandler {
  /** Does the work; throws on failure. Must stop promptly when signal aborts. */
  run(job: Job, signal: AbortSignal): Promise<void>;
  /** Records the failure on the job's subject (status error with status_info). Must not throw. */
  fail(job: Job, info: string, err?: unknown): Promise<void>;
}

export interface PoolLogger {
  error(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** Words for why a job was stopped from outside. */
function abortInfo(reason: unknown): string {
  if (reason instanceof AppError && reason.code === 'interrupted') return 'interrupted: the server stopped while this job was running; run it again';
  if (reason instanceof AppError && reason.code === 'job_timeout') return reason.message;
  return 'cancelled by request';
}

export class WorkerPool {
  readonly owner = `worker-${process.pid}-${randomBytes(4).toString('hex')}`;
  private readonly running = new Map<string, { controller: AbortController; promise: Promise<void> }>();
  private stopped = true;
  private pollTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private filling = false;
  private refill = false;

  constructor(
    private readonly queue: JobQueue,
    private readonly handlers: Record<JobKind, JobHandler>,
    private readonly options: {
      concurrency: number;
      pollMs?: number;
      heartbeatMs?: number;
      /** per job kind: a job running longer is aborted and fails as timed out */
      timeoutSeconds?: Partial<Record<JobKind, number>>;
      log: PoolLogger;
    },
  ) {}

  /** Fails jobs left running by a dead process; everyRunning at the start of the only server on a data dir. */
  async recover(everyRunning: boolean): Promise<number> {
    const dead = await this.queue.reapDead(everyRunning);
    for (const job of dead) {
      await this.safeFail(job, 'interrupted: the server stopped while this job was running; run it again');
    }
    return dead.length;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.queue.on('enqueued', this.onWake);
    this.queue.on('finished', this.onWake);
    this.queue.on('cancel', this.onCancel);
    this.pollTimer = setInterval(this.onWake, this.options.pollMs ?? 1000);
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), this.options.heartbeatMs ?? 5000);
    this.onWake();
  }

  /** Stops taking jobs, aborts running ones and waits for them to settle. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.pollTimer);
    clearInterval(this.heartbeatTimer);
    this.queue.off('enqueued', this.onWake);
    this.queue.off('finished', this.onWake);
    this.queue.off('cancel', this.onCancel);
    for (const { controller } of this.running.values()) controller.abort(new AppError('interrupted'));
    await Promise.allSettled([...this.running.values()].map((r) => r.promise));
  }

  get activeCount(): number {
    return this.running.size;
  }

  /** Resolves when no job is queued or running here (tests). */
  async idle(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const counts = await this.queue.countByState();
      if (!counts.queued && !counts.running && this.running.size === 0) return;
      if (Date.now() > deadline) throw new Error('worker pool did not become idle');
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  private readonly onWake = (): void => {
    void this.fill();
  };

  private readonly onCancel = (jobId: string): void => {
    this.running.get(jobId)?.controller.abort(new AppError('cancelled', 'cancelled by request'));
  };

  private async fill(): Promise<void> {
    if (this.filling) {
      this.refill = true;
      return;
    }
    this.filling = true;
    try {
      do {
        this.refill = false;
        while (!this.stopped && this.running.size < this.options.concurrency) {
          const job = await this.queue.claim(this.owner);
          if (!job) break;
          this.launch(job);
        }
      } while (this.refill && !this.stopped);
    } catch (err) {
      this.options.log.error({ err }, 'claiming a job failed');
    } finally {
      this.filling = false;
    }
  }

  private launch(job: Job): void {
    const controller = new AbortController();
    const handler = this.handlers[job.kind];
    const timeout = this.options.timeoutSeconds?.[job.kind];
    const timer = timeout
      ? setTimeout(() => controller.abort(new AppError('job_timeout', `The ${job.kind} ran longer than its timeout of ${timeout} seconds and was stopped.`)), timeout * 1000)
      : undefined;
    const promise = (async () => {
      try {
        await handler.run(job, controller.signal);
        await this.queue.finish(job.id, 'done');
      } catch (err) {
        const cancelled = controller.signal.aborted;
        const reason = controller.signal.reason as unknown;
        const info = cancelled ? abortInfo(reason) : publicMessage(err);
        if (!(err instanceof AppError)) this.options.log.error({ err, job: job.id, kind: job.kind }, 'job failed');
        await this.safeFail(job, info, err);
        try {
          await this.queue.finish(job.id, cancelled ? 'cancelled' : 'failed', info);
        } catch (finishErr) {
          this.options.log.error({ err: finishErr, job: job.id }, 'recording a job failure failed');
        }
      } finally {
        clearTimeout(timer);
        this.running.delete(job.id);
        if (this.running.size === 0) settleAfterWork();
        this.onWake();
      }
    })();
    this.running.set(job.id, { controller, promise });
  }

  private async heartbeat(): Promise<void> {
    for (const [jobId, { controller }] of this.running) {
      try {
        const { cancelRequested, lost } = await this.queue.heartbeat(jobId, this.owner);
        if (lost) controller.abort(new AppError('interrupted', 'the job lease was lost'));
        else if (cancelRequested) controller.abort(new AppError('cancelled', 'cancelled by request'));
      } catch (err) {
        this.options.log.error({ err, job: jobId }, 'heartbeat failed');
      }
    }
    // Another node's dead jobs: their leases ran out.
    try {
      await this.recover(false);
    } catch (err) {
      this.options.log.error({ err }, 'reaping dead jobs failed');
    }
  }

  private async safeFail(job: Job, info: string, err?: unknown): Promise<void> {
    try {
      await this.handlers[job.kind].fail(job, info, err);
    } catch (failErr) {
      this.options.log.error({ err: failErr, job: job.id }, 'recording a subject failure failed');
    }
  }
}
