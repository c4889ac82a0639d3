import { useEffect, useState, type FormEvent } from 'react';
import { useNavigate } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Chip from '@mui/material/Chip';
import Grid from '@mui/material/Grid';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api } from '../api/client';
import type { MfaEnrollment, Schemas, User } from '../api/types';
import { useAuth } from '../auth/AuthProvider';
import { features } from '../auth/mode';
import { useAuthConfig } from '../auth/useAuthConfig';
import { CopyButton } from '../components/CopyButton';
import { ErrorAlert } from '../components/ErrorAlert';
import { PageHeader } from '../components/PageHeader';
import { NewPasswordFields, useNewPassword } from '../components/NewPasswordFields';
import { PasswordField } from '../components/PasswordField';
import { useI18n } from '../i18n/I18nProvider';

export default function ProfilePage() {
  const { t } = useI18n();
  const { user: sessionUser } = useAuth();
  const [user, setUser] = useState<User | null>(sessionUser);
  const [error, setError] = useState<unknown>(null);
  const config = useAuthConfig();

  const reload = async () => {
    try {
      const u = await api.get<User>('/api/user/profile');
      setUser(u);
      api.updateUser(u);
      setError(null);
    } catch (e) {
      setError(e);
    }
  };

  useEffect(() => {
    void reload();
  }, []);

  if (!user) return <ErrorAlert error={error} onRetry={reload} />;
  return (
    <Box sx={{ maxWidth: 880 }}>
      <PageHeader title={t('profile.title')} />
      <ErrorAlert error={error} onRetry={reload} />
      <Grid container spacing={2}>
        <Grid size={{ xs: 12, md: 6 }}>
          <AccountCard user={user} />
        </Grid>
        <Grid size={{ xs: 12, md: 6 }}>
          <DisplayNameCard user={user} onSaved={(u) => { setUser(u); api.updateUser(u); }} />
        </Grid>
        {/* Until the mode is known neither is shown, so neither flashes up. */}
        {config && features(config).localCredentials && (
          <>
            <Grid size={{ xs: 12, md: 6 }}>
              <PasswordCard user={user} />
            </Grid>
            <Grid size={{ xs: 12, md: 6 }}>
              <MfaCard user={user} onChanged={reload} />
            </Grid>
          </>
        )}
        {config && !features(config).localCredentials && (
          <Grid size={{ xs: 12, md: 6 }}>
            <Section title={t('profile.providerTitle')} testId="provider-card">
              <Typography variant="body2" color="text.secondary">
                {t('profile.providerBody')}
              </Typography>
            </Section>
          </Grid>
        )}
      </Grid>
    </Box>
  );
}

function Section({ title, children, testId }: { title: string; children: React.ReactNode; testId?: string }) {
  return (
    <Card variant="outlined" sx={{ height: '100%' }} data-testid={testId}>
      <CardContent>
        <Typography variant="h6" component="h2" gutterBottom>
          {title}
        </Typography>
        {children}
      </CardContent>
    </Card>
  );
}

function AccountCard({ user }: { user: User }) {
  const { t, dateTime } = useI18n();
  const rows: [string, React.ReactNode][] = [
    [t('common.email'), user.email],
    [t('profile.role'), <Chip key="r" size="small" label={t(`role.${user.role}`)} color={user.role === 'admin' ? 'primary' : 'default'} />],
    [t('profile.verified'), user.email_verified ? t('common.yes') : t('common.no')],
    [t('mfa.title'), user.mfa_enabled ? t('mfa.on') : t('mfa.off')],
    [t('profile.memberSince'), dateTime(user.created_at)],
    [t('profile.lastLogin'), dateTime(user.last_login_at)],
  ];
  return (
    <Section title={t('profile.account')}>
      <Box component="dl" sx={{ display: 'grid', gridTemplateColumns: 'auto 1fr', columnGap: 2, rowGap: 1, m: 0 }}>
        {rows.map(([k, v]) => (
          <Box key={k} sx={{ display: 'contents' }}>
            <Typography component="dt" variant="body2" color="text.secondary">
              {k}
            </Typography>
            <Typography component="dd" variant="body2" sx={{ m: 0, overflowWrap: 'anywhere' }}>
              {v}
            </Typography>
          </Box>
        ))}
      </Box>
    </Section>
  );
}

function DisplayNameCard({ user, onSaved }: { user: User; onSaved: (u: User) => void }) {
  const { t } = useI18n();
  const [name, setName] = useState(user.display_name);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [saved, setSaved] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setSaved(false);
    try {
      onSaved(await api.put<User>('/api/user/profile', { display_name: name } satisfies Schemas['UpdateProfile']));
      setSaved(true);
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  };

  const trimmed = name.trim();
  return (
    <Section title={t('profile.displayName')}>
      <Box component="form" onSubmit={submit} data-testid="display-name-form">
        <TextField
          fullWidth
          margin="normal"
          label={t('profile.displayName')}
          name="display_name"
          value={name}
          onChange={(e) => {
            setName(e.target.value);
            setSaved(false);
          }}
          slotProps={{ htmlInput: { maxLength: 100 } }}
        />
        <ErrorAlert error={error} />
        {saved && <Alert severity="success" sx={{ mb: 2 }}>{t('profile.nameSaved')}</Alert>}
        <Button type="submit" variant="contained" disabled={busy || !trimmed || trimmed === user.display_name}>
          {t('common.save')}
        </Button>
      </Box>
    </Section>
  );
}

function PasswordCard({ user }: { user: User }) {
  const { t } = useI18n();
  const navigate = useNavigate();
  const [current, setCurrent] = useState('');
  const pw = useNewPassword();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [done, setDone] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setDone(false);
    try {
      await api.put<User>('/api/user/profile', {
        current_password: current,
        new_password: pw.password,
        confirmPassword: pw.confirm,
      } satisfies Schemas['UpdateProfile']);
    } catch (err) {
      setError(err);
      pw.refused(err);
      setBusy(false);
      return;
    }
    // The change signs out every session, this one included: log in again with the new
    // password so that this tab keeps working (or go through the MFA step).
    try {
      const r = await api.login(user.email, pw.password);
      if (r.kind === 'mfa') {
        api.clear();
        navigate(`/login?reason=password_changed&email=${encodeURIComponent(user.email)}`, { replace: true });
        return;
      }
    } catch {
      api.clear();
      navigate('/login?reason=password_changed', { replace: true });
      return;
    }
    setCurrent('');
    pw.clear();
    setDone(true);
    setBusy(false);
  };

  return (
    <Section title={t('profile.passwordTitle')}>
      <Box component="form" onSubmit={submit} noValidate data-testid="password-form">
        {/* Lets password managers tie the new password to the account. */}
        <input type="text" name="username" autoComplete="username" value={user.email} readOnly hidden />
        <PasswordField
          label={t('profile.currentPassword')}
          name="current_password"
          autoComplete="current-password"
          value={current}
          onChange={(e) => setCurrent(e.target.value)}
          required
        />
        <NewPasswordFields value={pw} label={t('profile.newPassword')} name="new_password" checklistWhenTyped />
        <ErrorAlert error={error} />
        {done && <Alert severity="success" sx={{ mb: 2 }}>{t('profile.passwordChanged')}</Alert>}
        <Button type="submit" variant="contained" disabled={busy || !current || !pw.ready}>
          {t('profile.changePassword')}
        </Button>
      </Box>
    </Section>
  );
}

function MfaCard({ user, onChanged }: { user: User; onChanged: () => Promise<void> }) {
  const { t } = useI18n();
  const [enrollment, setEnrollment] = useState<MfaEnrollment | null>(null);
  const [qr, setQr] = useState<string | null>(null);
  const [code, setCode] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [notice, setNotice] = useState<string | null>(null);

  useEffect(() => {
    if (!enrollment) {
      setQr(null);
      return;
    }
    let live = true;
    // The QR code is drawn here, in the browser: the secret never goes to a third party.
    import('qrcode')
      .then((QR) => QR.toDataURL(enrollment.otpauth_uri, { errorCorrectionLevel: 'M', margin: 1, width: 220 }))
      .then((url) => live && setQr(url))
      .catch((e: unknown) => live && setError(e));
    return () => {
      live = false;
    };
  }, [enrollment]);

  const run = async (fn: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    setNotice(null);
    try {
      await fn();
    } catch (err) {
      setError(err);
      setCode('');
    }
    setBusy(false);
  };

  const enroll = () =>
    run(async () => {
      setEnrollment(await api.post<MfaEnrollment>('/api/auth/mfa/enroll', { password }));
      setPassword('');
    });

  const confirm = (e: FormEvent) => {
    e.preventDefault();
    return run(async () => {
      await api.post('/api/auth/mfa/confirm', { code } satisfies Schemas['CodeRequest']);
      setEnrollment(null);
      setCode('');
      setNotice(t('mfa.enabledNow'));
      await onChanged();
    });
  };

  const disable = (e: FormEvent) => {
    e.preventDefault();
    return run(async () => {
      await api.post('/api/auth/mfa/disable', { password, code } satisfies Schemas['DisableRequest']);
      setPassword('');
      setCode('');
      setNotice(t('mfa.disabledNow'));
      await onChanged();
    });
  };

  const codeField = (
    <TextField
      fullWidth
      margin="normal"
      label={t('mfa.code')}
      name="code"
      value={code}
      onChange={(e) => setCode(e.target.value.replace(/[^0-9]/g, '').slice(0, 6))}
      autoComplete="one-time-code"
      slotProps={{ htmlInput: { inputMode: 'numeric', pattern: '[0-9]*', maxLength: 6 } }}
    />
  );

  return (
    <Section title={t('mfa.title')} testId="mfa-card">
      <Box sx={{ mb: 1 }}>
        <Chip
          size="small"
          label={user.mfa_enabled ? t('mfa.on') : t('mfa.off')}
          color={user.mfa_enabled ? 'success' : 'default'}
          data-testid="mfa-status"
          data-enabled={user.mfa_enabled}
        />
      </Box>
      {notice && <Alert severity="success" sx={{ my: 1 }}>{notice}</Alert>}
      {!user.mfa_enabled && !enrollment && (
        <>
          <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }}>
            {t('mfa.intro')}
          </Typography>
          <input type="text" name="username" autoComplete="username" value={user.email} readOnly hidden />
          <PasswordField
            label={t('common.password')}
            helperText={t('mfa.enrollPassword')}
            name="password"
            autoComplete="current-password"
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
          <ErrorAlert error={error} />
          <Button variant="contained" onClick={enroll} disabled={busy || !password} data-testid="mfa-enroll">
            {t('mfa.enable')}
          </Button>
        </>
      )}
      {!user.mfa_enabled && enrollment && (
        <Box component="form" onSubmit={confirm}>
          <Typography variant="body2" sx={{ mb: 1 }}>
            {t('mfa.scan')}
          </Typography>
          <Box sx={{ display: 'flex', justifyContent: 'center', my: 1, minHeight: 220 }}>
            {qr && <img src={qr} width={220} height={220} alt={t('mfa.qrAlt')} data-testid="mfa-qr" />}
          </Box>
          <Typography variant="body2" color="text.secondary">
            {t('mfa.secret')}
          </Typography>
          <Box sx={{ display: 'flex', alignItems: 'center', flexWrap: 'wrap', gap: 1 }}>
            <Typography
              component="code"
              data-testid="mfa-secret"
              data-secret={enrollment.secret}
              sx={{ fontFamily: 'monospace', fontSize: 15, letterSpacing: 1, overflowWrap: 'anywhere' }}
            >
              {enrollment.secret.replace(/(.{4})/g, '$1 ').trim()}
            </Typography>
            <CopyButton text={enrollment.secret} />
          </Box>
          {codeField}
          <ErrorAlert error={error} />
          <Box sx={{ display: 'flex', gap: 1 }}>
            <Button type="submit" variant="contained" disabled={busy || code.length !== 6} data-testid="mfa-confirm">
              {t('mfa.confirm')}
            </Button>
            <Button onClick={() => { setEnrollment(null); setCode(''); setError(null); }}>{t('common.cancel')}</Button>
          </Box>
        </Box>
      )}
      {user.mfa_enabled && (
        <Box component="form" onSubmit={disable} noValidate>
          <Typography variant="subtitle2" sx={{ mt: 1 }}>
            {t('mfa.disableTitle')}
          </Typography>
          <Typography variant="body2" color="text.secondary">
            {t('mfa.disableIntro')}
          </Typography>
          <input type="text" name="username" autoComplete="username" value={user.email} readOnly hidden />
          <PasswordField
            label={t('common.password')}
            name="password"
            autoComplete="current-password"
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
          {codeField}
          <ErrorAlert error={error} />
          <Button type="submit" color="error" variant="outlined" disabled={busy || !password || code.length !== 6}>
            {t('mfa.disable')}
          </Button>
        </Box>
      )}
    </Section>
  );
}
