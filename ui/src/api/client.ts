// The API client and the browser session.
//
// * The access token lives only in this module's memory: never in localStorage, never in
//   a cookie a script can read. A reload loses it on purpose.
// * The refresh token lives only in the server's httpOnly `corral_refresh` cookie
//   (SameSite=Strict, Path=/api/auth). `POST /api/auth/refresh` with that cookie gives a
//   new access token: on load, shortly before the access token expires, and once after a
//   401. The refresh token in JSON answers is ignored.
// * Refresh tokens rotate and a reused one signs the whole login out, so refreshes are
//   serialised: one in flight per tab, and across tabs through the Web Locks API.

import type { LoginResponse, Schemas, TokenPair, User } from './types';

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: unknown;
  /** Seconds from a Retry-After header (429). */
  readonly retryAfter: number | null;

  constructor(status: number, code: string, message: string, details?: unknown, retryAfter?: number | null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details;
    this.retryAfter = retryAfter ?? null;
  }
}

export interface Session {
  user: User;
  /** Epoch milliseconds at which the access token expires. */
  expiresAt: number;
}

type Listener = (session: Session | null) => void;

export interface ClientDeps {
  fetch: typeof fetch;
  now: () => number;
  setTimer: (fn: () => void, ms: number) => unknown;
  clearTimer: (handle: unknown) => void;
  /** Runs `fn` holding a lock shared by every tab of this origin, when the browser has one. */
  withLock: <T>(fn: () => Promise<T>) => Promise<T>;
  /** Tells the other tabs about a login or logout. */
  broadcast: (event: 'login' | 'logout') => void;
  /**
   * Whether this browser probably holds a refresh cookie. Scripts cannot see the httpOnly
   * cookie itself, so a flag (not a secret) remembers that a login happened; without it
   * the silent refresh is skipped, sparing every visit to the login page a refused
   * request (and its audit row and rate-limit cost).
   */
  hint: { get: () => boolean; set: (signedIn: boolean) => void };
}

/** Refresh at 80 % of the access token's life, and at least this long before it expires. */
export const REFRESH_MARGIN_MS = 60_000;
/** A token this close to expiry is refreshed before a request rather than after its 401. */
const STALE_MS = 10_000;

export function refreshDelay(expiresInSec: number): number {
  const life = expiresInSec * 1000;
  // Very short lives (tests) refresh at half-life rather than right away.
  return Math.max(1_000, life * 0.5, Math.min(life - REFRESH_MARGIN_MS, life * 0.8));
}

function isTokenPair(r: LoginResponse): r is TokenPair {
  return typeof (r as TokenPair).access_token === 'string';
}

export type LoginResult = { kind: 'signed_in'; user: User } | { kind: 'mfa'; mfaToken: string };

export interface RequestOptions {
  /** Send the bearer token and retry once after refreshing on 401 (default true). */
  auth?: boolean;
  query?: Record<string, string | number | undefined | null>;
  signal?: AbortSignal;
}

export class ApiClient {
  private token: string | null = null;
  private session: Session | null = null;
  private timer: unknown = null;
  private inflight: Promise<Session | null> | null = null;
  private listeners = new Set<Listener>();
  private readonly deps: ClientDeps;

  constructor(deps: ClientDeps) {
    this.deps = deps;
  }

  get current(): Session | null {
    return this.session;
  }

  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  // ---- session -------------------------------------------------------------------

  private setSession(pair: TokenPair) {
    this.token = pair.access_token;
    this.deps.hint.set(true);
    this.session = { user: pair.user, expiresAt: this.deps.now() + pair.expires_in * 1000 };
    if (this.timer !== null) this.deps.clearTimer(this.timer);
    this.timer = this.deps.setTimer(() => {
      this.timer = null;
      void this.refresh().catch(() => undefined);
    }, refreshDelay(pair.expires_in));
    this.emit();
  }

  /** Forgets the session in this tab (the server side is untouched). */
  clear() {
    const had = this.session !== null;
    this.deps.hint.set(false);
    this.token = null;
    this.session = null;
    if (this.timer !== null) this.deps.clearTimer(this.timer);
    this.timer = null;
    if (had) this.emit();
  }

  /** Replaces the user shown for the session, e.g. after a profile change. */
  updateUser(user: User) {
    if (!this.session) return;
    this.session = { ...this.session, user };
    this.emit();
  }

  private emit() {
    for (const fn of this.listeners) fn(this.session);
  }

  /**
   * Exchanges the refresh cookie for a new access token. Resolves to the session, or
   * null when there is none (no cookie, expired, revoked). Concurrent calls share one
   * request. Network failures reject and leave the session as it was.
   */
  refresh(): Promise<Session | null> {
    if (!this.session && !this.deps.hint.get()) return Promise.resolve(null);
    if (!this.inflight) {
      this.inflight = this.deps
        .withLock(() => this.doRefresh())
        .finally(() => {
          this.inflight = null;
        });
    }
    return this.inflight;
  }

  private async doRefresh(): Promise<Session | null> {
    let res: Response;
    try {
      res = await this.deps.fetch('/api/auth/refresh', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: '{}',
        credentials: 'same-origin',
      });
    } catch (e) {
      throw new ApiError(0, 'network', e instanceof Error ? e.message : String(e));
    }
    if (res.ok) {
      this.setSession((await res.json()) as TokenPair);
      return this.session;
    }
    if (res.status === 401 || res.status === 403) {
      this.clear();
      return null;
    }
    throw await toError(res);
  }

  // ---- requests ------------------------------------------------------------------

  async request<T>(method: string, path: string, body?: unknown, opts: RequestOptions = {}): Promise<T> {
    const auth = opts.auth ?? true;
    if (auth && this.session && this.session.expiresAt - this.deps.now() < STALE_MS) {
      await this.refresh().catch(() => undefined);
    }
    let res = await this.send(method, path, body, auth, opts);
    // Only a refused credential (`unauthorized`: expired or revoked token) is worth a
    // refresh; other 401s are answers about the request (`invalid_code`, ...).
    if (res.status === 401 && auth && this.token !== null && (await errorCode(res)) === 'unauthorized') {
      const renewed = await this.refresh().catch(() => null);
      if (renewed) res = await this.send(method, path, body, auth, opts);
      else this.clear();
    }
    if (!res.ok) throw await toError(res);
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  private async send(method: string, path: string, body: unknown, auth: boolean, opts: RequestOptions) {
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (auth && this.token) headers.Authorization = `Bearer ${this.token}`;
    try {
      return await this.deps.fetch(path + queryString(opts.query), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: 'same-origin',
        signal: opts.signal,
      });
    } catch (e) {
      if (e instanceof DOMException && e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network', e instanceof Error ? e.message : String(e));
    }
  }

  /**
   * A plain fetch with the bearer token (refreshed once after a 401), for answers read
   * as a stream (chat NDJSON, log SSE): EventSource cannot send Authorization headers.
   * Rejects with an ApiError when the answer is not 2xx.
   */
  async fetchAuth(path: string, init: RequestInit = {}): Promise<Response> {
    if (this.session && this.session.expiresAt - this.deps.now() < STALE_MS) {
      await this.refresh().catch(() => undefined);
    }
    const go = () => {
      const headers: Record<string, string> = { ...(init.headers as Record<string, string> | undefined) };
      if (this.token) headers.Authorization = `Bearer ${this.token}`;
      return this.deps.fetch(path, { ...init, headers, credentials: 'same-origin' });
    };
    let res = await go();
    if (res.status === 401 && this.token !== null) {
      const renewed = await this.refresh().catch(() => null);
      if (renewed) res = await go();
    }
    if (!res.ok) throw await toError(res);
    return res;
  }

  get<T>(path: string, query?: RequestOptions['query'], signal?: AbortSignal) {
    return this.request<T>('GET', path, undefined, { query, signal });
  }
  post<T>(path: string, body: unknown = {}, opts?: RequestOptions) {
    return this.request<T>('POST', path, body, opts);
  }
  put<T>(path: string, body: unknown) {
    return this.request<T>('PUT', path, body);
  }
  del<T = void>(path: string) {
    return this.request<T>('DELETE', path);
  }

  // ---- auth flows ----------------------------------------------------------------

  async login(email: string, password: string): Promise<LoginResult> {
    const r = await this.post<LoginResponse>('/api/auth/login', { email, password } satisfies Schemas['LoginRequest'], { auth: false });
    return this.signedIn(r);
  }

  async completeMfa(mfaToken: string, code: string): Promise<LoginResult> {
    const r = await this.post<LoginResponse>('/api/auth/mfa/verify', { mfa_token: mfaToken, code } satisfies Schemas['MfaVerifyRequest'], {
      auth: false,
    });
    return this.signedIn(r);
  }

  async setup(body: Schemas['SetupRequest']) {
    const r = await this.post<TokenPair>('/api/auth/setup', body, { auth: false });
    return this.signedIn(r);
  }

  private signedIn(r: LoginResponse): LoginResult {
    if (!isTokenPair(r)) return { kind: 'mfa', mfaToken: r.mfa_token };
    this.setSession(r);
    this.deps.broadcast('login');
    return { kind: 'signed_in', user: r.user };
  }

  /** Ends the session on the server (which deletes the cookie) and here; never throws. */
  async logout() {
    try {
      await this.send('POST', '/api/auth/logout', {}, true, {});
    } catch {
      // Offline: the cookie stays until it expires, but this tab forgets the session.
    }
    this.clear();
    this.deps.broadcast('logout');
  }
}

function queryString(query: RequestOptions['query']): string {
  if (!query) return '';
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : '';
}

async function errorCode(res: Response): Promise<string | null> {
  try {
    const body = (await res.clone().json()) as { error?: { code?: string } };
    return body?.error?.code ?? null;
  } catch {
    return null;
  }
}

export async function toError(res: Response): Promise<ApiError> {
  const retry = res.headers.get('Retry-After');
  const retryAfter = retry && /^\d+$/.test(retry) ? Number(retry) : null;
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string; details?: unknown } };
    if (body?.error?.code) {
      return new ApiError(res.status, body.error.code, body.error.message ?? '', body.error.details, retryAfter);
    }
  } catch {
    // Not JSON (a proxy's error page): fall through.
  }
  return new ApiError(res.status, `http_${res.status}`, res.statusText || `HTTP ${res.status}`, undefined, retryAfter);
}

// ---- the app's instance -------------------------------------------------------------

const HINT_KEY = 'corral.signedIn';

const channel: BroadcastChannel | null =
  typeof BroadcastChannel === 'undefined' ? null : new BroadcastChannel('corral-auth');

function browserLock<T>(fn: () => Promise<T>): Promise<T> {
  const locks = typeof navigator === 'undefined' ? undefined : navigator.locks;
  return locks ? (locks.request('corral-refresh', fn) as Promise<T>) : fn();
}

export const api = new ApiClient({
  fetch: (...args) => fetch(...args),
  now: () => Date.now(),
  setTimer: (fn, ms) => setTimeout(fn, ms),
  clearTimer: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
  withLock: browserLock,
  broadcast: (event) => channel?.postMessage(event),
  hint: {
    get: () => {
      try {
        return localStorage.getItem(HINT_KEY) === '1';
      } catch {
        return true; // Storage blocked: always try the cookie.
      }
    },
    set: (signedIn) => {
      try {
        if (signedIn) localStorage.setItem(HINT_KEY, '1');
        else localStorage.removeItem(HINT_KEY);
      } catch {
        // Storage blocked: the refresh is simply always tried.
      }
    },
  },
});

if (channel) {
  channel.onmessage = (e: MessageEvent) => {
    // Another tab logged out: the cookie is gone, so this tab's session is over too.
    if (e.data === 'logout') api.clear();
    // Another tab logged in: pick up a session of our own from the shared cookie.
    if (e.data === 'login' && !api.current) void api.refresh().catch(() => undefined);
  };
}

if (typeof document !== 'undefined') {
  // Timers do not run while a laptop sleeps: check on return.
  document.addEventListener('visibilitychange', () => {
    const s = api.current;
    if (document.visibilityState === 'visible' && s && s.expiresAt - Date.now() < REFRESH_MARGIN_MS) {
      void api.refresh().catch(() => undefined);
    }
  });
}
