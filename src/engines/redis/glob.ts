// Redis glob matching, byte for byte as the server's stringmatchlen() does it
// (util.c), so that a pattern means the same thing in our code (exclusions,
// de-duplicating several selection patterns) as in SCAN MATCH:
//   *      any run of bytes, also empty
//   ?      exactly one byte
//   [abc]  one of the bytes; [^abc] none of them; [a-z] a range (ends swapped
//          if reversed); \x inside brackets is x literally; an unclosed [ runs
//          to the end of the pattern
//   \x     x literally (a trailing lone \ is itself)
// Quirk kept on purpose: the server's matcher never matches an empty key, but
// SCAN and KEYS treat the pattern "*" alone as "everything" without matching.

const STAR = 0x2a; // *
const QUESTION = 0x3f; // ?
const OPEN = 0x5b; // [
const CLOSE = 0x5d; // ]
const CARET = 0x5e; // ^
const DASH = 0x2d; // -
const BACKSLASH = 0x5c; // \

/** Compiles a pattern (UTF-8, as sent to SCAN MATCH) into a predicate over key bytes. */
export function redisGlob(pattern: string | Buffer): (key: Buffer) => boolean {
  const p = typeof pattern === 'string' ? Buffer.from(pattern, 'utf8') : pattern;
  if (p.length === 1 && p[0] === STAR) return () => true;
  return (key) => {
    const skipLonger = { value: false };
    return match(p, 0, key, 0, skipLonger, 0);
  };
}

/** True when key matches pattern with SCAN MATCH semantics. */
export function redisGlobMatch(pattern: string | Buffer, key: Buffer): boolean {
  return redisGlob(pattern)(key);
}

/** Escapes bytes so the result matches exactly this literal string. */
export function escapeGlob(literal: string): string {
  return literal.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

// Byte at i, or -1 past the end (C reads the terminating NUL there; -1 never equals a byte).
function at(b: Buffer, i: number): number {
  return i < b.length ? (b[i] as number) : -1;
}

function signed(byte: number): number {
  return (byte << 24) >> 24;
}

function match(p: Buffer, pi: number, s: Buffer, si: number, skipLonger: { value: boolean }, nesting: number): boolean {
  // The server gives up on pathological patterns the same way.
  if (nesting > 1000) return false;
  while (pi < p.length && si < s.length) {
    const c = p[pi] as number;
    if (c === STAR) {
      while (pi + 1 < p.length && p[pi + 1] === STAR) pi++;
      if (pi === p.length - 1) return true;
      while (si < s.length) {
        if (match(p, pi + 1, s, si, skipLonger, nesting + 1)) return true;
        // A later * already failed on every longer tail: this one cannot do better.
        if (skipLonger.value) return false;
        si++;
      }
      skipLonger.value = true;
      return false;
    } else if (c === QUESTION) {
      si++;
    } else if (c === OPEN) {
      pi++;
      const not = at(p, pi) === CARET;
      if (not) pi++;
      let matched = false;
      const ch = s[si] as number;
      for (;;) {
        const pc = at(p, pi);
        if (pc === BACKSLASH && p.length - pi >= 2) {
          pi++;
          if (p[pi] === ch) matched = true;
        } else if (pc === CLOSE) {
          break;
        } else if (pi >= p.length) {
          // Unclosed bracket: step back so the common advance below lands on the end.
          pi--;
          break;
        } else if (p.length - pi >= 3 && p[pi + 1] === DASH) {
          // The server compares C chars, signed on x86-64 and so in its builds: bytes >= 0x80 sort below 0x00.
          let start = signed(pc);
          let end = signed(p[pi + 2] as number);
          if (start > end) [start, end] = [end, start];
          pi += 2;
          const sc = signed(ch);
          if (sc >= start && sc <= end) matched = true;
        } else if (pc === ch) {
          matched = true;
        }
        pi++;
      }
      if (not) matched = !matched;
      if (!matched) return false;
      si++;
    } else {
      if (c === BACKSLASH && p.length - pi >= 2) pi++;
      if (p[pi] !== s[si]) return false;
      si++;
    }
    pi++;
    if (si === s.length) {
      while (at(p, pi) === STAR) pi++;
      break;
    }
  }
  return pi >= p.length && si === s.length;
}
