import { useCallback, useEffect, useRef, useState } from 'react';

/**
 * Loads `fn` now and again every `ms` while the page is mounted (and the tab visible):
 * the live status of instances without a manual reload. `reload` loads at once.
 */
export function usePoll<T>(fn: (signal: AbortSignal) => Promise<T>, ms = 2000) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const fnRef = useRef(fn);
  fnRef.current = fn;
  const tick = useRef<() => Promise<void>>(async () => undefined);

  useEffect(() => {
    let alive = true;
    let timer: ReturnType<typeof setTimeout> | null = null;
    let ctrl: AbortController | null = null;
    const run = async () => {
      if (timer) clearTimeout(timer);
      ctrl?.abort();
      ctrl = new AbortController();
      try {
        const v = await fnRef.current(ctrl.signal);
        if (alive) {
          setData(v);
          setError(null);
        }
      } catch (e) {
        if (alive && !(e instanceof DOMException && e.name === 'AbortError')) setError(e);
      }
      if (alive) timer = setTimeout(() => void run(), document.visibilityState === 'hidden' ? ms * 5 : ms);
    };
    tick.current = run;
    void run();
    return () => {
      alive = false;
      if (timer) clearTimeout(timer);
      ctrl?.abort();
    };
  }, [ms]);

  const reload = useCallback(() => tick.current(), []);
  return { data, error, reload, setData };
}
