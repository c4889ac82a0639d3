import { afterEach, describe, expect, it } from 'vitest';
import {
  BUILTIN,
  codeError,
  features,
  loadAuthConfig,
  looksLikeCode,
  parseAuthConfig,
  resetAuthConfigCache,
  resetConfirmBody,
  verifyBody,
} from './mode';

const cognito = { mode: 'cognito', signup_enabled: true, setup_available: false } as const;

describe('parseAuthConfig', () => {
  it('reads both modes', () => {
    expect(parseAuthConfig(cognito)).toEqual(cognito);
    expect(parseAuthConfig({ mode: 'builtin', signup_enabled: false, setup_available: true })).toEqual({
      mode: 'builtin',
      signup_enabled: false,
      setup_available: true,
    });
  });
  it('falls back to the built-in behaviour for anything unexpected', () => {
    expect(parseAuthConfig(null)).toEqual(BUILTIN);
    expect(parseAuthConfig('cognito')).toEqual(BUILTIN);
    expect(parseAuthConfig({ mode: 'saml', signup_enabled: 'no' })).toEqual(BUILTIN);
  });
});

describe('features', () => {
  it('cognito: codes, no local password, MFA, setup or account editing', () => {
    expect(features(cognito)).toEqual({ codes: true, localCredentials: false, setup: false, localAccounts: false });
    // Even if a server said setup was available, cognito mode has none.
    expect(features({ ...cognito, setup_available: true }).setup).toBe(false);
  });
  it('builtin: everything as before, whatever else the server says', () => {
    const all = { codes: false, localCredentials: true, setup: true, localAccounts: true };
    expect(features(BUILTIN)).toEqual(all);
    expect(features({ ...BUILTIN, setup_available: false, signup_enabled: false })).toEqual(all);
  });
});

describe('request bodies', () => {
  it('verify: the token in builtin mode, the address and code in cognito mode', () => {
    expect(verifyBody('builtin', { token: 'tok', email: 'a@b.c', code: '1' })).toEqual({ token: 'tok' });
    expect(verifyBody('cognito', { token: 'tok', email: ' a@b.c ', code: ' 123456 ' })).toEqual({
      email: 'a@b.c',
      token: '123456',
    });
  });
  it('reset confirm', () => {
    const passwords = { password: 'Aa1!aaaa', confirm: 'Aa1!aaaa' };
    expect(resetConfirmBody('builtin', { token: 'tok', ...passwords })).toEqual({
      token: 'tok',
      password: 'Aa1!aaaa',
      confirmPassword: 'Aa1!aaaa',
    });
    expect(resetConfirmBody('cognito', { email: 'a@b.c', code: '654321', ...passwords })).toEqual({
      email: 'a@b.c',
      token: '654321',
      password: 'Aa1!aaaa',
      confirmPassword: 'Aa1!aaaa',
    });
  });
  it('codes are six digits', () => {
    expect(looksLikeCode(' 012345 ')).toBe(true);
    expect(looksLikeCode('12345')).toBe(false);
    expect(looksLikeCode('abcdef')).toBe(false);
  });
});

describe('loadAuthConfig', () => {
  afterEach(resetAuthConfigCache);

  it('asks once per page load', async () => {
    let calls = 0;
    const fetchFn = (async () => {
      calls++;
      return new Response(JSON.stringify(cognito), { status: 200 });
    }) as typeof fetch;
    expect(await loadAuthConfig(fetchFn)).toEqual(cognito);
    expect(await loadAuthConfig(fetchFn)).toEqual(cognito);
    expect(calls).toBe(1);
  });

  it('a failure answers built-in and is asked again next time', async () => {
    let calls = 0;
    const failing = (async () => {
      calls++;
      return new Response('', { status: 503 });
    }) as typeof fetch;
    expect(await loadAuthConfig(failing)).toEqual(BUILTIN);
    const offline = (async () => {
      calls++;
      throw new TypeError('offline');
    }) as typeof fetch;
    expect(await loadAuthConfig(offline)).toEqual(BUILTIN);
    const ok = (async () => {
      calls++;
      return new Response(JSON.stringify(cognito), { status: 200 });
    }) as typeof fetch;
    expect(await loadAuthConfig(ok)).toEqual(cognito);
    expect(calls).toBe(3);
  });
});

describe('codeError', () => {
  it('reads a refused code as a wrong code, and leaves other errors alone', () => {
    expect(codeError({ code: 'invalid_token', message: 'm' })).toEqual({ code: 'invalid_confirmation_code', message: 'm' });
    const other = { code: 'rate_limited' };
    expect(codeError(other)).toBe(other);
    expect(codeError(null)).toBe(null);
  });
});
