// CPU time of this process's parts, from /proc (Linux): what the engine and
// codec scripts compare, since wall time on a shared 2-core machine is noise.
import { readFileSync } from 'node:fs';

/** Clock ticks per second of /proc's utime/stime fields (USER_HZ: 100 on every Linux kernel we run on). */
const TICK = 100;

/** Fields of a /proc stat line after the command name; f[0] is field 3 (state). */
function statFields(path: string): string[] {
  const stat = readFileSync(path, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** CPU seconds of waited-for children (cutime + cstime, fields 16 and 17). */
export function childCpu(): number {
  const f = statFields('/proc/self/stat');
  return (Number(f[13]) + Number(f[14])) / TICK;
}

/** CPU seconds of the main thread (the event loop) alone: its task's utime + stime (fields 14 and 15). */
export function mainThreadCpu(): number {
  const f = statFields(`/proc/self/task/${process.pid}/stat`);
  return (Number(f[11]) + Number(f[12])) / TICK;
}
