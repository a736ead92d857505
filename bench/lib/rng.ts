// A seeded, fast PRNG and the pieces realistic data is made of: words drawn
// from a skewed vocabulary (so text compresses like prose, not like a
// repeated string), names, numbers, timestamps, hex ids and binary blobs.
// The same seed gives the same data on every machine.

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  /** mulberry32: uniform in [0, 1) */
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(a: readonly T[]): T {
    return a[Math.floor(this.next() * a.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  hex(n: number): string {
    let s = '';
    while (s.length < n) s += ((this.next() * 4294967296) >>> 0).toString(16).padStart(8, '0');
    return s.slice(0, n);
  }
  /** n bytes, a part random and a part structured (repeated records with small changes), like an image or a PDF */
  blob(n: number, randomShare: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    const cut = Math.floor(n * randomShare);
    for (let i = 0; i < cut; i += 4) b.writeUInt32LE((this.next() * 4294967296) >>> 0, Math.min(i, n - 4));
    const rec = Buffer.from(`obj ${this.int(1, 999)} 0 R /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] `);
    for (let i = cut; i < n; i++) b[i] = (i - cut) % 97 === 0 ? this.int(32, 126) : rec[(i - cut) % rec.length]!;
    return b;
  }
}

const SYL = ['ka', 'lo', 're', 'mi', 'sun', 'tor', 'ven', 'al', 'is', 'qu', 'bra', 'den', 'ex', 'fi', 'gor', 'hal', 'jin', 'pel', 'ros', 'tam', 'ul', 'vor', 'wy', 'zen', 'an', 'che', 'dro', 'el', 'fen', 'ga', 'ho', 'ith', 'lum', 'mar', 'nor', 'os', 'pra', 'ri', 'sta', 'th'];

/** A vocabulary of made-up words and a skewed sampler (frequent words often, the long tail rarely). */
export class Vocabulary {
  readonly words: string[];
  constructor(rng: Rng, size = 6000) {
    const seen = new Set<string>();
    const words: string[] = [];
    while (words.length < size) {
      const n = rng.int(1, 4);
      let w = '';
      for (let i = 0; i < n; i++) w += rng.pick(SYL);
      if (!seen.has(w)) {
        seen.add(w);
        words.push(w);
      }
    }
    this.words = words;
  }
  word(rng: Rng): string {
    const r = rng.next();
    return this.words[Math.floor(r * r * r * this.words.length)]!;
  }
  sentence(rng: Rng, lo: number, hi: number): string {
    const n = rng.int(lo, hi);
    const parts: string[] = new Array(n);
    for (let i = 0; i < n; i++) parts[i] = this.word(rng);
    const s = parts.join(' ');
    return s.charAt(0).toUpperCase() + s.slice(1) + (rng.chance(0.8) ? '.' : rng.chance(0.5) ? '?' : '!');
  }
  paragraph(rng: Rng, sentences: number): string {
    const out: string[] = [];
    for (let i = 0; i < sentences; i++) out.push(this.sentence(rng, 6, 22));
    return out.join(' ');
  }
}

export const COUNTRIES = ['US', 'DE', 'FR', 'GB', 'NL', 'ES', 'IT', 'PL', 'SE', 'NO', 'FI', 'DK', 'BE', 'AT', 'CH', 'PT', 'IE', 'CZ', 'JP', 'KR', 'IN', 'BR', 'AR', 'MX', 'CA', 'AU', 'NZ', 'ZA', 'NG', 'EG'];
export const LANGS = ['en', 'de', 'fr', 'es', 'it', 'nl', 'pl', 'sv', 'ja', 'pt'];
export const STATUSES = ['pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded'];
export const KINDS = ['page_view', 'click', 'signup', 'login', 'logout', 'search', 'add_to_cart', 'checkout', 'purchase', 'error', 'api_call', 'share', 'comment', 'like', 'upload', 'download', 'invite', 'settings', 'export', 'import'];
export const AGENTS = [
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15',
  'Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0',
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148',
  'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36',
  'curl/8.5.0',
  'python-requests/2.31.0',
  'okhttp/4.12.0',
];

/** "2023-04-05 06:07:08" somewhere in the two years before 2025 */
export function timestamp(rng: Rng): string {
  const t = new Date(1672531200000 + Math.floor(rng.next() * 63072000000));
  return t.toISOString().slice(0, 19).replace('T', ' ');
}

export function money(rng: Rng, max: number): string {
  return (Math.floor(rng.next() * max * 100) / 100).toFixed(2);
}
