import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DumpScanner, type Part } from './scanner.ts';

// A dump-shaped text with everything that could fool a naive counter:
// delimiters, parentheses and quotes inside strings, escapes, comments,
// column lists, and a routine whose body holds INSERT lines.
const DUMP = [
  '/*M!999999\\- enable the sandbox mode */ ',
  '-- MariaDB dump 10.19 (fake); it\'s "quoted" (1),(2);',
  '/*!40101 SET NAMES utf8mb4 */;',
  '/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE=\'NO_AUTO_VALUE_ON_ZERO\' */;',
  '',
  'DROP TABLE IF EXISTS `t1`;',
  'CREATE TABLE `t1` (',
  '  `id` int(11) NOT NULL,',
  "  `s` text DEFAULT 'x(y);z' COMMENT 'a;b''c',",
  '  PRIMARY KEY (`id`)',
  ') ENGINE=InnoDB;',
  'LOCK TABLES `t1` WRITE;',
  '/*!40000 ALTER TABLE `t1` DISABLE KEYS */;',
  "INSERT INTO `t1` VALUES",
  "(1,'plain'),",
  "(2,'semi;colon (paren) ''doubled'' \\'escaped\\' back\\\\'),",
  "(3,'newline\\nINSERT INTO `t1` VALUES (9);'),",
  '(4,"double \\" quoted ); (x)"),',
  '(5,0x00FF27),',
  '(6,NULL);',
  "INSERT INTO `t1` VALUES (7,'-- not a comment'),(8,'/* nor this */'),(9,'# nor this');",
  '/*!40000 ALTER TABLE `t1` ENABLE KEYS */;',
  'UNLOCK TABLES;',
  '',
  'CREATE TABLE `we``ird; (name)` (',
  '  `a` int',
  ');',
  'INSERT INTO `we``ird; (name)` (`a`) VALUES (1),(2);',
  'CREATE TABLE `empty` (`id` int);',
  '/* a block comment with a quote \' and a ; */',
  '# a hash comment with a quote \'',
  'CREATE TABLE `ünï` (`id` int);',
  'INSERT INTO `ünï` VALUES (1);',
  '/*!50001 CREATE VIEW `v` AS SELECT',
  ' NULL AS `id` */;',
  'DELIMITER ;;',
  'CREATE DEFINER=`root`@`%` PROCEDURE `p`()',
  'begin',
  'INSERT INTO `t1` VALUES (100,\'x\');',
  'INSERT INTO `empty` VALUES (1),(2),(3);',
  'end ;;',
  '/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`%`*/ /*!50003 trigger tr before insert on t1 for each row',
  'INSERT INTO `empty` VALUES (5) */;;',
  'DELIMITER ;',
  'ALTER DATABASE `source_db` CHARACTER SET latin1 ;',
  '/*!50001 CREATE ALGORITHM=UNDEFINED */',
  '/*!50013 DEFINER=`root`@`%` SQL SECURITY DEFINER */',
  '/*!50001 VIEW `v` AS select `t1`.`id` AS `id` from `t1` */;',
  '',
  '-- Dump completed',
  '',
].join('\n');

const EXPECTED = { t1: 9, 'we`ird; (name)': 2, empty: 0, ünï: 1 };

function scan(text: Buffer, chunk: number) {
  const out: Record<Part, Buffer[]> = { tables: [], objects: [], both: [] };
  const order: string[] = [];
  const s = new DumpScanner((part, bytes) => {
    out[part].push(Buffer.from(bytes));
    order.push(part);
  });
  for (let i = 0; i < text.length; i += chunk) s.feed(text.subarray(i, i + chunk));
  s.end();
  const joined = (p: Part) => Buffer.concat(out[p]).toString();
  return { rows: Object.fromEntries(s.rows), views: [...s.views], tables: joined('tables'), objects: joined('objects'), both: joined('both'), total: Buffer.concat([...out.tables, ...out.objects, ...out.both]).length };
}

describe('mysql dump scanner', () => {
  const text = Buffer.from(DUMP);

  it('counts the rows of every table, whatever the strings and comments hold', () => {
    const r = scan(text, 1 << 16);
    assert.deepEqual(r.rows, EXPECTED);
    assert.deepEqual(r.views, ['v']);
  });

  it('gives the same answer for every chunk size', () => {
    const ref = scan(text, 1 << 16);
    for (let size = 1; size <= 80; size++) {
      const r = scan(text, size);
      assert.deepEqual(r.rows, EXPECTED, `chunk size ${size}`);
      assert.equal(r.tables, ref.tables, `chunk size ${size}`);
      assert.equal(r.objects, ref.objects, `chunk size ${size}`);
    }
  });

  it('splits tables from objects and keeps session statements in both', () => {
    const r = scan(text, 1 << 16);
    // every byte lands somewhere, except the dropped ALTER DATABASE
    assert.equal(r.total, text.length - 'ALTER DATABASE `source_db` CHARACTER SET latin1 ;'.length);
    assert.match(r.tables, /INSERT INTO `t1` VALUES\n\(1,'plain'\)/);
    assert.match(r.tables, /CREATE TABLE `empty`/);
    assert.doesNotMatch(r.tables, /PROCEDURE|trigger|VIEW `v`/);
    assert.match(r.objects, /PROCEDURE `p`\(\)\nbegin\nINSERT INTO `t1` VALUES \(100,'x'\);/);
    assert.match(r.objects, /trigger tr before insert/);
    assert.match(r.objects, /VIEW `v` AS select/);
    assert.doesNotMatch(r.objects, /CREATE TABLE|LOCK TABLES|\(1,'plain'\)/);
    assert.doesNotMatch(r.tables + r.objects + r.both, /source_db/);
    assert.match(r.both, /SET NAMES utf8mb4/);
    assert.match(r.both, /DELIMITER ;;\n/);
    assert.match(r.both, /sandbox mode/);
  });

  it('counts without a sink and tolerates a last statement without delimiter', () => {
    const s = new DumpScanner();
    s.feed(Buffer.from("CREATE TABLE `a` (`x` int);\nINSERT INTO `a` VALUES (1),(2),\n(3)"));
    s.end();
    assert.deepEqual(Object.fromEntries(s.rows), { a: 3 });
  });

  it('finds the end of strings whatever backslashes and raw bytes they hold, at every chunk boundary', () => {
    // Values escaped the way mariadb-dump escapes them (mysql_real_escape_string), from random bytes
    // weighted towards quotes and backslashes, so runs of backslashes before a quote are common.
    const esc = (b: Buffer) => {
      const out: number[] = [];
      for (const c of b) {
        const e = ({ 0x00: 0x30, 0x0a: 0x6e, 0x0d: 0x72, 0x1a: 0x5a, 0x27: 0x27, 0x22: 0x22, 0x5c: 0x5c } as Record<number, number>)[c];
        if (e === undefined) out.push(c);
        else out.push(0x5c, e);
      }
      return Buffer.from(out);
    };
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    const pick = [0x27, 0x5c, 0x22, 0x28, 0x29, 0x3b, 0x00, 0x0a, 0x2d, 0x23, 0x2f, 0x2a, 0x60];
    const value = () => Buffer.from(Array.from({ length: Math.floor(rand() * 12) }, () => (rand() < 0.6 ? pick[Math.floor(rand() * pick.length)]! : Math.floor(rand() * 256))));
    const parts: Buffer[] = [Buffer.from('CREATE TABLE `b` (`x` blob, `y` text);\n')];
    let rows = 0;
    for (let s = 0; s < 20; s++) {
      parts.push(Buffer.from('INSERT INTO `b` VALUES '));
      const n = 1 + Math.floor(rand() * 5);
      for (let r = 0; r < n; r++) {
        parts.push(Buffer.from(r > 0 ? ",('" : "('"), esc(value()), Buffer.from("',\""), esc(value()), Buffer.from('")'));
        rows++;
      }
      parts.push(Buffer.from(';\n'));
    }
    // the edge cases by name: a string of only backslashes, one ending in an escaped backslash, an escaped quote at the end
    parts.push(Buffer.from("INSERT INTO `b` VALUES ('\\\\','a\\\\'),('\\'','\\\\\\''),('','');\n"));
    rows += 3;
    const text = Buffer.concat(parts);
    const ref = scan(text, 1 << 16);
    assert.deepEqual(ref.rows, { b: rows });
    // every statement lands in the table part; the last newline, a statement of its own, in both
    assert.equal(ref.tables, text.subarray(0, -1).toString());
    for (let size = 1; size <= 70; size++) {
      const r = scan(text, size);
      assert.deepEqual(r.rows, { b: rows }, `chunk size ${size}`);
      assert.equal(r.tables, ref.tables, `chunk size ${size}`);
    }
  });

  it('counts rows through long runs of plain bytes (hex blobs, numbers) at every chunk boundary', () => {
    // The tuples' plain bytes are skipped several at a time: runs of every length, ending in
    // every kind of byte the lexer must stop at, must still be seen whole.
    let seed = 11;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    const hex = (n: number) => Array.from({ length: n }, () => '0123456789ABCDEF'[Math.floor(rand() * 16)]).join('');
    const parts = ['CREATE TABLE `h` (`id` bigint, `b` blob, `d` decimal(20,2), `s` text);\n'];
    let rows = 0;
    for (let len = 0; len < 40; len++) {
      const tuples = Array.from({ length: 1 + (len % 3) }, (_, k) => {
        rows++;
        const blob = len === 0 && k === 0 ? "''" : `0x${hex(len * 7 + k)}`;
        // a string right after the run, holding what would end a statement or open a tuple
        return `(${1234567890123 + len},${blob},${len}.${k}5,'x${hex(len)};(y)')`;
      });
      parts.push(`INSERT INTO \`h\` VALUES ${tuples.join(',')};\n`);
    }
    // a comment and a backquote right after long runs: the general lexer takes over there
    parts.push(`INSERT INTO \`h\` VALUES (1,0x${hex(33)}/* (2),(3) */),(2,0x${hex(9)}) -- (4),(5)\n;\n`);
    rows += 2;
    parts.push(`INSERT INTO \`h\` (\`id\`,\`b\`) VALUES (3,0x${hex(21)}),(4,\`b\`);\n`);
    rows += 2;
    // another delimiter whose first byte is a plain byte elsewhere: the runs stop at it
    parts.push(`DELIMITER 9Z\nINSERT INTO \`h\` VALUES (5,0x${hex(17)}),(6,123456789)9Z\nINSERT INTO \`h\` VALUES (7,0x0123456789AB) 9Z\nDELIMITER ;\n`);
    rows += 3;
    const text = Buffer.from(parts.join(''));
    const ref = scan(text, 1 << 16);
    assert.deepEqual(ref.rows, { h: rows });
    // every byte lands somewhere; the statement ended by the other delimiter is whole in the table part
    assert.equal(ref.total, text.length);
    assert.ok(ref.tables.endsWith(`,(6,123456789)9Z\nINSERT INTO \`h\` VALUES (7,0x0123456789AB) 9Z`));
    assert.ok(ref.both.endsWith('\nDELIMITER ;\n'));
    for (let size = 1; size <= 80; size++) {
      const r = scan(text, size);
      assert.deepEqual(r.rows, { h: rows }, `chunk size ${size}`);
      assert.equal(r.tables, ref.tables, `chunk size ${size}`);
      assert.equal(r.both, ref.both, `chunk size ${size}`);
    }
  });
});
