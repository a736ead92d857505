// File system helpers for durable writes: temp name, fsync, rename, fsync dir.
import { open, rename, rm, mkdir } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { runTool } from './process.ts';

/** A temp path beside target, so a rename onto target stays on one file system. */
export function tempPathBeside(target: string): string {
  return join(dirname(target), `.${basename(target)}.tmp-${randomBytes(6).toString('hex')}`);
}

/** fsyncs a directory so a rename inside it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsyncs a file by path. */
export async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Atomically replaces target with data. */
export async function writeFileAtomic(target: string, data: string | Buffer, mode = 0o644): Promise<void> {
  await mkdir(dirname(target), { recursive: true });
  const tmp = tempPathBeside(target);
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, target);
    await fsyncDir(dirname(target));
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/**
 * Flushes everything written to the file system that holds path (syncfs, by
 * coreutils `sync -f`): after writing thousands of files, one flush instead
 * of an fsync per file and directory, with the same guarantee before a rename
 * makes them visible. Node has no syncfs binding, hence the tool.
 */
export async function syncFileSystem(path: string): Promise<void> {
  await runTool('sync', ['-f', path]);
}

/** How often whileFlushing starts a background syncfs. */
const FLUSH_EVERY_MS = 1000;

/** FOR TESTS: how many background flushes whileFlushing has started. */
export const backgroundFlushes = { started: 0 };

/**
 * Runs work while the file system that holds path writes its dirty pages out
 * in the background: a syncfs every `everyMs`, one at a time, until work
 * settles. Linux keeps freshly written data in memory until it is 30 s old
 * or a tenth of memory is dirty, so the flush a durable result needs
 * (syncFileSystem, after work) would otherwise start only after the last
 * write and wait for all of it; this way most of it is on disk by then. A
 * background flush that fails is ignored: the caller's own flush after work
 * reports a failure that lasts.
 */
export async function whileFlushing<T>(path: string, work: () => Promise<T>, everyMs = FLUSH_EVERY_MS): Promise<T> {
  let flushing: Promise<void> | null = null;
  const timer = setInterval(() => {
    if (flushing) return;
    backgroundFlushes.started++;
    flushing = syncFileSystem(path)
      .catch(() => {})
      .finally(() => (flushing = null));
  }, everyMs);
  try {
    return await work();
  } finally {
    clearInterval(timer);
    // Nothing of ours runs on after work: the caller may remove path at once.
    await flushing;
  }
}

