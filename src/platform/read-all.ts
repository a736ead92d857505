import type { Readable } from 'node:stream';

/** Reads a small stream into memory, refusing more than limit bytes. */
export async function readAll(stream: Readable, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of stream) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
    n += buf.length;
    if (n > limit) {
      stream.destroy();
      throw new Error(`stream is larger than ${limit} bytes`);
    }
    chunks.push(buf);
  }
  return Buffer.concat(chunks);
}
