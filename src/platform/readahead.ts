// Asks the kernel to start reading a file's pages into the page cache now,
// without waiting for them: posix_fadvise(POSIX_FADV_WILLNEED), through the
// small native binding of the `fadvise` package (Node has no fadvise).
//
// Why: a files backup reads tens of thousands of small files one after the
// other, and on a cold cache each read waits for its own disk request, one
// at a time. Advising the next files while the current one is packed keeps
// several requests in flight: on the bench machine a cold read of 47k files
// (500 MB) went from 6.6 s to 2.3 s (ad hoc). It matters most on a slow disk:
// the full bench had the files backup at 0.85x of tar | zstd on one, and on a
// faster one (bench/RESULTS-full.md) the backup is CPU-bound instead.
//
// The advice changes only timing, never what is read. Where the binding is
// missing (its build failed: the package's install script tolerates that, or
// a platform without posix_fadvise) adviseWillNeed does nothing and files
// are read as before, only slower; `readaheadAvailable` says which.
import { createRequire } from 'node:module';

interface FadviseBinding {
  posix_fadvise(fd: number, offset: number, length: number, advice: number): number;
  POSIX_FADV_WILLNEED: number;
  failed_to_load?: boolean;
}

function load(): FadviseBinding | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    const binding = createRequire(import.meta.url)('fadvise') as FadviseBinding;
    return binding.failed_to_load ? undefined : binding;
  } catch {
    return undefined;
  }
}

const binding = load();

/** Whether the advice reaches the kernel (Linux with the binding built). */
export const readaheadAvailable = binding !== undefined;

/**
 * Starts reading [offset, offset + length) of the open file into the page
 * cache; returns at once. Advice only: a failure (an fd that is not a regular
 * file, say) is ignored, as the read that follows reports real problems.
 */
export function adviseWillNeed(fd: number, offset: number, length: number): void {
  if (binding && length > 0) binding.posix_fadvise(fd, offset, length, binding.POSIX_FADV_WILLNEED);
}
