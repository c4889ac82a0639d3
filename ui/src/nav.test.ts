import { describe, expect, it } from 'vitest';
import { HOME_PATH, navFor, safeNext } from './nav';

describe('navigation by role', () => {
  it('shows admin pages to admins only', () => {
    expect(navFor('admin').map((n) => n.path)).toContain('/admin/users');
    expect(navFor('user').some((n) => n.section === 'admin')).toBe(false);
    expect(navFor('viewer').some((n) => n.section === 'admin')).toBe(false);
    expect(navFor('viewer').map((n) => n.path)).toEqual(['/dashboard', '/profile', '/keys']);
    expect(navFor('user').map((n) => n.path)).toContain('/deploy');
  });
  it('only follows local next= paths', () => {
    expect(safeNext('/keys')).toBe('/keys');
    expect(safeNext('//evil.example')).toBe(HOME_PATH);
    expect(safeNext('/\\evil.example')).toBe(HOME_PATH);
    expect(safeNext('https://evil.example')).toBe(HOME_PATH);
    expect(safeNext(null)).toBe(HOME_PATH);
    expect(safeNext('/login?next=/x')).toBe(HOME_PATH);
  });
});
