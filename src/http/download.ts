// Sends an exchange archive with Content-Length, and answers single-range
// requests (resumed downloads) with 206 without reading what comes before.
import type { FastifyReply, FastifyRequest } from 'fastify';
import parseRange from 'range-parser';
import type { Download } from '../services/backups.ts';

export function sendDownload(req: FastifyRequest, reply: FastifyReply, download: Download): FastifyReply {
  reply.header('Content-Type', 'application/x-tar');
  reply.header('Content-Disposition', `attachment; filename="${download.filename}"`);
  reply.header('Accept-Ranges', 'bytes');
  reply.header('Cache-Control', 'no-store');
  const header = req.headers.range;
  if (header) {
    const ranges = parseRange(download.size, header, { combine: true });
    if (ranges === -1) {
      reply.header('Content-Range', `bytes */${download.size}`);
      return reply.code(416).send({ error: { code: 'invalid_request', message: 'The requested range is outside the archive.' } });
    }
    if (ranges !== -2 && ranges.type === 'bytes' && ranges.length === 1) {
      const { start, end } = ranges[0]!;
      reply.code(206);
      reply.header('Content-Range', `bytes ${start}-${end}/${download.size}`);
      reply.header('Content-Length', end - start + 1);
      return reply.send(download.stream({ start, end }));
    }
    // Malformed or multiple ranges: send the whole archive, as RFC 9110 allows.
  }
  reply.header('Content-Length', download.size);
  return reply.send(download.stream());
}
