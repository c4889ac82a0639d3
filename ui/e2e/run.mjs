// End-to-end test of the web UI in a real browser (Debian's Chromium driven by
// playwright-core) against a real `corral serve` on a free loopback port with a
// throwaway data dir.
//
//   node e2e/run.mjs            (from ui/, after `vite build` and `cargo build -p corral`)
//
// Environment: CORRAL_BIN (default $CARGO_TARGET_DIR/debug/corral or ../target/debug/corral),
// CHROMIUM (default /usr/bin/chromium), ARTIFACTS (default ../artifacts/ui).
// Prints one line per step and ends with `e2e: N passed, M failed`.

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { stepAt, hotp, base32Decode } from './totp.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(root, 'target');
const corralBin = process.env.CORRAL_BIN ?? join(targetDir, 'debug', 'corral');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const artifacts = resolve(process.env.ARTIFACTS ?? join(root, 'artifacts', 'ui'));
const STEP_TIMEOUT_MS = 60_000;
// The local driver runs corral-runner (next to `corral`) on <data-dir>/models/<name>.gguf.
const MODEL_FILE = process.env.CORRAL_TEST_MODEL ?? join(root, '.corral', 'models', 'smollm2-135m.gguf');

const ADMIN = { email: 'admin@e2e.test', password: 'Admin-e2e-Pass1!' };
const run_id = Date.now().toString(36);
const USER = {
  email: `user-${run_id}@e2e.test`,
  password: 'Corral-e2e-Pass1!',
  resetPassword: 'Corral-e2e-Reset2#',
  changedPassword: 'Corral-e2e-Change3$',
  newName: 'E2E テスト User',
};
const VIEWER = { email: `viewer-${run_id}@e2e.test`, password: 'Viewer-e2e-Pass1!' };
const TEMP = { email: `temp-${run_id}@e2e.test`, password: 'Temp-e2e-Pass1!' };

mkdirSync(artifacts, { recursive: true });
for (const f of readdirSync(artifacts)) if (/\.(png|log)$/.test(f)) rmSync(join(artifacts, f));
const work = mkdtempSync(join(tmpdir(), 'corral-ui-e2e-'));
const dataDir = join(work, 'data');
const profileDir = join(work, 'chromium-profile');
const cleanups = [];

function log(line) {
  process.stdout.write(`${line}\n`);
}

// ---- the server -------------------------------------------------------------------

function run(args, input) {
  return new Promise((res, rej) => {
    const p = spawn(corralBin, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', rej);
    p.on('exit', (code) => (code === 0 ? res(out) : rej(new Error(`corral ${args.join(' ')} exited ${code}: ${out}`))));
    p.stdin.end(input ?? '');
  });
}

/**
 * Kills the replicas a server in `dir` launched. They run in sessions of their own so
 * that they outlive a restart of `corral serve` (it adopts them); a run that fails
 * mid-way must not leave them behind.
 */
function killReplicas(dir) {
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let env = '';
    try {
      env = readFileSync(`/proc/${pid}/environ`, 'latin1');
    } catch {
      continue; // gone, or not ours to read
    }
    if (env.split('\0').includes(`CORRAL_DATA_DIR=${dir}`)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // already exited
      }
    }
  }
}

/** Starts `corral serve`; resolves to its URL and everything it printed to stdout so far. */
function startServer(dir, logName, extraArgs = []) {
  return new Promise((res, rej) => {
    const logFile = createWriteStream(join(artifacts, logName));
    const p = spawn(corralBin, ['--data-dir', dir, 'serve', '--listen', '127.0.0.1:0', ...extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CORRAL_LOG: 'info,tower_http=warn' },
    });
    cleanups.push(
      () =>
        new Promise((done) => {
          const finish = () => {
            killReplicas(dir);
            done();
          };
          if (p.exitCode !== null) return finish();
          p.once('exit', finish);
          p.kill('SIGTERM');
          setTimeout(() => p.kill('SIGKILL'), 5_000).unref();
        }),
    );
    const timer = setTimeout(() => rej(new Error('corral serve printed no "listening on" line within 30 s')), 30_000);
    let buffer = '';
    p.stdout.on('data', (d) => {
      logFile.write(d);
      buffer += d;
      const m = buffer.match(/listening on (http:\/\/[^\s]+)/);
      if (m) {
        clearTimeout(timer);
        res({ url: m[1].replace(/\/$/, ''), stdout: buffer });
      }
    });
    p.stderr.on('data', (d) => logFile.write(d));
    p.on('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`corral serve exited early (${code}); see ${join(artifacts, logName)}`));
    });
  });
}

async function http(base, method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: res.status, headers: res.headers, text, json };
}

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

// ---- TOTP: every code must be for a later step than the last one used ---------------

let lastStep = -1;
async function nextCode(secret) {
  // A code is accepted once and only for the previous, current or next 30 s step, so
  // each code must be for a later step than the last one: use the next step early, and
  // wait for the clock when even that one is spent.
  while (lastStep + 1 > stepAt(Date.now() / 1000) + 1) {
    await new Promise((r) => setTimeout(r, 500));
  }
  const step = Math.max(stepAt(Date.now() / 1000), lastStep + 1);
  lastStep = step;
  return hotp(base32Decode(secret), step);
}

// ---- the steps ---------------------------------------------------------------------

async function main() {
  log(`e2e: corral ${corralBin}`);
  log(`e2e: chromium ${chromiumPath}`);
  assert(existsSync(MODEL_FILE), `the test model ${MODEL_FILE} is missing: run scripts/fetch-model.sh`);
  mkdirSync(join(dataDir, 'models'), { recursive: true });
  symlinkSync(MODEL_FILE, join(dataDir, 'models', 'smollm2-135m.gguf'));
  await run(['--data-dir', dataDir, 'admin', 'create-user', '--email', ADMIN.email, '--role', 'admin', '--password-stdin'], `${ADMIN.password}\n`);
  const { url: base } = await startServer(dataDir, 'server.log');
  log(`e2e: server ${base}`);

  // The admin's API key reads the outbox (the verification mail) during the test.
  const adminLogin = await http(base, 'POST', '/api/auth/login', { body: ADMIN });
  assert(adminLogin.status === 200, `admin API login: ${adminLogin.status} ${adminLogin.text}`);
  const adminKey = await http(base, 'POST', '/api/keys', {
    token: adminLogin.json.access_token,
    body: { name: 'e2e-outbox', password: ADMIN.password },
  });
  assert(adminKey.status === 201, `admin key: ${adminKey.status} ${adminKey.text}`);
  const ADMIN_KEY = adminKey.json.key;

  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 860 },
    locale: 'en-US',
    timezoneId: 'UTC',
  });
  cleanups.unshift(() => context.close().catch(() => undefined));
  context.setDefaultTimeout(15_000);
  const page = context.pages()[0] ?? (await context.newPage());

  const problems = [];
  page.on('pageerror', (e) => {
    problems.push(`page error: ${e.message}`);
    log(`       page error: ${e.message}`);
  });
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    // Expected 4xx answers (e.g. the silent refresh while signed out) are logged by the
    // browser as failed loads; anything else is a defect (CSP violations included).
    if (/Failed to load resource: the server responded with a status of 4\d\d/.test(text)) return;
    problems.push(`console error: ${text}`);
  });

  let shot = 0;
  const screenshot = async (name, fullPage = true) => {
    shot += 1;
    const file = join(artifacts, `${String(shot).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path: file, fullPage, animations: 'disabled' });
    return file;
  };
  // Mail leaves from the server's background queue: wait (up to 10 s) for a message
  // that is not among `seen` (links already used).
  const seenLinks = new Set();
  const mailLink = async (to, path) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const outbox = await http(base, 'GET', `/api/admin/outbox?to=${encodeURIComponent(to)}`, { token: ADMIN_KEY });
      assert(outbox.status === 200, `outbox: ${outbox.status} ${outbox.text}`);
      // Newest first: the first message with such a link is the latest one.
      for (const m of outbox.json.messages) {
        const link = m.body.match(new RegExp(`https?://\\S+/${path}\\?token=[A-Za-z0-9_\\-%.~]+`))?.[0];
        if (link && !seenLinks.has(link)) {
          seenLinks.add(link);
          return link;
        }
        if (link) break;
      }
      if (Date.now() > deadline) throw new Error(`no new /${path} link in the mail to ${to}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const login = async (email, password, secret) => {
    await page.locator('input[name=email]').fill(email);
    await page.locator('input[name=password]').fill(password);
    // The submit button, whatever the language.
    const submit = page.getByTestId('login-form').locator('button[type=submit]');
    await submit.click();
    if (secret) {
      await page.locator('input[name=code]').fill(await nextCode(secret));
      await submit.click();
    }
    await waitPath('/dashboard');
  };
  const ruleMet = (rule) => page.locator(`[data-testid=password-checklist] [data-rule=${rule}]`).getAttribute('data-met');
  const waitPath = (path) => page.waitForURL((u) => new URL(u).pathname === path);

  let mfaSecret = null;
  let instanceId = null;
  let deployStarted = 0;
  let createdKey = null;

  const steps = [
    [
      'server: SPA fallback, JSON 404 for API paths, cached assets',
      async () => {
        const spa = await http(base, 'GET', '/admin/users');
        assert(spa.status === 200 && spa.headers.get('content-type').startsWith('text/html'), `SPA route: ${spa.status}`);
        assert(spa.headers.get('content-security-policy')?.includes("default-src 'self'"), 'CSP header on index.html');
        const api404 = await http(base, 'GET', '/api/no-such-route');
        assert(api404.status === 404 && api404.json?.error?.code === 'not_found', `API 404: ${api404.text}`);
        const asset = spa.text.match(/src="(\/assets\/[^"]+\.js)"/)?.[1];
        assert(asset, 'index.html references a hashed script');
        const js = await http(base, 'GET', asset);
        assert(js.status === 200 && /javascript/.test(js.headers.get('content-type')), `asset type: ${js.headers.get('content-type')}`);
        assert(js.headers.get('cache-control')?.includes('immutable'), 'hashed asset is immutable');
      },
    ],
    [
      'sign up with the live password checklist',
      async () => {
        await page.goto(`${base}/signup`);
        await page.locator('input[name=email]').fill(USER.email);
        const pw = page.locator('input[name=password]');
        await pw.fill('abc');
        assert((await ruleMet('lowercase')) === 'true', 'lowercase met for "abc"');
        assert((await ruleMet('uppercase')) === 'false', 'uppercase unmet for "abc"');
        assert((await ruleMet('min_length')) === 'false', 'min_length unmet for "abc"');
        assert(await page.getByRole('button', { name: 'Sign up' }).isDisabled(), 'submit disabled while the policy fails');
        await pw.fill('abcDEF12');
        assert((await ruleMet('min_length')) === 'true', 'min_length met');
        assert((await ruleMet('symbol')) === 'false', 'symbol still unmet');
        await pw.fill(USER.password);
        for (const rule of ['min_length', 'uppercase', 'lowercase', 'digit', 'symbol']) {
          assert((await ruleMet(rule)) === 'true', `${rule} met for the final password`);
        }
        await page.locator('input[name=confirmPassword]').fill(USER.password);
        assert((await ruleMet('match')) === 'true', 'confirmation matches');
        assert(await page.getByRole('button', { name: 'Sign up' }).isEnabled(), 'submit enabled once the policy passes');
        await screenshot('signup-checklist');
        await page.getByRole('button', { name: 'Sign up' }).click();
        await page.getByTestId('signup-sent').waitFor();
      },
    ],
    [
      'verify the e-mail address from the outbox link',
      async () => {
        const link = await mailLink(USER.email, 'verify');
        assert(link.startsWith(base), `link points at this server: ${link}`);
        await page.goto(link);
        await page.getByTestId('verify-done').waitFor();
        assert(!page.url().includes('token='), 'the spent token is removed from the address bar');
        await screenshot('verified');
      },
    ],
    [
      'log in',
      async () => {
        await page.getByRole('link', { name: 'Go to login' }).click();
        await page.locator('input[name=email]').fill(USER.email);
        await page.locator('input[name=password]').fill('Wrong-password-1!');
        await page.getByRole('button', { name: 'Log in' }).click();
        await page.getByText('Wrong e-mail address or password.').waitFor();
        await page.locator('input[name=password]').fill(USER.password);
        await page.getByRole('button', { name: 'Log in' }).click();
        await waitPath('/dashboard');
        await page.getByTestId('current-user').waitFor();
        const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
        assert(!/eyJ|corral_refresh/.test(stored), `no token in storage or readable cookies: ${stored}`);
      },
    ],
    [
      'change the display name',
      async () => {
        await page.getByRole('link', { name: 'Profile' }).click();
        await waitPath('/profile');
        const form = page.getByTestId('display-name-form');
        await form.locator('input[name=display_name]').fill(USER.newName);
        await form.getByRole('button', { name: 'Save' }).click();
        await page.getByText('Display name saved.').waitFor();
        await page.getByTestId('current-user').filter({ hasText: USER.newName }).waitFor();
      },
    ],
    [
      'enrol MFA with the QR code and a TOTP code',
      async () => {
        const card = page.getByTestId('mfa-card');
        // Enrolling needs the password: a stolen session alone must not do it.
        await card.locator('input[name=password]').fill(USER.password);
        await card.getByTestId('mfa-enroll').click();
        await card.getByTestId('mfa-qr').waitFor();
        const src = await card.getByTestId('mfa-qr').getAttribute('src');
        assert(src?.startsWith('data:image/png;base64,'), 'QR code drawn in the browser as a data URL');
        mfaSecret = await card.getByTestId('mfa-secret').getAttribute('data-secret');
        assert(/^[A-Z2-7]{16,}$/.test(mfaSecret ?? ''), `a base32 secret: ${mfaSecret}`);
        await screenshot('mfa-enrol');
        await card.locator('input[name=code]').fill(await nextCode(mfaSecret));
        await card.getByTestId('mfa-confirm').click();
        await card.locator('[data-testid=mfa-status][data-enabled=true]').waitFor();
      },
    ],
    [
      'log out, log in again with the MFA step',
      async () => {
        await page.getByTestId('logout').click();
        await waitPath('/login');
        // The refresh cookie is gone: a reload stays signed out.
        await page.reload();
        await page.locator('input[name=email]').waitFor();
        await page.locator('input[name=email]').fill(USER.email);
        await page.locator('input[name=password]').fill(USER.password);
        await page.getByRole('button', { name: 'Log in' }).click();
        await page.getByText('Enter the 6-digit code from your authenticator app.').waitFor();
        await screenshot('login-mfa-step');
        await page.locator('input[name=code]').fill(await nextCode(mfaSecret));
        await page.getByRole('button', { name: 'Verify' }).click();
        await waitPath('/dashboard');
      },
    ],
    [
      'silent refresh: a reload keeps the session (httpOnly cookie only)',
      async () => {
        await page.reload();
        await page.getByTestId('current-user').filter({ hasText: USER.newName }).waitFor();
        const cookies = await context.cookies(`${base}/api/auth/refresh`);
        const refresh = cookies.find((c) => c.name === 'corral_refresh');
        assert(refresh?.httpOnly && refresh.sameSite === 'Strict' && refresh.path === '/api/auth', `cookie flags: ${JSON.stringify(refresh)}`);
      },
    ],
    [
      'create an API key (shown once), use it, revoke it',
      async () => {
        await page.getByRole('link', { name: 'API keys' }).click();
        await waitPath('/keys');
        const form = page.getByTestId('key-create-form');
        await form.locator('input[name=name]').fill('e2e-key');
        // A key needs the password, and a code while MFA is on.
        await form.locator('input[name=password]').fill(USER.password);
        await form.locator('input[name=code]').fill(await nextCode(mfaSecret));
        await form.getByRole('button', { name: 'Create key' }).click();
        const keyField = page.getByTestId('created-key');
        await keyField.waitFor();
        createdKey = await keyField.inputValue();
        assert(/^crl_/.test(createdKey), `key starts with crl_: ${createdKey}`);
        await screenshot('api-key-created', false);
        const me = await http(base, 'GET', '/api/user/profile', { token: createdKey });
        assert(me.status === 200 && me.json.email === USER.email, `the key works: ${me.status}`);
        await page.getByTestId('created-key-done').click();
        await keyField.waitFor({ state: 'detached' });
        const row = page.getByTestId('key-row').filter({ hasText: 'e2e-key' });
        await row.waitFor();
        assert(!(await page.content()).includes(createdKey), 'the key is not shown again');
        await row.getByRole('button', { name: /Revoke/ }).click();
        await page.getByTestId('confirm').click();
        await page.getByText('API key revoked.').waitFor();
        await row.waitFor({ state: 'detached' });
        const after = await http(base, 'GET', '/api/user/profile', { token: createdKey });
        assert(after.status === 401, `the revoked key is refused: ${after.status}`);
      },
    ],
    [
      'turn MFA off with the password and a code',
      async () => {
        await page.getByRole('link', { name: 'Profile' }).click();
        await waitPath('/profile');
        const card = page.getByTestId('mfa-card');
        await card.locator('input[name=password]').fill(USER.password);
        await card.locator('input[name=code]').fill(await nextCode(mfaSecret));
        await card.getByRole('button', { name: 'Turn off' }).click();
        await card.locator('[data-testid=mfa-status][data-enabled=false]').waitFor();
      },
    ],
    [
      'reset the password with the e-mailed link',
      async () => {
        await page.getByTestId('logout').click();
        await waitPath('/login');
        await page.getByRole('link', { name: 'Forgot your password?' }).click();
        await page.locator('input[name=email]').fill(USER.email);
        await page.getByRole('button', { name: 'Send reset link' }).click();
        await page.getByTestId('reset-sent').waitFor();
        await page.goto(await mailLink(USER.email, 'reset-password'));
        await page.locator('input[name=password]').fill(USER.resetPassword);
        await page.locator('input[name=confirmPassword]').fill(USER.resetPassword);
        await page.getByRole('button', { name: 'Set password' }).click();
        await page.getByTestId('reset-done').waitFor();
        await page.getByRole('link', { name: 'Go to login' }).click();
        await login(USER.email, USER.resetPassword);
      },
    ],
    [
      'change the password on the profile page; the session carries on',
      async () => {
        await page.getByRole('link', { name: 'Profile' }).click();
        await waitPath('/profile');
        const form = page.getByTestId('password-form');
        await form.locator('input[name=current_password]').fill(USER.resetPassword);
        await form.locator('input[name=new_password]').fill(USER.changedPassword);
        await form.locator('input[name=confirmPassword]').fill(USER.changedPassword);
        await form.getByRole('button', { name: 'Change password' }).click();
        // The change ends every session; the page logs in again with the new password.
        await page.getByText('Password changed. Your other sessions were signed out.').waitFor();
        await page.reload();
        await page.getByTestId('current-user').filter({ hasText: USER.newName }).waitFor();
        const old = await http(base, 'POST', '/api/auth/login', { body: { email: USER.email, password: USER.resetPassword } });
        assert(old.status === 401, `the old password is refused: ${old.status}`);
      },
    ],
    [
      'dashboard: the start page, empty for a new user',
      async () => {
        await page.getByRole('link', { name: 'Dashboard' }).click();
        await waitPath('/dashboard');
        await page.getByTestId('dash-empty').waitFor();
      },
    ],
    [
      'deploy smollm2:135m on local compute at the smallest size',
      async () => {
        await page.getByTestId('dash-deploy').click();
        await waitPath('/deploy');
        const form = page.getByTestId('deploy-form');
        await form.getByTestId('deploy-model').click();
        await page.getByTestId('model-option-smollm2:135m').click();
        await form.getByTestId('model-present').filter({ hasText: 'On this server' }).waitFor();
        // Only what /api/compute offers: here local compute alone.
        await form.locator('input[name=compute_type]').evaluate((i) => i.value).then((v) => assert(v === 'local', `compute type ${v}`));
        const cpu = await form.locator('input[name=cpu]').inputValue();
        const memory = await form.locator('input[name=memory]').inputValue();
        assert(cpu === '0.5' && memory === '512', `smallest size that fits: ${cpu} vCPU ${memory} MiB`);
        await form.locator('[data-testid=deploy-fit][data-fits=true]').waitFor();
        await screenshot('deploy-form');
        deployStarted = Date.now();
        await form.getByTestId('deploy-submit').click();
        await page.waitForURL((u) => /^\/instances\/[0-9a-f-]{36}$/.test(new URL(u).pathname));
        instanceId = new URL(page.url()).pathname.split('/').pop();
      },
    ],
    [
      'instance page: live lifecycle until ready, timeline shows ready',
      async () => {
        // The deploy's progress, live, right under the lifecycle stepper.
        await page.getByTestId('deploy-progress').locator('[data-testid=timeline-event]').first().waitFor();
        await screenshot('deploy-progress', false);
        await page.locator('[data-testid=instance-page][data-status=ready]').waitFor({ timeout: 55_000 });
        await page.locator('[data-testid=progress-timeline] [data-testid=timeline-event][data-to=ready]').waitFor();
        log(`       deploy to ready in the UI: ${Date.now() - deployStarted} ms`);
        await page.getByTestId('tab-timeline').click();
        await page.locator('[data-testid=timeline] [data-testid=timeline-event][data-to=ready]').waitFor();
        const states = await page.getByTestId('timeline').getByTestId('timeline-event').evaluateAll((els) => els.map((e) => e.getAttribute('data-to')).filter(Boolean));
        assert(JSON.stringify(states.slice(0, 3)) === JSON.stringify(['provisioning', 'starting', 'ready']), `timeline: ${states}`);
        const endpoint = await page.getByTestId('instance-endpoint').textContent();
        assert(endpoint === `${base}/i/${instanceId}`, `endpoint ${endpoint}`);
      },
    ],
    [
      'chat playground streams tokens',
      async () => {
        await page.getByTestId('tab-chat').click();
        await page.locator('[data-testid=chat-form] textarea[name=prompt]').fill('Name three colours of the rainbow.');
        // Every length the answer's text takes, recorded in the page at each DOM change:
        // polling from here can miss a short answer that streams in 150 ms.
        await page.evaluate(() => {
          const seen = [];
          window.__answerLengths = seen;
          new MutationObserver(() => {
            const all = document.querySelectorAll('[data-testid=chat-assistant]');
            const text = all.length ? all[all.length - 1].textContent ?? '' : '';
            const n = text === '…' ? 0 : text.length;
            if (n > 0 && seen[seen.length - 1] !== n) seen.push(n);
          }).observe(document.body, { childList: true, subtree: true, characterData: true });
        });
        await page.getByTestId('chat-send').click();
        const answer = page.getByTestId('chat-assistant').last();
        // Done: text arrived and the send button is back in place of stop.
        await page.waitForFunction(
          () => window.__answerLengths.length > 0 && document.querySelector('[data-testid=chat-send]') !== null,
          undefined,
          { timeout: 30_000 },
        );
        const final = ((await answer.textContent()) ?? '').trim();
        const distinct = new Set(await page.evaluate(() => window.__answerLengths));
        assert(final.length > 0, 'the answer is not empty');
        assert(distinct.size >= 3, `the text grew while streaming (lengths seen: ${[...distinct].slice(0, 10)})`);
        log(`       streamed ${final.length} chars, ${distinct.size} distinct lengths`);
        await screenshot('instance-chat');
        // The stop button aborts a long answer: the text stops growing.
        await page.locator('[data-testid=chat-form] textarea[name=prompt]').fill('Write a very long essay about the history of Rome, with many details.');
        await page.getByTestId('chat-send').click();
        const second = page.getByTestId('chat-assistant').nth(1);
        await page.waitForFunction((el) => (el?.textContent ?? '').length > 20, await second.elementHandle());
        await page.getByTestId('chat-stop').click();
        await page.getByTestId('chat-send').waitFor();
        const stoppedAt = ((await second.textContent()) ?? '').length;
        await page.waitForTimeout(500);
        const later = ((await second.textContent()) ?? '').length;
        assert(later === stoppedAt, `no more text after stop: ${stoppedAt} -> ${later}`);
      },
    ],
    [
      'settings: change the idle timeout',
      async () => {
        await page.getByTestId('instance-settings').click();
        const dialog = page.getByRole('dialog');
        await dialog.locator('input[name=idle_timeout_seconds]').fill('600');
        await dialog.getByTestId('settings-save').click();
        await dialog.waitFor({ state: 'detached' });
        await page.getByTestId('fact-idle').filter({ hasText: '10 min' }).waitFor();
        const r = await http(base, 'GET', `/api/instances/${instanceId}`, { token: ADMIN_KEY });
        assert(r.json?.settings?.idle_timeout_seconds === 600, `saved: ${JSON.stringify(r.json?.settings)}`);
      },
    ],
    [
      'logs follow, charts, connect snippets',
      async () => {
        await page.getByTestId('tab-logs').click();
        await page.getByTestId('log-line').first().waitFor();
        await page.getByTestId('tab-metrics').click();
        await page.getByTestId('chart-cpu').waitFor();
        // The playground's chats went through the gateway: the latency chart has a value.
        const latency = page.getByTestId('chart-latency');
        await latency.filter({ hasText: /\d ms|\d s/ }).waitFor({ timeout: 10_000 });
        const shown = (await latency.textContent()) ?? '';
        assert(!shown.includes('—'), `latency shown: ${shown}`);
        await page.getByTestId('chart-requests-minute').locator('rect title').first().waitFor({ state: 'attached' });
        await page.getByTestId('chart-requests-minute').scrollIntoViewIfNeeded();
        await screenshot('instance-metrics', false);
        await page.getByTestId('tab-connect').click();
        const text = (await page.getByTestId('snippet').allTextContents()).join('\n');
        assert(text.includes(`base_url="${base}/i/${instanceId}/v1"`), 'openai snippet with base_url=<endpoint>/v1');
        assert(text.includes(`Client(host="${base}/i/${instanceId}", headers={"Authorization": "Bearer <your API key>"})`), 'ollama snippet');
        await screenshot('instance-connect', false);
      },
    ],
    [
      'create an API key from the instance page and call the endpoint with it',
      async () => {
        await page.getByTestId('connect-keys-link').click();
        await waitPath('/keys');
        const form = page.getByTestId('key-create-form');
        await form.locator('input[name=name]').fill('e2e-deploy');
        await form.locator('input[name=password]').fill(USER.changedPassword);
        await form.getByRole('button', { name: 'Create key' }).click();
        const key = await page.getByTestId('created-key').inputValue();
        assert(/^crl_/.test(key), 'a crl_ key');
        await page.getByTestId('created-key-done').click();
        const r = await http(base, 'POST', `/i/${instanceId}/v1/chat/completions`, {
          token: key,
          body: { model: 'smollm2:135m', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8 },
        });
        assert(r.status === 200 && r.json?.choices?.[0]?.message, `the key works on the endpoint: ${r.status} ${r.text.slice(0, 200)}`);
      },
    ],
    [
      'dashboard: the instance with live status; stop it',
      async () => {
        // A fresh load (silent refresh, the lazy chunk, the list): usable within about 1 s.
        const t0 = Date.now();
        await page.goto(`${base}/dashboard`);
        const row = page.locator(`[data-testid=instance-row][data-id="${instanceId}"]`);
        // Checked every frame: the time the row appeared, from the navigation's start.
        const shown = await page.waitForFunction(
          (id) => (document.querySelector(`[data-testid=instance-row][data-id="${id}"][data-status=ready]`) ? performance.now() : null),
          instanceId,
          { polling: 'raf' },
        );
        const sinceNav = Math.round(await shown.jsonValue());
        const loadMs = Date.now() - t0;
        log(`       dashboard shows the instance ${sinceNav} ms after the navigation started (${loadMs} ms with the test's overhead)`);
        // The target is 1 s; the bound leaves room for a machine busy with other builds.
        assert(sinceNav < 2000, `dashboard took ${sinceNav} ms`);
        await screenshot('dashboard');
        await row.getByTestId('instance-stop').click();
        // No reload: the dashboard polls.
        await page.locator(`[data-testid=instance-row][data-id="${instanceId}"][data-status=stopped]`).waitFor({ timeout: 30_000 });
        await row.getByTestId('instance-start').waitFor();
        const api = await http(base, 'GET', `/api/instances/${instanceId}`, { token: ADMIN_KEY });
        assert(api.json?.status === 'stopped', `the API says stopped: ${api.json?.status}`);
      },
    ],
    [
      'a user sees no admin navigation, and admin pages redirect',
      async () => {
        assert((await page.getByRole('link', { name: 'Users' }).count()) === 0, 'no Users link for a user');
        await page.goto(`${base}/admin/users`);
        await waitPath('/dashboard');
        await page.getByTestId('logout').click();
        await waitPath('/login');
      },
    ],
    [
      'admin: the new user in the users page',
      async () => {
        await page.locator('input[name=email]').fill(ADMIN.email);
        await page.locator('input[name=password]').fill(ADMIN.password);
        await page.getByRole('button', { name: 'Log in' }).click();
        await waitPath('/dashboard');
        await page.getByRole('link', { name: 'Users' }).click();
        await waitPath('/admin/users');
        const row = page.locator(`[data-testid=user-row][data-email="${USER.email}"]`);
        await row.waitFor();
        const status = await row.locator('td').nth(2).textContent();
        assert(status.includes('Active') && !status.includes('MFA'), `the user is active, MFA off: ${status}`);
        // The admin's own row has no lock/delete controls (the server refuses them anyway).
        const own = page.locator(`[data-testid=user-row][data-email="${ADMIN.email}"]`);
        assert((await own.getByRole('button').count()) === 0, 'no controls on the own row');
        await screenshot('admin-users');
      },
    ],
    [
      'admin: create a user, change the role, lock, unlock, delete',
      async () => {
        await page.getByRole('button', { name: 'Create user' }).click();
        const dialog = page.getByRole('dialog');
        await dialog.locator('input[name=email]').fill(TEMP.email);
        await dialog.locator('input[name=password]').fill(TEMP.password);
        await dialog.getByRole('combobox').click();
        await page.getByRole('option', { name: 'Viewer (read-only)' }).click();
        await dialog.getByRole('combobox').filter({ hasText: 'Viewer' }).waitFor();
        await dialog.getByRole('button', { name: 'Create user' }).click();
        await page.getByText('User created.').waitFor();
        const row = page.locator(`[data-testid=user-row][data-email="${TEMP.email}"]`);
        await row.waitFor();
        await row.getByRole('combobox').filter({ hasText: 'Viewer' }).waitFor();
        await row.getByRole('combobox').click();
        await page.getByRole('option', { name: 'User', exact: true }).click();
        await row.getByRole('combobox').filter({ hasText: 'User' }).waitFor();
        await row.getByRole('button', { name: `Lock: ${TEMP.email}` }).click();
        await row.locator('td').nth(2).getByText('Locked').waitFor();
        const locked = await http(base, 'POST', '/api/auth/login', { body: TEMP });
        assert(locked.status === 403 && locked.json.error.code === 'account_disabled', `a locked user cannot log in: ${locked.text}`);
        await row.getByRole('button', { name: `Unlock: ${TEMP.email}` }).click();
        await row.getByRole('button', { name: `Lock: ${TEMP.email}` }).waitFor();
        await row.getByRole('button', { name: `Delete: ${TEMP.email}` }).click();
        await page.getByTestId('confirm').click();
        await page.getByText('User deleted.').waitFor();
        await row.waitFor({ state: 'detached' });
        const viewer = await http(base, 'POST', '/api/admin/users', { token: ADMIN_KEY, body: { ...VIEWER, role: 'viewer' } });
        assert(viewer.status === 201, `viewer created: ${viewer.text}`);
      },
    ],
    [
      'admin: everyone\'s instances with owners, model catalog, usage per user',
      async () => {
        await page.getByRole('link', { name: 'Dashboard' }).click();
        await page.locator(`[data-testid=instance-row][data-id="${instanceId}"]`).filter({ hasText: USER.email }).waitFor();
        await page.getByRole('link', { name: 'Model catalog' }).click();
        await waitPath('/admin/models');
        await page.locator('[data-testid=model-row][data-id="smollm2:135m"]').filter({ hasText: 'On this server' }).waitFor();
        await screenshot('admin-models');
        await page.getByRole('link', { name: 'Usage and cost' }).click();
        await waitPath('/admin/usage');
        await page.getByTestId('usage-row').filter({ hasText: USER.email }).waitFor();
        await page.getByTestId('usage-by-model').click();
        await page.getByTestId('usage-row').filter({ hasText: 'smollm2:135m' }).waitFor();
        await screenshot('admin-usage');
      },
    ],
    [
      'admin: audit log with filters',
      async () => {
        await page.getByRole('link', { name: 'Audit log' }).click();
        await waitPath('/admin/audit');
        await page.getByTestId('audit-row').first().waitFor();
        const filters = page.getByTestId('audit-filters');
        await filters.locator('input[name=action]').fill('auth.login');
        await filters.getByRole('button', { name: 'Apply' }).click();
        // Rows of the unfiltered list may still be shown for a moment: wait for the new list.
        await page.waitForFunction(() => {
          const rows = [...document.querySelectorAll('[data-testid=audit-row]')];
          return rows.length > 0 && rows.every((r) => (r.getAttribute('data-action') ?? '').startsWith('auth.login'));
        });
        await page.locator('[data-testid=audit-row][data-action="auth.login"]').filter({ hasText: USER.email }).first().waitFor();
        const actions = await page.getByTestId('audit-row').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-action')));
        assert(actions.length > 0 && actions.every((a) => a.startsWith('auth.login')), `filtered actions: ${actions}`);
        await filters.getByRole('button', { name: 'Clear' }).click();
        await page.locator('[data-testid=audit-row][data-action="keys.delete"]').first().waitFor();
        await screenshot('admin-audit');
      },
    ],
    [
      'admin: outbox shows the verification mail',
      async () => {
        await page.getByRole('link', { name: 'Outbox' }).click();
        await waitPath('/admin/outbox');
        await page.getByTestId('outbox-message').filter({ hasText: USER.email }).first().waitFor();
      },
    ],
    [
      'Japanese: the language switch translates the UI',
      async () => {
        await page.getByTestId('language-switch').click();
        await page.getByTestId('language-ja').click();
        await page.getByRole('heading', { name: '送信メール' }).waitFor();
        await page.getByRole('link', { name: '監査ログ' }).click();
        await page.getByRole('heading', { name: '監査ログ' }).waitFor();
        assert((await page.getAttribute('html', 'lang')) === 'ja', 'html lang=ja');
        await screenshot('japanese-audit');
        // The choice survives a reload.
        await page.reload();
        await page.getByRole('heading', { name: '監査ログ' }).waitFor();
      },
    ],
    [
      'mobile: 390 px wide, no horizontal scrolling, drawer navigation',
      async () => {
        await page.setViewportSize({ width: 390, height: 844 });
        await page.goto(`${base}/profile`);
        await page.getByTestId('mfa-card').waitFor();
        const width = await page.evaluate(() => document.documentElement.scrollWidth);
        assert(width <= 390, `page is ${width}px wide at a 390px viewport`);
        await screenshot('mobile-390-profile');
        await page.getByTestId('nav-open').click();
        await page.getByRole('link', { name: 'ユーザー' }).waitFor();
        await screenshot('mobile-390-nav', false);
        await page.getByRole('link', { name: 'ユーザー' }).click();
        await waitPath('/admin/users');
        await page.getByTestId('user-row').first().waitFor();
        const usersWidth = await page.evaluate(() => document.documentElement.scrollWidth);
        assert(usersWidth <= 390, `users page is ${usersWidth}px wide at 390px`);
        const tableOverflow = await page.getByTestId('users-table').evaluate((t) => t.scrollWidth - t.parentElement.clientWidth);
        assert(tableOverflow <= 0, `users table overflows its card by ${tableOverflow}px`);
        await screenshot('mobile-390-users');
        await page.goto(`${base}/dashboard`);
        await page.locator(`[data-testid=instance-row][data-id="${instanceId}"]`).waitFor();
        const dashWidth = await page.evaluate(() => document.documentElement.scrollWidth);
        assert(dashWidth <= 390, `dashboard is ${dashWidth}px wide at 390px`);
        await screenshot('mobile-390-dashboard');
        await page.goto(`${base}/instances/${instanceId}`);
        await page.getByTestId('instance-page').waitFor();
        const instWidth = await page.evaluate(() => document.documentElement.scrollWidth);
        assert(instWidth <= 390, `instance page is ${instWidth}px wide at 390px`);
        await screenshot('mobile-390-instance');
      },
    ],
    [
      'viewer: only their own pages in the navigation',
      async () => {
        await page.getByTestId('logout').click();
        await waitPath('/login');
        await login(VIEWER.email, VIEWER.password);
        await page.getByTestId('nav-open').click();
        await page.getByRole('link', { name: 'API キー' }).waitFor();
        const links = await page.getByRole('navigation').first().getByRole('link').allTextContents();
        assert(JSON.stringify(links) === JSON.stringify(['ダッシュボード', 'プロフィール', 'API キー']), `viewer navigation: ${links}`);
        await page.keyboard.press('Escape');
        // Viewers see every instance and its logs, and no control that changes anything.
        const row = page.locator(`[data-testid=instance-row][data-id="${instanceId}"]`);
        await row.waitFor();
        assert((await page.getByTestId('dash-deploy').count()) === 0, 'no deploy button for a viewer');
        assert((await row.getByRole('button').count()) === 0, 'no instance controls for a viewer');
        await row.getByTestId('instance-link').click();
        await page.getByTestId('instance-page').waitFor();
        assert((await page.getByTestId('instance-start').count()) === 0 && (await page.getByTestId('instance-delete').count()) === 0, 'no controls on the instance page');
        assert((await page.getByTestId('instance-settings').count()) === 0, 'no settings for a viewer');
        await page.getByTestId('tab-logs').click();
        await page.getByTestId('logs').waitFor();
        await page.getByTestId('logout').click();
        await waitPath('/login');
      },
    ],
    [
      'the user deletes the instance from the dashboard',
      async () => {
        await login(USER.email, USER.changedPassword);
        const row = page.locator(`[data-testid=instance-row][data-id="${instanceId}"]`);
        await row.getByTestId('instance-delete').click();
        await page.getByTestId('confirm').click();
        await row.waitFor({ state: 'detached', timeout: 30_000 });
        const r = await http(base, 'GET', `/api/instances/${instanceId}`, { token: ADMIN_KEY });
        assert(r.status === 404 || r.json?.desired === 'deleted', `deleted: ${r.status} ${r.json?.desired}`);
        await page.getByTestId('logout').click();
        await waitPath('/login');
      },
    ],
    [
      'first-admin setup from the printed token; refresh before expiry',
      async () => {
        // Short-lived access tokens, to watch the silent refresh before expiry.
        const fresh = await startServer(join(work, 'fresh'), 'server-setup.log', ['--access-token-ttl', '6s']);
        const token = fresh.stdout.match(/setup_token\W+([A-Za-z0-9_-]{16,})/)?.[1];
        assert(token, `a setup token in the output: ${fresh.stdout}`);
        await page.setViewportSize({ width: 1280, height: 860 });
        await page.goto(`${fresh.url}/setup?token=${token}`);
        await page.locator('input[name=email]').fill('first@e2e.test');
        await page.locator('input[name=password]').fill(ADMIN.password);
        await page.locator('input[name=confirmPassword]').fill(ADMIN.password);
        await page.getByRole('button', { name: 'Create administrator' }).click();
        await waitPath('/dashboard');
        // A new origin (port): English again, from the browser's language.
        await page.getByRole('link', { name: 'Users' }).waitFor();
        await screenshot('setup-first-admin');
        // No user action for longer than the token lives: the client refreshes on its own
        // (at half of the 6 s life here), and the next call just works.
        let refreshes = 0;
        const count = (r) => {
          if (new URL(r.url()).pathname === '/api/auth/refresh') refreshes += 1;
        };
        page.on('request', count);
        await page.waitForTimeout(7_500);
        page.off('request', count);
        assert(refreshes >= 2, `scheduled refreshes in 7.5 s with a 6 s token: ${refreshes}`);
        await page.getByRole('link', { name: 'Users' }).click();
        await page.locator('[data-testid=user-row][data-email="first@e2e.test"]').waitFor();
      },
    ],
    [
      'no page errors, console errors or CSP violations',
      async () => {
        assert(problems.length === 0, problems.join('\n'));
      },
    ],
  ];

  let passed = 0;
  let failed = 0;
  for (const [name, fn] of steps) {
    if (failed > 0) {
      log(`skip - ${name}`);
      continue;
    }
    const started = Date.now();
    try {
      await Promise.race([
        fn(),
        new Promise((_, rej) => setTimeout(() => rej(new Error(`step timed out after ${STEP_TIMEOUT_MS / 1000} s`)), STEP_TIMEOUT_MS).unref()),
      ]);
      passed += 1;
      log(`ok - ${name} (${Date.now() - started} ms)`);
    } catch (e) {
      failed += 1;
      log(`FAIL - ${name}: ${e instanceof Error ? e.message : e}`);
      const file = await screenshot('failure').catch(() => null);
      if (file) log(`       screenshot: ${file}`);
      log(`       url: ${page.url()}`);
    }
  }
  const skipped = steps.length - passed - failed;
  log(`e2e: screenshots in ${artifacts}`);
  log(`e2e: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  return failed === 0;
}

let ok = false;
try {
  ok = await main();
} catch (e) {
  log(`e2e: setup failed: ${e instanceof Error ? e.stack : e}`);
  log('e2e: 0 passed, 1 failed');
}
for (const fn of cleanups) await fn();
rmSync(work, { recursive: true, force: true });
process.exit(ok ? 0 : 1);
