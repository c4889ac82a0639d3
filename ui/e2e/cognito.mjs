// End-to-end test of the web UI in auth mode `cognito`: real Chromium, a real
// `corral serve --auth-mode cognito`, and a user pool on a moto server (the AWS emulator).
// Sign-up ends in the code form, the profile says where password and MFA are managed,
// setup is not offered, the password reset goes request-code, then code + new password,
// and the `corral login` CLI signs in to the same server.
//
//   scripts/with-moto.sh node ui/e2e/cognito.mjs   (after `vite build` and `cargo build -p corral`)
//
// Needs AWS_ENDPOINT_URL (set by scripts/with-moto.sh). moto accepts any confirmation
// code it did not hand out, so a made-up code stands in for the mailed one.
// Environment as e2e/run.mjs: CORRAL_BIN, CHROMIUM, ARTIFACTS (default ../artifacts/ui-cognito).
// Prints one line per step and ends with `e2e-cognito: N passed, M failed`.

import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(root, 'target');
const corralBin = process.env.CORRAL_BIN ?? join(targetDir, 'debug', 'corral');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const artifacts = resolve(process.env.ARTIFACTS ?? join(root, 'artifacts', 'ui-cognito'));
const moto = (process.env.AWS_ENDPOINT_URL ?? '').replace(/\/$/, '');
const REGION = 'us-east-1';
const STEP_TIMEOUT_MS = 60_000;
const CODE = '123456';

const run_id = Date.now().toString(36);
const USER = { email: `cog-${run_id}@e2e.test`, password: 'Cognito-e2e-Pass1!', resetPassword: 'Cognito-e2e-Reset2#' };

mkdirSync(artifacts, { recursive: true });
for (const f of readdirSync(artifacts)) if (/\.(png|log)$/.test(f)) rmSync(join(artifacts, f));
const work = mkdtempSync(join(tmpdir(), 'corral-ui-cognito-'));
const cleanups = [];

function log(line) {
  process.stdout.write(`${line}\n`);
}

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** One Cognito admin call to moto (its JSON protocol; moto does not check signatures). */
async function cognito(action, body) {
  const res = await fetch(`${moto}/`, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/x-amz-json-1.1',
      'X-Amz-Target': `AWSCognitoIdentityProviderService.${action}`,
    },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  assert(res.ok, `${action}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : {};
}

function startServer(pool, clientId) {
  return new Promise((res, rej) => {
    const logFile = createWriteStream(join(artifacts, 'server.log'));
    const args = ['--data-dir', join(work, 'data'), 'serve', '--listen', '127.0.0.1:0'];
    args.push('--auth-mode', 'cognito', '--cognito-region', REGION, '--cognito-user-pool-id', pool, '--cognito-client-id', clientId);
    const p = spawn(corralBin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CORRAL_LOG: 'info,tower_http=warn' },
    });
    cleanups.push(
      () =>
        new Promise((done) => {
          if (p.exitCode !== null) return done();
          p.once('exit', () => done());
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
        res(m[1].replace(/\/$/, ''));
      }
    });
    p.stderr.on('data', (d) => logFile.write(d));
    p.on('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`corral serve exited early (${code}); see ${join(artifacts, 'server.log')}`));
    });
  });
}

/** Runs the `corral` CLI; resolves to its output, rejects when it fails. */
function cli(args, env, input = '') {
  return new Promise((res, rej) => {
    const p = spawn(corralBin, args, { stdio: ['pipe', 'pipe', 'pipe'], env });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', rej);
    p.on('exit', (code) => (code === 0 ? res(out) : rej(new Error(`corral ${args.join(' ')} exited ${code}: ${out}`))));
    p.stdin.end(input);
  });
}

async function main() {
  assert(moto, 'AWS_ENDPOINT_URL is not set: run this under scripts/with-moto.sh');
  const pool = (await cognito('CreateUserPool', { PoolName: `corral-ui-${run_id}` })).UserPool.Id;
  const client = await cognito('CreateUserPoolClient', {
    UserPoolId: pool,
    ClientName: 'corral-ui',
    ExplicitAuthFlows: ['ALLOW_USER_PASSWORD_AUTH', 'ALLOW_REFRESH_TOKEN_AUTH'],
  });
  for (const group of ['admin', 'user', 'viewer']) await cognito('CreateGroup', { UserPoolId: pool, GroupName: group });
  const base = await startServer(pool, client.UserPoolClient.ClientId);
  log(`e2e-cognito: server ${base}, pool ${pool}`);

  const context = await chromium.launchPersistentContext(join(work, 'chromium-profile'), {
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 860 },
    locale: 'en-US',
    timezoneId: 'UTC',
  });
  cleanups.unshift(() => context.close().catch(() => undefined));
  context.setDefaultTimeout(15_000);
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (/Failed to load resource: the server responded with a status of 4\d\d/.test(m.text())) return;
    problems.push(`console error: ${m.text()}`);
  });
  let shot = 0;
  const screenshot = async (name) => {
    shot += 1;
    const file = join(artifacts, `${String(shot).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path: file, fullPage: true, animations: 'disabled' });
    return file;
  };
  const waitPath = (path) => page.waitForURL((u) => new URL(u).pathname === path);
  const login = async (password) => {
    await page.goto(`${base}/login`);
    await page.locator('input[name=email]').fill(USER.email);
    await page.locator('input[name=password]').fill(password);
    await page.getByTestId('login-form').locator('button[type=submit]').click();
  };

  const steps = [
    [
      'the server says cognito',
      async () => {
        const res = await fetch(`${base}/api/auth/config`);
        const config = await res.json();
        assert(res.status === 200 && config.mode === 'cognito' && config.setup_available === false, JSON.stringify(config));
      },
    ],
    [
      'sign up, then the e-mailed code (no link)',
      async () => {
        await page.goto(`${base}/signup`);
        await page.locator('input[name=email]').fill(USER.email);
        await page.locator('input[name=password]').fill(USER.password);
        await page.locator('input[name=confirmPassword]').fill(USER.password);
        await page.getByRole('button', { name: 'Sign up' }).click();
        await page.getByTestId('signup-sent').getByText('confirmation code').waitFor();
        const form = page.getByTestId('confirm-code-form');
        assert((await form.locator('input[name=email]').inputValue()) === USER.email, 'the address is filled in');
        const confirm = form.getByRole('button', { name: 'Confirm' });
        await form.locator('input[name=code]').fill('12');
        assert(await confirm.isDisabled(), 'a short code cannot be sent');
        await form.locator('input[name=code]').fill(CODE);
        await screenshot('signup-code');
        await confirm.click();
        await page.getByTestId('verify-done').waitFor();
      },
    ],
    [
      'log in; the profile says Cognito manages password and MFA',
      async () => {
        await login(USER.password);
        await waitPath('/dashboard');
        await page.getByRole('link', { name: 'Profile' }).click();
        await waitPath('/profile');
        await page.getByTestId('provider-card').getByText('Amazon Cognito').waitFor();
        assert((await page.getByTestId('mfa-card').count()) === 0, 'no MFA enrolment');
        assert((await page.getByText('Current password').count()) === 0, 'no password change form');
        await screenshot('profile');
        await page.getByTestId('logout').click();
        await waitPath('/login');
      },
    ],
    [
      'setup is not offered',
      async () => {
        await page.goto(`${base}/setup?token=anything`);
        await page.getByTestId('setup-cognito').waitFor();
        assert((await page.locator('input[name=password]').count()) === 0, 'no setup form');
      },
    ],
    [
      'reset the password with a code',
      async () => {
        await page.goto(`${base}/login`);
        await page.getByRole('link', { name: 'Forgot your password?' }).click();
        await page.locator('input[name=email]').fill(USER.email);
        await page.getByRole('button', { name: 'Send code' }).click();
        await page.getByTestId('reset-sent').waitFor();
        const form = page.getByTestId('reset-confirm-form');
        await form.locator('input[name=code]').fill(CODE);
        await form.locator('input[name=password]').fill(USER.resetPassword);
        await form.locator('input[name=confirmPassword]').fill(USER.resetPassword);
        await screenshot('reset-code');
        await form.locator('button[type=submit]').click();
        await page.getByTestId('reset-done').waitFor();
        await login(USER.password);
        await page.getByText('Wrong e-mail address or password.').waitFor();
        await login(USER.resetPassword);
        await waitPath('/dashboard');
      },
    ],
    [
      'the corral CLI logs in to the cognito server and uses the pool token',
      async () => {
        const env = { ...process.env, CORRAL_CREDENTIALS: join(work, 'credentials.json'), CORRAL_URL: '' };
        const out = await cli(['login', '--url', base, '--email', USER.email, '--password-stdin'], env, `${USER.resetPassword}\n`);
        assert(out.includes(`as ${USER.email} (user)`), out);
        const models = await cli(['models'], env);
        assert(models.includes('smollm2:135m'), `the catalog with the saved login: ${models}`);
      },
    ],
    [
      'an admin (pool group) sees roles as read-only',
      async () => {
        await cognito('AdminAddUserToGroup', { UserPoolId: pool, Username: USER.email, GroupName: 'admin' });
        await page.getByTestId('logout').click();
        await waitPath('/login');
        await login(USER.resetPassword);
        await waitPath('/dashboard');
        await page.goto(`${base}/admin/users`);
        await page.getByTestId('users-cognito').waitFor();
        assert((await page.getByRole('button', { name: 'Create user' }).count()) === 0, 'no local account creation');
        await screenshot('users');
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
  log(`e2e-cognito: screenshots in ${artifacts}`);
  log(`e2e-cognito: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  return failed === 0;
}

let ok = false;
try {
  ok = await main();
} catch (e) {
  log(`e2e-cognito: setup failed: ${e instanceof Error ? e.stack : e}`);
  log('e2e-cognito: 0 passed, 1 failed');
}
for (const fn of cleanups) await fn();
rmSync(work, { recursive: true, force: true });
process.exit(ok ? 0 : 1);
