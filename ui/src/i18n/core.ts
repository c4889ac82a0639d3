// Language choice and translation, free of React so that it is easy to test.

import { en, ja, type MessageKey } from './messages';

export type Lang = 'en' | 'ja';
export const LANGS: readonly Lang[] = ['en', 'ja'];
export const STORAGE_KEY = 'corral.lang';

const tables: Record<Lang, Record<MessageKey, string>> = { en, ja };

/** The stored choice if any, else the first browser language we speak, else English. */
export function detectLang(stored: string | null, browser: readonly string[]): Lang {
  if (stored === 'en' || stored === 'ja') return stored;
  for (const tag of browser) {
    const base = tag.toLowerCase().split('-')[0];
    if (base === 'ja') return 'ja';
    if (base === 'en') return 'en';
  }
  return 'en';
}

export type Params = Record<string, string | number>;

export function translate(lang: Lang, key: MessageKey, params?: Params): string {
  const text = tables[lang][key] ?? en[key] ?? key;
  if (!params) return text;
  return text.replace(/\{(\w+)\}/g, (m, name: string) => (name in params ? String(params[name]) : m));
}

export function hasKey(key: string): key is MessageKey {
  return key in en;
}

/** The words for an API error: our own for codes we know, the server's message otherwise. */
export function errorText(
  lang: Lang,
  err: { code?: string; message?: string; retryAfter?: number | null } | unknown,
): string {
  const e = (err ?? {}) as { code?: string; message?: string; retryAfter?: number | null };
  const code = e.code ?? '';
  const key = `err.${code}`;
  if (code && hasKey(key)) {
    const seconds = Math.max(1, e.retryAfter ?? 60);
    return translate(lang, key, { seconds, minutes: Math.ceil(seconds / 60) });
  }
  return translate(lang, 'err.generic', { message: e.message || code || String(err) });
}

export function formatDateTime(lang: Lang, iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return new Intl.DateTimeFormat(lang === 'ja' ? 'ja-JP' : 'en-GB', {
    dateStyle: 'medium',
    timeStyle: 'short',
  }).format(d);
}
