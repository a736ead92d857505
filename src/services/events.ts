// What happened, for whoever listens (notifications, metrics, the scheduler's
// retention). Emitters never wait for listeners; a listener's failure is its own.
import { EventEmitter } from 'node:events';
import type { BackupView, RestoreView } from './views.ts';

export interface PolicyRef {
  id: string;
  instance: string;
  name: string;
}

export interface EventMap {
  /** a backup ended (status success or error); durationMs from start to end */
  'backup.finished': [{ backup: BackupView; durationMs: number | null }];
  'restore.finished': [{ restore: RestoreView }];
  /** a restore drill ended (backup.verify_status success or error) */
  'verify.finished': [{ backup: BackupView }];
  /** a policy missed its schedule: no success since a run was due */
  'policy.late': [{ policy: PolicyRef; dueAt: string; lastSuccessAt: string | null }];
}

export class ServiceEvents extends EventEmitter<EventMap> {}
