// A streaming lexer for mariadb-dump output. It finds statement boundaries
// the way the mariadb client does (quotes with backslash escapes, comments,
// executable /*! comments, DELIMITER commands) without ever holding more
// than one chunk plus a small head of the current statement, and:
//  - counts the rows of every table: each top-level "(...)" tuple of an
//    INSERT INTO `t` VALUES statement, plus a zero for every CREATE TABLE;
//  - optionally splits the dump into its table part (structure and data) and
//    its object part (views, triggers, routines, events), which the restore
//    runs at different moments (see restore.ts).
// Counting from the stream itself is what makes the counts describe exactly
// the rows the artifact holds: a separate COUNT(*), even inside its own
// consistent snapshot, starts at a different moment than mariadb-dump's
// snapshot, and writes that land in between would make the two disagree.

/** Where a statement goes when the dump is split. */
export type Part = 'tables' | 'objects' | 'both';
type Dest = Part | 'none';
export type Sink = (part: Part, bytes: Buffer) => void;

const CODE = 0;
const QUOTE = 1;
const LINE_COMMENT = 2;
const BLOCK_COMMENT = 3;
const COMMAND = 4;

const KIND_OTHER = 0;
const KIND_INSERT = 1;
const KIND_CREATE_TABLE = 2;

/** bytes kept unprocessed at the end of a chunk so tokens never straddle two chunks */
const LOOKAHEAD = 32;
/** bytes of the next chunk lexed together with the carried tail */
const JOINT = 2 * LOOKAHEAD;
const HEAD_MAX = 1024;
/** enough of a statement's start to tell its kind apart */
const DEST_AT = 64;
const EMPTY = Buffer.alloc(0);
const SANDBOX = Buffer.from('/*M!999999\\-');
const DELIMITER = Buffer.from('delimiter');

// Statement kinds, on the head with executable-comment markers removed and blanks collapsed.
const TABLE_STMT =
  /^(?:DROP (?:TEMPORARY )?TABLE|CREATE (?:OR REPLACE )?(?:TEMPORARY )?TABLE|INSERT|REPLACE|LOCK TABLES?|UNLOCK TABLES?|ALTER TABLE|ALTER SEQUENCE|DROP SEQUENCE|CREATE (?:OR REPLACE )?SEQUENCE|DO SETVAL|SELECT SETVAL)\b/i;
const SESSION_STMT = /^(?:SET\b|$)/i;
// Statements naming or switching databases would act on the source's name, not the target's: never run them.
const DROPPED_STMT = /^(?:USE|ALTER (?:DATABASE|SCHEMA)|CREATE (?:DATABASE|SCHEMA)|DROP (?:DATABASE|SCHEMA))\b/i;
const NAME = '`((?:[^`]|``)+)`';
const INSERT_HEAD = new RegExp(`^INSERT (?:IGNORE )?INTO ${NAME} ?(VALUES ?)?$`, 'i');
const CREATE_TABLE_HEAD = new RegExp(`^CREATE (?:OR REPLACE )?TABLE (?:IF NOT EXISTS )?${NAME} ?$`, 'i');
const ACCOUNT = '(?:`(?:[^`]|``)*`|[^ @`]+)';
const VIEW_HEAD = new RegExp(
  `^CREATE (?:OR REPLACE )?(?:ALGORITHM ?= ?\\w+ )?(?:DEFINER ?= ?${ACCOUNT}(?:@${ACCOUNT})? )?(?:SQL SECURITY \\w+ )?VIEW ${NAME} AS\\b`,
  'i',
);

function unquote(name: string): string {
  return name.replace(/``/g, '`');
}

function specialBytes(delimiterFirst: number): Uint8Array {
  const t = new Uint8Array(256);
  for (const ch of "'\"`#-/*()") t[ch.charCodeAt(0)] = 1;
  t[delimiterFirst] = 1;
  return t;
}

function matchAt(buf: Buffer, i: number, what: Buffer, caseless = false): boolean {
  if (i + what.length > buf.length) return false;
  for (let k = 0; k < what.length; k++) {
    const b = caseless ? buf[i + k]! | 0x20 : buf[i + k]!;
    if (b !== what[k]) return false;
  }
  return true;
}

export class DumpScanner {
  /** table -> rows, in the order the dump creates them */
  readonly rows = new Map<string, number>();
  /** views the dump creates */
  readonly views = new Set<string>();

  private readonly sink: Sink | undefined;
  private carry: Buffer | null = null;
  private buf: Buffer = EMPTY;
  private emitFrom = 0;

  private state = CODE;
  private quoteChar = 0;
  private escaped = false;
  private delim = Buffer.from(';');
  private special = specialBytes(0x3b);

  // the current statement
  private started = false;
  private exec = false;
  private readonly head = Buffer.alloc(HEAD_MAX);
  private headLen = 0;
  private headFrozen = false;
  private dest: Dest | null = null;
  private pending: Buffer[] = [];
  private depth = 0;
  private kind = KIND_OTHER;
  private table = '';
  private tuples = 0;
  private columnList = false;
  private commandIsDelimiter = false;
  private command: number[] = [];

  /** With a sink, every byte of the dump is handed to it, labelled with the part its statement belongs to. */
  constructor(sink?: Sink) {
    this.sink = sink;
  }

  feed(chunk: Buffer): void {
    const carry = this.carry;
    if (carry === null) {
      this.scan(chunk, 0, chunk.length - LOOKAHEAD, false);
      return;
    }
    this.carry = null;
    if (chunk.length <= JOINT) {
      this.scan(Buffer.concat([carry, chunk]), 0, carry.length + chunk.length - LOOKAHEAD, false);
      return;
    }
    // Only the tokens that start in the carried tail need the next bytes: lex
    // them in a small joint buffer, then go on in the chunk itself, so a
    // chunk is never copied.
    const joint = Buffer.concat([carry, chunk.subarray(0, JOINT)]);
    const stop = this.scan(joint, 0, carry.length, false, true);
    this.scan(chunk, stop - carry.length, chunk.length - LOOKAHEAD, false);
  }

  /** Call once after the last chunk. */
  end(): void {
    const rest = this.carry ?? EMPTY;
    this.carry = null;
    this.scan(rest, 0, rest.length, true);
    if (this.started || this.pending.length > 0 || this.state === COMMAND) {
      // The client runs a last statement that lacks its delimiter, so it counts too.
      if (this.state === COMMAND) this.finishCommand();
      else this.endStatement(this.emitFrom);
    }
    this.buf = EMPTY;
  }

  /**
   * Lexes buf from start, beginning no token at or after limit (its bytes
   * stay for the next chunk, unless joint: then the caller goes on from the
   * returned position in the buffer that holds the same bytes).
   */
  private scan(buf: Buffer, start: number, limit: number, eof: boolean, joint = false): number {
    const len = buf.length;
    this.buf = buf;
    this.emitFrom = start;
    let i = start;
    while (i < limit) {
      switch (this.state) {
        case QUOTE: {
          const q = this.quoteChar;
          const backslashes = q !== 0x60;
          if (!this.headFrozen) {
            while (i < len) {
              const c = buf[i]!;
              i++;
              this.pushHead(c);
              if (this.escaped) this.escaped = false;
              else if (c === 0x5c && backslashes) this.escaped = true;
              else if (c === q) {
                this.state = CODE;
                break;
              }
            }
            continue;
          }
          // The bulk of a dump is string data (skipString); an escape left
          // pending by the previous chunk is consumed first.
          if (this.escaped) {
            if (i >= len) continue;
            this.escaped = false;
            i++;
          }
          const end = this.skipString(buf, i, q, backslashes);
          if (end === -1) i = len;
          else {
            i = end;
            this.state = CODE;
          }
          continue;
        }
        case LINE_COMMENT: {
          const nl = buf.indexOf(0x0a, i);
          if (nl === -1) i = len;
          else {
            i = nl + 1;
            this.state = CODE;
            this.addSpace();
          }
          continue;
        }
        case BLOCK_COMMENT: {
          const end = buf.indexOf('*/', i);
          // Without an end in sight keep the last byte: it may be the "*" of a "*/" split across chunks.
          if (end === -1) i = eof ? len : Math.max(i, len - 1);
          else {
            i = end + 2;
            this.state = CODE;
            this.addSpace();
          }
          continue;
        }
        case COMMAND: {
          const nl = buf.indexOf(0x0a, i);
          const stop = nl === -1 ? len : nl;
          if (this.commandIsDelimiter) for (let k = i; k < stop && this.command.length < 256; k++) this.command.push(buf[k]!);
          if (nl === -1) i = len;
          else {
            i = nl + 1;
            this.flushTo(i);
            this.finishCommand();
          }
          continue;
        }
      }

      // CODE
      if (this.headFrozen) {
        i = this.scanValues(buf, i, limit);
        if (this.state !== CODE || i >= limit) continue;
      }
      const c = buf[i]!;
      if (!this.started) {
        if (c <= 0x20) {
          i++;
          continue;
        }
        if ((c | 0x20) === 0x64 && matchAt(buf, i, DELIMITER, true) && i + 9 < len && buf[i + 9]! <= 0x20) {
          this.state = COMMAND;
          this.commandIsDelimiter = true;
          this.command = [];
          i += 9;
          continue;
        }
        if (c === 0x2f && matchAt(buf, i, SANDBOX)) {
          // The first line of a MariaDB dump: a client command, ended by its newline.
          this.state = COMMAND;
          this.commandIsDelimiter = false;
          i += SANDBOX.length;
          continue;
        }
      }
      if (c === this.delim[0] && matchAt(buf, i, this.delim)) {
        i += this.delim.length;
        this.endStatement(i);
        continue;
      }
      if (!this.special[c]) {
        if (!this.headFrozen) this.addCode(c);
        i++;
        continue;
      }
      switch (c) {
        case 0x27: // '
        case 0x22: // "
        case 0x60: // `
          this.started = true;
          this.state = QUOTE;
          this.quoteChar = c;
          this.escaped = false;
          if (!this.headFrozen) this.pushHead(c);
          i++;
          continue;
        case 0x23: // #
          this.state = LINE_COMMENT;
          i++;
          continue;
        case 0x2d: // -
          if (buf[i + 1] === 0x2d && (i + 2 >= len || buf[i + 2]! <= 0x20)) {
            this.state = LINE_COMMENT;
            i += 2;
            continue;
          }
          break;
        case 0x2f: // /
          if (buf[i + 1] === 0x2a) {
            const bang = buf[i + 2] === 0x21 ? 3 : buf[i + 2] === 0x4d && buf[i + 3] === 0x21 ? 4 : 0;
            if (bang > 0) {
              // /*!NNNNN ... */ is code for the server: lex its content, drop the markers from the head.
              i += bang;
              while (i < len && buf[i]! >= 0x30 && buf[i]! <= 0x39) i++;
              this.exec = true;
              this.started = true;
              this.addSpace();
            } else {
              this.state = BLOCK_COMMENT;
              i += 2;
            }
            continue;
          }
          break;
        case 0x2a: // *
          if (this.exec && buf[i + 1] === 0x2f) {
            this.exec = false;
            i += 2;
            this.addSpace();
            continue;
          }
          break;
        case 0x28: // (
          this.started = true;
          this.depth++;
          if (this.depth === 1) this.topLevelParen();
          if (!this.headFrozen) this.addCode(c);
          i++;
          continue;
        case 0x29: // )
          if (this.depth > 0) this.depth--;
          if (!this.headFrozen) this.addCode(c);
          i++;
          continue;
      }
      if (!this.headFrozen) this.addCode(c);
      else this.started = true;
      i++;
    }
    const end = Math.min(i, len);
    this.flushTo(end);
    if (!joint && end < len) this.carry = Buffer.from(buf.subarray(end));
    this.buf = EMPTY;
    this.emitFrom = 0;
    return end;
  }

  /**
   * The bulk of a dump, the body of a statement whose head is known (an
   * INSERT's tuples): plain bytes (numbers, hex blobs, commas), strings and
   * parentheses in one tight loop, with the state in locals. Stops at any
   * other special byte (the delimiter, comments, backquotes), which the
   * general lexer then takes, or in a string the buffer does not close.
   */
  private scanValues(buf: Buffer, i: number, limit: number): number {
    const special = this.special;
    const delimFirst = this.delim[0]!;
    const len = buf.length;
    const insert = this.kind === KIND_INSERT;
    let depth = this.depth;
    let tuples = this.tuples;
    while (i < limit) {
      const c = buf[i]!;
      if (special[c] === 0) {
        i++;
        // Four bytes a step through long runs (hex blobs); the last few one by one.
        while (i + 4 <= limit && (special[buf[i]!]! | special[buf[i + 1]!]! | special[buf[i + 2]!]! | special[buf[i + 3]!]!) === 0) i += 4;
        while (i < limit && special[buf[i]!] === 0) i++;
        continue;
      }
      if (c === delimFirst) break;
      if (c === 0x27 || c === 0x22) {
        // A string: jump from quote to quote (see the QUOTE state).
        const end = this.skipString(buf, i + 1, c, true);
        if (end === -1) {
          i = len;
          this.state = QUOTE;
          this.quoteChar = c;
          break;
        }
        i = end;
        continue;
      }
      if (c === 0x28) {
        depth++;
        if (depth === 1 && insert) tuples++;
        i++;
        continue;
      }
      if (c === 0x29) {
        if (depth > 0) depth--;
        i++;
        continue;
      }
      break;
    }
    this.depth = depth;
    this.tuples = tuples;
    return i;
  }

  /**
   * Jumps from quote to quote (memchr) through a string that starts at i
   * with no escape pending: a quote ends it unless an odd run of backslashes
   * right before it escapes it (every byte between i and the quote is inside
   * the string, so the run is counted back to i at most). Returns the index
   * after the closing quote, or -1 when the buffer ends inside the string,
   * with `escaped` set when its last byte escapes the next one.
   */
  private skipString(buf: Buffer, i: number, q: number, backslashes: boolean): number {
    const len = buf.length;
    for (;;) {
      const at = buf.indexOf(q, i);
      const stop = at === -1 ? len : at;
      let k = stop;
      if (backslashes) while (k > i && buf[k - 1] === 0x5c) k--;
      const odd = ((stop - k) & 1) === 1;
      if (at === -1) {
        this.escaped = odd;
        return -1;
      }
      i = at + 1;
      if (!odd) return i;
    }
  }

  private addCode(c: number): void {
    if (c <= 0x20) {
      this.addSpace();
      return;
    }
    this.started = true;
    this.pushHead(c);
  }

  private addSpace(): void {
    if (!this.headFrozen && this.headLen > 0 && this.head[this.headLen - 1] !== 0x20) this.pushHead(0x20);
  }

  private pushHead(c: number): void {
    if (this.headLen < HEAD_MAX) this.head[this.headLen++] = c;
    if (this.dest === null && this.headLen >= DEST_AT) this.decide(this.classifyDest());
  }

  private headText(): string {
    return this.head.toString('utf8', 0, this.headLen);
  }

  private classifyDest(): Dest {
    const h = this.headText();
    if (SESSION_STMT.test(h)) return 'both';
    if (DROPPED_STMT.test(h)) return 'none';
    if (TABLE_STMT.test(h)) return 'tables';
    return 'objects';
  }

  /** At the statement's first top-level "(": what it is, and for an INSERT one more row. */
  private topLevelParen(): void {
    if (!this.headFrozen) {
      const h = this.headText();
      this.headFrozen = true;
      let m = INSERT_HEAD.exec(h);
      if (m) {
        this.kind = KIND_INSERT;
        this.table = unquote(m[1]!);
        // INSERT INTO `t` (`a`, `b`) VALUES ...: the first group is the column list.
        this.columnList = m[2] === undefined;
      } else if ((m = CREATE_TABLE_HEAD.exec(h))) {
        this.kind = KIND_CREATE_TABLE;
        this.table = unquote(m[1]!);
      }
    }
    if (this.dest === null) this.decide(this.classifyDest());
    if (this.kind === KIND_INSERT) this.tuples++;
  }

  private decide(dest: Dest): void {
    this.dest = dest;
    if (this.sink && dest !== 'none') for (const p of this.pending) this.sink(dest, p);
    this.pending = [];
  }

  private flushTo(end: number): void {
    if (end > this.emitFrom && this.sink) {
      const slice = this.buf.subarray(this.emitFrom, end);
      if (this.dest === null) this.pending.push(Buffer.from(slice));
      else if (this.dest !== 'none') this.sink(this.dest, slice);
    }
    this.emitFrom = end;
  }

  private endStatement(end: number): void {
    if (this.dest === null) this.decide(this.started ? this.classifyDest() : 'both');
    this.flushTo(end);
    if (this.kind === KIND_INSERT) {
      const n = this.tuples - (this.columnList ? 1 : 0);
      this.rows.set(this.table, (this.rows.get(this.table) ?? 0) + Math.max(0, n));
    } else if (this.kind === KIND_CREATE_TABLE) {
      if (!this.rows.has(this.table)) this.rows.set(this.table, 0);
      this.views.delete(this.table);
    } else if (this.dest === 'objects') {
      // Older dump tools stand in for a view with a table first; the view replaces it.
      const m = VIEW_HEAD.exec(this.headText());
      if (m) {
        const name = unquote(m[1]!);
        this.views.add(name);
        this.rows.delete(name);
      }
    }
    this.resetStatement();
  }

  private finishCommand(): void {
    if (this.commandIsDelimiter) {
      const arg = Buffer.from(this.command).toString('utf8').trim().split(/\s+/)[0] ?? '';
      if (arg !== '') {
        if (arg.length > LOOKAHEAD / 2) throw new Error(`The dump sets a delimiter longer than ${LOOKAHEAD / 2} characters.`);
        this.delim = Buffer.from(arg);
        this.special = specialBytes(this.delim[0]!);
      }
    }
    this.state = CODE;
    if (this.dest === null) this.decide('both');
    this.flushTo(this.emitFrom);
    this.resetStatement();
  }

  private resetStatement(): void {
    this.started = false;
    this.exec = false;
    this.headLen = 0;
    this.headFrozen = false;
    this.dest = null;
    this.pending = [];
    this.depth = 0;
    this.kind = KIND_OTHER;
    this.table = '';
    this.tuples = 0;
    this.columnList = false;
  }
}
