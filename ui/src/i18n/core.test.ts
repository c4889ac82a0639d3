import { describe, expect, it } from 'vitest';
import { detectLang, errorText, translate } from './core';
import { en, ja } from './messages';

describe('language detection', () => {
  it('prefers the stored choice', () => {
    expect(detectLang('ja', ['en-US'])).toBe('ja');
    expect(detectLang('en', ['ja-JP'])).toBe('en');
  });
  it('follows the browser languages in order', () => {
    expect(detectLang(null, ['ja-JP', 'en-US'])).toBe('ja');
    expect(detectLang(null, ['fr-FR', 'ja'])).toBe('ja');
    expect(detectLang(null, ['en-GB', 'ja'])).toBe('en');
    expect(detectLang('xx', ['de-DE'])).toBe('en');
    expect(detectLang(null, [])).toBe('en');
  });
});

describe('messages', () => {
  it('has every English key in Japanese, non-empty, with the same placeholders', () => {
    for (const key of Object.keys(en) as (keyof typeof en)[]) {
      expect(ja[key], key).toBeTruthy();
      const ph = (s: string) => (s.match(/\{\w+\}/g) ?? []).sort();
      expect(ph(ja[key]), key).toEqual(ph(en[key]));
    }
    expect(Object.keys(ja).sort()).toEqual(Object.keys(en).sort());
  });
  it('interpolates placeholders', () => {
    expect(translate('en', 'keys.days', { n: 30 })).toBe('After 30 days');
    expect(translate('ja', 'keys.days', { n: 30 })).toBe('30日後');
  });
});

describe('error text', () => {
  it('uses our words for known codes, with Retry-After', () => {
    expect(errorText('en', { code: 'invalid_credentials' })).toBe('Wrong e-mail address or password.');
    expect(errorText('ja', { code: 'account_locked', retryAfter: 600 })).toContain('10 分後');
    expect(errorText('en', { code: 'rate_limited', retryAfter: 7 })).toContain('7 s');
  });
  it("falls back to the server's message for unknown codes", () => {
    expect(errorText('en', { code: 'brand_new', message: 'something new' })).toBe('Something went wrong: something new');
  });
});
