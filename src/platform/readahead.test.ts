import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { adviseWillNeed, readaheadAvailable } from './readahead.ts';

// The fadvise package's install script succeeds even when its build fails;
// this is where a broken build shows, instead of as slow cold backups.
it('has the native fadvise binding on Linux', { skip: process.platform !== 'linux' }, () => {
  assert.equal(readaheadAvailable, true);
});

it('advice changes nothing that is read, and bad descriptors are ignored', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bv-readahead-'));
  try {
    const file = join(dir, 'f');
    writeFileSync(file, 'hello, page cache');
    const fd = openSync(file, 'r');
    try {
      adviseWillNeed(fd, 0, 1 << 20);
      const buf = Buffer.alloc(64);
      assert.equal(buf.subarray(0, readSync(fd, buf, 0, 64, 0)).toString(), 'hello, page cache');
    } finally {
      closeSync(fd);
    }
    // A closed descriptor: posix_fadvise answers EBADF, which is advice lost, not an error.
    assert.doesNotThrow(() => adviseWillNeed(fd, 0, 4096));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
