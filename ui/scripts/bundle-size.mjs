// Initial JS budget: the gzipped size of the scripts that index.html loads up front (the
// entry module and its modulepreloads). Lazy chunks (admin pages, QR code) do not count.
// Usage: node scripts/bundle-size.mjs [limit-kB]   (default 400)
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const dist = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist');
const limitKb = Number(process.argv[2] ?? 400);
const html = readFileSync(join(dist, 'index.html'), 'utf8');

const files = new Set();
for (const m of html.matchAll(/<script[^>]+type="module"[^>]+src="([^"]+)"/g)) files.add(m[1]);
for (const m of html.matchAll(/<link[^>]+rel="modulepreload"[^>]+href="([^"]+)"/g)) files.add(m[1]);
if (files.size === 0) {
  console.error('bundle-size: no module scripts found in dist/index.html');
  process.exit(1);
}

let total = 0;
for (const f of files) {
  const data = readFileSync(join(dist, f.replace(/^\//, '')));
  const gz = gzipSync(data, { level: 9 }).length;
  total += gz;
  console.log(`  ${f.padEnd(40)} ${(data.length / 1024).toFixed(1).padStart(8)} kB  gzip ${(gz / 1024).toFixed(1).padStart(7)} kB`);
}
const kb = total / 1024;
const verdict = kb <= limitKb ? 'ok' : 'OVER BUDGET';
console.log(`bundle-size: initial JS ${kb.toFixed(1)} kB gzipped (limit ${limitKb} kB): ${verdict}`);
process.exit(kb <= limitKb ? 0 : 1);
