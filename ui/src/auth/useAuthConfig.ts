import { useEffect, useState } from 'react';
import { loadAuthConfig, type AuthConfig } from './mode';

/** The server's auth config; null until the first answer (then cached for the page load). */
export function useAuthConfig(): AuthConfig | null {
  const [config, setConfig] = useState<AuthConfig | null>(null);
  useEffect(() => {
    let live = true;
    void loadAuthConfig().then((c) => {
      if (live) setConfig(c);
    });
    return () => {
      live = false;
    };
  }, []);
  return config;
}
