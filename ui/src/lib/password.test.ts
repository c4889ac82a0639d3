import { describe, expect, it } from 'vitest';
import { failedRules, isAcceptable, newPasswordReady, rulesFromDetails } from './password';

describe('password policy (mirrors corral-core)', () => {
  it("accepts the brief's example", () => {
    expect(failedRules('SecurePass123!')).toEqual([]);
    expect(isAcceptable('SecurePass123!')).toBe(true);
  });

  it('names each failed rule like the server', () => {
    expect(failedRules('Sh0rt!')).toEqual(['min_length']);
    expect(failedRules('securepass123!')).toEqual(['uppercase']);
    expect(failedRules('SECUREPASS123!')).toEqual(['lowercase']);
    expect(failedRules('SecurePass!!!')).toEqual(['digit']);
    expect(failedRules('SecurePass123')).toEqual(['symbol']);
    expect(failedRules('Aa1!' + 'x'.repeat(300))).toEqual(['max_length']);
    expect(failedRules('')).toEqual(['min_length', 'uppercase', 'lowercase', 'digit', 'symbol']);
  });

  it('counts code points and Unicode letters as the server does', () => {
    expect(failedRules('Ünïcødé1!')).toEqual([]);
    // Seven emoji are 14 UTF-16 units but 7 characters: still too short.
    expect(failedRules('Aa1!😀😀😀').includes('min_length')).toBe(true);
    // A space is not a symbol; a Japanese letter is not a symbol either.
    expect(failedRules('Abcdefg1 ')).toEqual(['symbol']);
    expect(failedRules('Abcdefg1あ')).toEqual(['symbol']);
    expect(failedRules('Abcdefg1、')).toEqual([]);
  });

  it('reads failed_rules from error details, ignoring junk', () => {
    expect(rulesFromDetails({ failed_rules: ['digit', 'nope', 3] })).toEqual(['digit']);
    expect(rulesFromDetails(undefined)).toEqual([]);
  });

  it('sends a new password only when acceptable and, where asked twice, repeated', () => {
    expect(newPasswordReady('SecurePass123!', 'SecurePass123!')).toBe(true);
    expect(newPasswordReady('SecurePass123!', 'SecurePass123?')).toBe(false);
    expect(newPasswordReady('SecurePass123!', '')).toBe(false);
    expect(newPasswordReady('weak', 'weak')).toBe(false);
    // No confirmation field (an administrator creating a user): acceptable is enough.
    expect(newPasswordReady('SecurePass123!')).toBe(true);
    expect(newPasswordReady('weak')).toBe(false);
  });
});
