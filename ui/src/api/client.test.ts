import { describe, expect, it } from 'vitest';
import { ApiClient, ApiError, refreshDelay, type ClientDeps } from './client';
import type { TokenPair, User } from './types';

const user: User = {
  id: 'u1',
  email: 'a@example.com',
  display_name: 'a',
  role: 'user',
  email_verified: true,
  mfa_enabled: false,
  disabled: false,
  created_at: '2024-01-01T00:00:00Z',
  last_login_at: null,
};

function pair(token: string, expiresIn = 900): TokenPair {
  return { access_token: token, refresh_token: 'ignored', token_type: 'Bearer', expires_in: expiresIn, user };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}) {
  return new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers },
  });
}

type Handler = (url: string, init: RequestInit) => Response | Promise<Response>;

function harness(handler: Handler) {
  let now = 1_000_000;
  const timers: { fn: () => void; at: number }[] = [];
  const calls: { url: string; auth: string | null; body: string | null }[] = [];
  const broadcasts: string[] = [];
  let locked = 0;
  let hinted = true;
  const deps: ClientDeps = {
    fetch: (async (input: RequestInfo | URL, init?: RequestInit) => {
      const url = String(input);
      const headers = (init?.headers ?? {}) as Record<string, string>;
      calls.push({ url, auth: headers.Authorization ?? null, body: (init?.body as string) ?? null });
      return handler(url, init ?? {});
    }) as typeof fetch,
    now: () => now,
    setTimer: (fn, ms) => {
      const t = { fn, at: now + ms };
      timers.push(t);
      return t;
    },
    clearTimer: (h) => {
      const i = timers.indexOf(h as (typeof timers)[number]);
      if (i >= 0) timers.splice(i, 1);
    },
    withLock: async (fn) => {
      locked++;
      try {
        return await fn();
      } finally {
        locked--;
      }
    },
    broadcast: (e) => broadcasts.push(e),
    hint: { get: () => hinted, set: (v) => (hinted = v) },
  };
  const client = new ApiClient(deps);
  return {
    client,
    calls,
    timers,
    broadcasts,
    get locked() {
      return locked;
    },
    get hinted() {
      return hinted;
    },
    set hinted(v: boolean) {
      hinted = v;
    },
    advance(ms: number) {
      now += ms;
      for (const t of [...timers].sort((a, b) => a.at - b.at)) {
        if (t.at <= now) {
          timers.splice(timers.indexOf(t), 1);
          t.fn();
        }
      }
    },
  };
}

describe('refreshDelay', () => {
  it('refreshes at 80 % of the token life, and at least a minute early', () => {
    expect(refreshDelay(900)).toBe(720_000); // 15 min: at 12 min
    expect(refreshDelay(3600)).toBe(2_880_000);
    expect(refreshDelay(200)).toBe(140_000); // a minute early beats 80 % (160 s)
    expect(refreshDelay(30)).toBe(15_000); // half-life for very short tokens
    expect(refreshDelay(0)).toBe(1_000);
  });
});

describe('ApiClient session handling', () => {
  it('silently restores a session from the refresh cookie and keeps the token in memory', async () => {
    const h = harness((url) => (url === '/api/auth/refresh' ? json(200, pair('t1')) : json(200, { ok: true })));
    const s = await h.client.refresh();
    expect(s?.user.email).toBe('a@example.com');
    await h.client.get('/api/user/profile');
    expect(h.calls[1].auth).toBe('Bearer t1');
    expect(h.calls[0].body).toBe('{}');
  });

  it('treats a 401 from refresh as signed out and forgets the hint', async () => {
    const h = harness(() => json(401, { error: { code: 'invalid_refresh_token', message: 'x' } }));
    expect(await h.client.refresh()).toBeNull();
    expect(h.client.current).toBeNull();
    expect(h.hinted).toBe(false);
  });

  it('skips the silent refresh when this browser never signed in, and remembers logins', async () => {
    const h = harness((url) =>
      url === '/api/auth/login' ? json(200, pair('t1')) : new Response(null, { status: 204 }),
    );
    h.hinted = false;
    expect(await h.client.refresh()).toBeNull();
    expect(h.calls).toHaveLength(0);
    await h.client.login('a@example.com', 'pw');
    expect(h.hinted).toBe(true);
    await h.client.logout();
    expect(h.hinted).toBe(false);
  });

  it('shares one refresh between concurrent callers, under the cross-tab lock', async () => {
    let n = 0;
    const h = harness(async () => {
      n++;
      await new Promise((r) => setTimeout(r, 5));
      return json(200, pair(`t${n}`));
    });
    const [a, b, c] = await Promise.all([h.client.refresh(), h.client.refresh(), h.client.refresh()]);
    expect(n).toBe(1);
    expect(a).toBe(b);
    expect(b).toBe(c);
    expect(h.locked).toBe(0);
  });

  it('refreshes once on 401 and retries the request once', async () => {
    let token = 't1';
    const h = harness((url, init) => {
      if (url === '/api/auth/refresh') {
        token = 't2';
        return json(200, pair('t2'));
      }
      const auth = (init.headers as Record<string, string>).Authorization;
      return auth === `Bearer ${token}` && token === 't2'
        ? json(200, { ok: 1 })
        : json(401, { error: { code: 'unauthorized', message: 'expired' } });
    });
    await h.client.refresh(); // t2 issued, but pretend the server then rotated keys
    token = 'tX';
    // The first try fails with 401, the refresh issues t2 again, the retry succeeds.
    const res = await h.client.get<{ ok: number }>('/api/keys');
    expect(res).toEqual({ ok: 1 });
    const urls = h.calls.map((c) => c.url);
    expect(urls).toEqual(['/api/auth/refresh', '/api/keys', '/api/auth/refresh', '/api/keys']);
  });

  it('gives up after one retry and signs out when the refresh fails', async () => {
    const h = harness((url) =>
      url === '/api/auth/refresh' && h.calls.length === 1
        ? json(200, pair('t1'))
        : json(401, { error: { code: h.calls.length === 3 ? 'invalid_refresh_token' : 'unauthorized', message: 'no' } }),
    );
    await h.client.refresh();
    await expect(h.client.get('/api/keys')).rejects.toMatchObject({ status: 401 });
    expect(h.calls.map((c) => c.url)).toEqual(['/api/auth/refresh', '/api/keys', '/api/auth/refresh']);
    expect(h.client.current).toBeNull();
  });

  it('does not refresh for 401 answers about the request itself', async () => {
    const h = harness((url) =>
      url === '/api/auth/refresh' ? json(200, pair('t1')) : json(401, { error: { code: 'invalid_code', message: 'wrong code' } }),
    );
    await h.client.refresh();
    await expect(h.client.post('/api/auth/mfa/confirm', { code: '000000' })).rejects.toMatchObject({ code: 'invalid_code' });
    expect(h.calls.map((c) => c.url)).toEqual(['/api/auth/refresh', '/api/auth/mfa/confirm']);
    expect(h.client.current).not.toBeNull();
  });

  it('schedules a refresh before the access token expires', async () => {
    let n = 0;
    const h = harness(() => json(200, pair(`t${++n}`, 900)));
    await h.client.refresh();
    expect(h.timers).toHaveLength(1);
    h.advance(719_000);
    expect(n).toBe(1);
    h.advance(1_000);
    await new Promise((r) => setTimeout(r, 0));
    expect(n).toBe(2);
    expect(h.timers).toHaveLength(1);
  });

  it('refreshes before a request when the token is about to expire', async () => {
    let n = 0;
    const h = harness((url) => (url === '/api/auth/refresh' ? json(200, pair(`t${++n}`, 900)) : json(200, {})));
    await h.client.refresh();
    h.timers.length = 0; // as if the timer was delayed by a sleeping laptop
    h.advance(895_000);
    await h.client.get('/api/user/profile');
    expect(h.calls.map((c) => c.url)).toEqual(['/api/auth/refresh', '/api/auth/refresh', '/api/user/profile']);
    expect(h.calls[2].auth).toBe('Bearer t2');
  });

  it('returns the MFA step, then signs in with the code', async () => {
    const h = harness((url) =>
      url === '/api/auth/login'
        ? json(200, { mfa_required: true, mfa_token: 'm1', token_type: 'Bearer', expires_in: 300 })
        : json(200, pair('t9')),
    );
    const first = await h.client.login('a@example.com', 'pw');
    expect(first).toEqual({ kind: 'mfa', mfaToken: 'm1' });
    expect(h.client.current).toBeNull();
    const second = await h.client.completeMfa('m1', '123456');
    expect(second.kind).toBe('signed_in');
    expect(h.client.current?.user.id).toBe('u1');
    expect(h.broadcasts).toEqual(['login']);
    expect(JSON.parse(h.calls[1].body!)).toEqual({ mfa_token: 'm1', code: '123456' });
  });

  it('parses the error shape with Retry-After', async () => {
    const h = harness(() => json(429, { error: { code: 'account_locked', message: 'locked' } }, { 'Retry-After': '120' }));
    const err = await h.client.login('a@example.com', 'x').catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 429, code: 'account_locked', retryAfter: 120 });
  });

  it('logs out on the server, forgets the token and tells other tabs', async () => {
    const h = harness((url) => (url === '/api/auth/refresh' ? json(200, pair('t1')) : new Response(null, { status: 204 })));
    await h.client.refresh();
    await h.client.logout();
    expect(h.calls[1]).toMatchObject({ url: '/api/auth/logout', auth: 'Bearer t1' });
    expect(h.client.current).toBeNull();
    expect(h.timers).toHaveLength(0);
    expect(h.broadcasts).toEqual(['logout']);
  });
});
