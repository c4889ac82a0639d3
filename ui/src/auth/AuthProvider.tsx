import { createContext, useContext, useEffect, useMemo, useState, type ReactNode } from 'react';
import { api, type Session } from '../api/client';
import type { User } from '../api/types';

export type AuthStatus = 'loading' | 'signed_in' | 'signed_out';

interface Auth {
  status: AuthStatus;
  user: User | null;
  /** Set when the silent refresh at start-up could not reach the server. */
  startupError: unknown;
  retryStartup: () => void;
}

const Ctx = createContext<Auth | null>(null);

export function AuthProvider({ children }: { children: ReactNode }) {
  const [session, setSession] = useState<Session | null>(api.current);
  const [status, setStatus] = useState<AuthStatus>(api.current ? 'signed_in' : 'loading');
  const [startupError, setStartupError] = useState<unknown>(null);
  const [attempt, setAttempt] = useState(0);

  useEffect(
    () =>
      api.subscribe((s) => {
        setSession(s);
        setStatus(s ? 'signed_in' : 'signed_out');
      }),
    [],
  );

  // Silent sign-in on load: the httpOnly refresh cookie, if any, gives a session.
  useEffect(() => {
    if (api.current) return;
    let live = true;
    api.refresh().then(
      (s) => {
        if (!live) return;
        setStartupError(null);
        setSession(s);
        setStatus(s ? 'signed_in' : 'signed_out');
      },
      (e: unknown) => {
        if (!live) return;
        setStartupError(e);
        setStatus('signed_out');
      },
    );
    return () => {
      live = false;
    };
  }, [attempt]);

  const value = useMemo<Auth>(
    () => ({
      status,
      user: session?.user ?? null,
      startupError,
      retryStartup: () => setAttempt((n) => n + 1),
    }),
    [status, session, startupError],
  );
  return <Ctx.Provider value={value}>{children}</Ctx.Provider>;
}

export function useAuth(): Auth {
  const v = useContext(Ctx);
  if (!v) throw new Error('useAuth outside AuthProvider');
  return v;
}
