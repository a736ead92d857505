// Durable jobs: rows in the catalog, claimed with a lease that the worker
// renews by heartbeat. Exclusive jobs (backups, restores, imports) hold their
// instance: a queued exclusive job is claimed only when no other exclusive
// job of the same instance runs. A job whose lease ran out belongs to a dead
// worker and is failed as interrupted, so nothing stays running forever.
import { EventEmitter } from 'node:events';
import { sql } from 'kysely';
import type { CatalogDb } from '../catalog/db.ts';
import type { JobKind, JobTable } from '../catalog/schema.ts';
import type { Clock } from '../platform/clock.ts';
import { newId } from '../platform/ids.ts';

export interface Job {
  id: string;
  kind: JobKind;
  instance: string;
  subject_id: string;
  exclusive: boolean;
  payload: Record<string, unknown>;
  cancel_requested: boolean;
}

export interface EnqueueRequest {
  kind: JobKind;
  instance: string;
  subjectId: string;
  exclusive: boolean;
  payload?: Record<string, unknown>;
}

function toJob(row: JobTable): Job {
  return {
    id: row.id,
    kind: row.kind,
    instance: row.instance,
    subject_id: row.subject_id,
    exclusive: row.exclusive === 1,
    payload: JSON.parse(row.payload) as Record<string, unknown>,
    cancel_requested: row.cancel_requested === 1,
  };
}

export class JobQueue extends EventEmitter {
  constructor(
    private readonly db: CatalogDb,
    private readonly clock: Clock,
    private readonly leaseSeconds: number,
  ) {
    super();
  }

  /** Adds a job; pass trx to enqueue in the same transaction as its subject row. */
  async enqueue(req: EnqueueRequest, trx: CatalogDb = this.db): Promise<string> {
    const now = this.clock.now().toISOString();
    const id = newId();
    await trx
      .insertInto('jobs')
      .values({
        id,
        kind: req.kind,
        instance: req.instance,
        subject_id: req.subjectId,
        exclusive: req.exclusive ? 1 : 0,
        state: 'queued',
        payload: JSON.stringify(req.payload ?? {}),
        lease_owner: null,
        lease_expires_at: null,
        cancel_requested: 0,
        error: null,
        created_at: now,
        updated_at: now,
      })
      .execute();
    return id;
  }

  /** Tells idle workers to look for work (after the enqueuing transaction committed). */
  notify(): void {
    this.emit('enqueued');
  }

  /**
   * Claims the oldest runnable job for owner, atomically: one UPDATE whose
   * WHERE re-checks that the job is still queued and its instance free.
   */
  async claim(owner: string): Promise<Job | null> {
    const now = this.clock.now();
    const expires = new Date(now.getTime() + this.leaseSeconds * 1000).toISOString();
    for (let attempt = 0; attempt < 5; attempt++) {
      const candidate = await this.db
        .selectFrom('jobs as j')
        .select(['j.id'])
        .where('j.state', '=', 'queued')
        .where((eb) =>
          eb.or([
            eb('j.exclusive', '=', 0),
            eb.not(
              eb.exists(
                eb
                  .selectFrom('jobs as r')
                  .select('r.id')
                  .whereRef('r.instance', '=', 'j.instance')
                  .where('r.state', '=', 'running')
                  .where('r.exclusive', '=', 1),
              ),
            ),
          ]),
        )
        // An exclusive job waits behind older queued exclusive jobs of its instance (FIFO per instance).
        .where((eb) =>
          eb.or([
            eb('j.exclusive', '=', 0),
            eb.not(
              eb.exists(
                eb
                  .selectFrom('jobs as q')
                  .select('q.id')
                  .whereRef('q.instance', '=', 'j.instance')
                  .where('q.state', '=', 'queued')
                  .where('q.exclusive', '=', 1)
                  .where((e2) => e2.or([e2('q.created_at', '<', e2.ref('j.created_at')), e2.and([e2('q.created_at', '=', e2.ref('j.created_at')), e2('q.id', '<', e2.ref('j.id'))])])),
              ),
            ),
          ]),
        )
        .orderBy('j.created_at')
        .orderBy('j.id')
        .limit(1)
        .executeTakeFirst();
      if (!candidate) return null;
      const claimed = await this.db
        .updateTable('jobs')
        .set({ state: 'running', lease_owner: owner, lease_expires_at: expires, updated_at: now.toISOString() })
        .where('id', '=', candidate.id)
        .where('state', '=', 'queued')
        .where((eb) =>
          eb.or([
            eb('exclusive', '=', 0),
            eb.not(
              eb.exists(
                eb
                  .selectFrom('jobs as r')
                  .select('r.id')
                  .where('r.instance', '=', sql<string>`jobs.instance`)
                  .where('r.state', '=', 'running')
                  .where('r.exclusive', '=', 1),
              ),
            ),
          ]),
        )
        .returningAll()
        .executeTakeFirst();
      if (claimed) return toJob(claimed);
    }
    return null;
  }

  /** Renews the lease; returns whether cancellation was requested. */
  async heartbeat(jobId: string, owner: string): Promise<{ cancelRequested: boolean; lost: boolean }> {
    const now = this.clock.now();
    const expires = new Date(now.getTime() + this.leaseSeconds * 1000).toISOString();
    const row = await this.db
      .updateTable('jobs')
      .set({ lease_expires_at: expires, updated_at: now.toISOString() })
      .where('id', '=', jobId)
      .where('lease_owner', '=', owner)
      .where('state', '=', 'running')
      .returning(['cancel_requested'])
      .executeTakeFirst();
    if (!row) return { cancelRequested: true, lost: true };
    return { cancelRequested: row.cancel_requested === 1, lost: false };
  }

  async finish(jobId: string, state: 'done' | 'failed' | 'cancelled', error?: string): Promise<void> {
    await this.db
      .updateTable('jobs')
      .set({ state, error: error ?? null, lease_owner: null, lease_expires_at: null, updated_at: this.clock.now().toISOString() })
      .where('id', '=', jobId)
      .execute();
    this.emit('finished', jobId);
  }

  async get(jobId: string): Promise<Job | null> {
    const row = await this.db.selectFrom('jobs').selectAll().where('id', '=', jobId).executeTakeFirst();
    return row ? toJob(row) : null;
  }

  async activeForSubject(subjectId: string): Promise<(Job & { state: string })[]> {
    const rows = await this.db.selectFrom('jobs').selectAll().where('subject_id', '=', subjectId).where('state', 'in', ['queued', 'running']).execute();
    return rows.map((r) => ({ ...toJob(r), state: r.state }));
  }

  /**
   * Asks a job to stop. A queued job is cancelled at once (returned so the
   * caller can fail its subject); a running one is flagged, and its worker
   * aborts at its next heartbeat or at once when it runs in this process.
   */
  async requestCancel(jobId: string): Promise<'cancelled_queued' | 'flagged' | 'not_active'> {
    const now = this.clock.now().toISOString();
    const q = await this.db.updateTable('jobs').set({ state: 'cancelled', cancel_requested: 1, updated_at: now }).where('id', '=', jobId).where('state', '=', 'queued').executeTakeFirst();
    if (Number(q.numUpdatedRows) > 0) return 'cancelled_queued';
    const r = await this.db.updateTable('jobs').set({ cancel_requested: 1, updated_at: now }).where('id', '=', jobId).where('state', '=', 'running').executeTakeFirst();
    if (Number(r.numUpdatedRows) > 0) {
      this.emit('cancel', jobId);
      return 'flagged';
    }
    return 'not_active';
  }

  /**
   * Running jobs whose lease has run out, or, with everyRunning (at start of
   * the only server on a data dir), all running jobs: their workers are gone.
   * Marks them failed and returns them so their subjects can be failed too.
   */
  async reapDead(everyRunning: boolean): Promise<Job[]> {
    const now = this.clock.now().toISOString();
    let q = this.db.selectFrom('jobs').selectAll().where('state', '=', 'running');
    if (!everyRunning) q = q.where('lease_expires_at', '<', now);
    const rows = await q.execute();
    const reaped: Job[] = [];
    for (const row of rows) {
      const res = await this.db
        .updateTable('jobs')
        .set({ state: 'failed', error: 'interrupted', lease_owner: null, lease_expires_at: null, updated_at: now })
        .where('id', '=', row.id)
        .where('state', '=', 'running')
        .where('lease_owner', '=', row.lease_owner)
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) > 0) reaped.push(toJob(row));
    }
    return reaped;
  }

  async countByState(): Promise<Record<string, number>> {
    const rows = await this.db.selectFrom('jobs').select(['state', (eb) => eb.fn.countAll<number>().as('n')]).groupBy('state').execute();
    return Object.fromEntries(rows.map((r) => [r.state, Number(r.n)]));
  }
}
