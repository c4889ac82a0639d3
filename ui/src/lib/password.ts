// The server's password policy (corral-core/src/password.rs), mirrored for live feedback.
// The server stays the authority: its 400 `weak_password` names the failed rules too.

export const MIN_LEN = 8;
export const MAX_LEN = 256;

export type Rule = 'min_length' | 'max_length' | 'uppercase' | 'lowercase' | 'digit' | 'symbol';

/** Rules in the order the checklist shows them; `max_length` only appears when broken. */
export const RULES: readonly Rule[] = ['min_length', 'uppercase', 'lowercase', 'digit', 'symbol'];

const UPPER = /\p{Uppercase}/u;
const LOWER = /\p{Lowercase}/u;
const DIGIT = /[0-9]/;
// Rust's `!c.is_alphanumeric() && !c.is_whitespace()`: neither a letter/number nor space.
const SYMBOL = /[^\p{Alphabetic}\p{N}\p{White_Space}]/u;

/** Every rule `password` breaks, like the server's `password::check`; empty means acceptable. */
export function failedRules(password: string): Rule[] {
  const failed: Rule[] = [];
  // Code points, not UTF-16 units, as Rust's chars().count().
  const len = [...password].length;
  if (len < MIN_LEN) failed.push('min_length');
  if (len > MAX_LEN) failed.push('max_length');
  if (!UPPER.test(password)) failed.push('uppercase');
  if (!LOWER.test(password)) failed.push('lowercase');
  if (!DIGIT.test(password)) failed.push('digit');
  if (!SYMBOL.test(password)) failed.push('symbol');
  return failed;
}

export function isAcceptable(password: string): boolean {
  return failedRules(password).length === 0;
}

/** The server's `details.failed_rules` from a 400 `weak_password`, keeping known names only. */
export function rulesFromDetails(details: unknown): Rule[] {
  const known = new Set<string>([...RULES, 'max_length']);
  const list = (details as { failed_rules?: unknown } | undefined)?.failed_rules;
  return Array.isArray(list) ? (list.filter((r) => typeof r === 'string' && known.has(r)) as Rule[]) : [];
}

/** Whether a new password may be sent: acceptable, and repeated exactly where it is asked twice. */
export function newPasswordReady(password: string, confirm?: string): boolean {
  return isAcceptable(password) && (confirm === undefined || password === confirm);
}
