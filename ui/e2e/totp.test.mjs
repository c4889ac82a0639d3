import { describe, expect, it } from 'vitest';
import { base32Decode, hotp, totp } from './totp.mjs';

describe('TOTP helper used by the e2e test', () => {
  it('matches the RFC 6238 SHA-1 test vectors', () => {
    // Secret "12345678901234567890" (ASCII) is GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ in base32.
    const secret = 'GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ';
    expect(base32Decode(secret).toString('ascii')).toBe('12345678901234567890');
    expect(totp(secret, 59, 8)).toBe('94287082');
    expect(totp(secret, 1111111109, 8)).toBe('07081804');
    expect(totp(secret, 2000000000, 8)).toBe('69279037');
  });
  it('matches the RFC 4226 HOTP vectors', () => {
    const key = Buffer.from('12345678901234567890');
    expect([0, 1, 2, 9].map((c) => hotp(key, c))).toEqual(['755224', '287082', '359152', '520489']);
  });
});
