// The server's auth mode (GET /api/auth/config) and what it changes in the UI. In `cognito`
// mode accounts live in an Amazon Cognito user pool: Cognito e-mails codes instead of
// links, and passwords, MFA enrolment and roles are managed in the pool, not in Corral.

import type { Schemas } from '../api/types';

export type AuthMode = Schemas['Mode'];
export type AuthConfig = Schemas['AuthConfig'];

/** What a server that predates /api/auth/config (or cannot be asked) behaves like. */
export const BUILTIN: AuthConfig = { mode: 'builtin', signup_enabled: true, setup_available: true };

/** Reads the server's answer field by field; anything unexpected keeps the built-in value. */
export function parseAuthConfig(raw: unknown): AuthConfig {
  if (typeof raw !== 'object' || raw === null) return BUILTIN;
  const r = raw as Record<string, unknown>;
  const bool = (v: unknown, fallback: boolean) => (typeof v === 'boolean' ? v : fallback);
  return {
    mode: r.mode === 'cognito' ? 'cognito' : 'builtin',
    signup_enabled: bool(r.signup_enabled, BUILTIN.signup_enabled),
    setup_available: bool(r.setup_available, BUILTIN.setup_available),
  };
}

/** The pieces of the UI that depend on the mode. */
export interface AuthFeatures {
  /** Sign-up and reset mail a code that is typed in with the address, not a link. */
  codes: boolean;
  /** Corral's own password change and TOTP enrolment on the profile page. */
  localCredentials: boolean;
  /** The first-admin setup page (cognito mode has none: admins are the pool's group). */
  setup: boolean;
  /** Accounts and roles are edited in Corral's admin pages (not in the pool's groups). */
  localAccounts: boolean;
}

export function features(config: AuthConfig): AuthFeatures {
  const cognito = config.mode === 'cognito';
  return { codes: cognito, localCredentials: !cognito, setup: !cognito, localAccounts: !cognito };
}

/** The body of POST /api/auth/verify: the mailed link's token, or the address and code. */
export function verifyBody(mode: AuthMode, v: { token?: string; email?: string; code?: string }): Schemas['TokenRequest'] {
  // Cognito's mailed code goes in `token`, the field the API documents for both.
  return mode === 'cognito' ? { email: (v.email ?? '').trim(), token: (v.code ?? '').trim() } : { token: v.token ?? '' };
}

/** The body of POST /api/auth/reset-password/confirm in each mode. */
export function resetConfirmBody(
  mode: AuthMode,
  v: { token?: string; email?: string; code?: string; password: string; confirm: string },
): Schemas['ResetConfirmRequest'] {
  const passwords = { password: v.password, confirmPassword: v.confirm };
  return mode === 'cognito'
    ? { email: (v.email ?? '').trim(), token: (v.code ?? '').trim(), ...passwords }
    : { token: v.token ?? '', ...passwords };
}

/** Cognito's codes are 6 digits; the server gives the final word. */
export function looksLikeCode(code: string): boolean {
  return /^\d{6}$/.test(code.trim());
}

let cached: Promise<AuthConfig> | null = null;

/**
 * The server's auth config, fetched once per page load (it changes only with a restart).
 * A failed fetch is not cached, so the next screen asks again.
 */
export function loadAuthConfig(fetchFn: typeof fetch = fetch): Promise<AuthConfig> {
  if (!cached) {
    cached = fetchFn('/api/auth/config', { credentials: 'same-origin' })
      .then(async (res) => {
        if (!res.ok) throw new Error(`GET /api/auth/config: ${res.status}`);
        return parseAuthConfig(await res.json());
      })
      .catch(() => {
        cached = null;
        return BUILTIN;
      });
  }
  return cached;
}

/** Forgets the cached config (tests). */
export function resetAuthConfigCache() {
  cached = null;
}

/**
 * In cognito mode a wrong confirmation or reset code comes back as `invalid_token` (the
 * built-in mode's "bad link" code); on a code form it reads as a wrong code.
 */
export function codeError(err: unknown): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (code !== 'invalid_token') return err;
  return { code: 'invalid_confirmation_code', message: (err as { message?: string }).message };
}
