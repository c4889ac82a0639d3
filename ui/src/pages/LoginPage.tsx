import { useState, type FormEvent } from 'react';
import { Link as RouterLink, Navigate, useNavigate, useSearchParams } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Link from '@mui/material/Link';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api, ApiError } from '../api/client';
import { features } from '../auth/mode';
import { useAuthConfig } from '../auth/useAuthConfig';
import { useAuth } from '../auth/AuthProvider';
import { ErrorAlert } from '../components/ErrorAlert';
import { PasswordField } from '../components/PasswordField';
import { PublicPage } from '../components/PublicPage';
import { useI18n } from '../i18n/I18nProvider';
import { safeNext } from '../nav';

export function LoginPage() {
  const { t } = useI18n();
  const { status, startupError, retryStartup } = useAuth();
  const [params] = useSearchParams();
  const next = safeNext(params.get('next'));
  const navigate = useNavigate();

  const [email, setEmail] = useState(params.get('email') ?? '');
  const [password, setPassword] = useState('');
  const [mfaToken, setMfaToken] = useState<string | null>(null);
  const [code, setCode] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [resent, setResent] = useState(false);
  const config = useAuthConfig();

  if (status === 'signed_in' && !busy) return <Navigate to={next} replace />;

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setResent(false);
    try {
      const r = mfaToken ? await api.completeMfa(mfaToken, code.trim()) : await api.login(email, password);
      if (r.kind === 'mfa') {
        setMfaToken(r.mfaToken);
        setPassword('');
      } else {
        navigate(next, { replace: true });
        return;
      }
    } catch (err) {
      setError(err);
      setCode('');
      if (err instanceof ApiError && err.code === 'invalid_mfa_token') {
        setMfaToken(null);
      }
    }
    setBusy(false);
  };

  const resend = async () => {
    try {
      await api.post('/api/auth/resend-verification', { email }, { auth: false });
      setResent(true);
      setError(null);
    } catch (err) {
      setError(err);
    }
  };

  const unverified = error instanceof ApiError && error.code === 'email_not_verified';
  const codes = config ? features(config).codes : false;

  return (
    <PublicPage title={mfaToken ? t('login.mfaTitle') : t('login.title')}>
      {startupError ? <ErrorAlert error={startupError} onRetry={retryStartup} /> : null}
      {params.get('reason') === 'password_changed' && !mfaToken && (
        <Alert severity="info" sx={{ my: 1 }}>
          {t('login.passwordChanged')}
        </Alert>
      )}
      <Box component="form" onSubmit={submit} noValidate data-testid="login-form">
        {mfaToken ? (
          <>
            <Typography variant="body2" color="text.secondary">
              {t('login.mfaPrompt')}
            </Typography>
            <TextField
              fullWidth
              margin="normal"
              label={t('mfa.code')}
              name="code"
              value={code}
              onChange={(e) => setCode(e.target.value.replace(/[^0-9]/g, '').slice(0, 6))}
              autoComplete="one-time-code"
              autoFocus
              required
              slotProps={{ htmlInput: { inputMode: 'numeric', pattern: '[0-9]*', maxLength: 6 } }}
            />
          </>
        ) : (
          <>
            <TextField
              fullWidth
              margin="normal"
              label={t('common.email')}
              name="email"
              type="email"
              autoComplete="username"
              value={email}
              onChange={(e) => setEmail(e.target.value)}
              autoFocus
              required
            />
            <PasswordField
              label={t('common.password')}
              name="password"
              autoComplete="current-password"
              value={password}
              onChange={(e) => setPassword(e.target.value)}
              required
            />
          </>
        )}
        <ErrorAlert error={error} />
        {unverified && codes && (
          // Cognito mails a code: the verify page takes it (and sends a new one).
          <Button component={RouterLink} to={`/verify?email=${encodeURIComponent(email.trim())}`} size="small" sx={{ mb: 1 }}>
            {t('login.toConfirm')}
          </Button>
        )}
        {unverified && !codes && (
          <Button onClick={resend} size="small" sx={{ mb: 1 }}>
            {t('login.resendVerification')}
          </Button>
        )}
        {resent && <Alert severity="info" sx={{ mb: 2 }}>{t('login.resent')}</Alert>}
        <Button
          type="submit"
          variant="contained"
          size="large"
          fullWidth
          disabled={busy || (mfaToken ? code.length !== 6 : !email || !password)}
          sx={{ mt: 1 }}
        >
          {mfaToken ? t('login.mfaSubmit') : t('login.submit')}
        </Button>
      </Box>
      <Box sx={{ mt: 3, display: 'flex', flexDirection: 'column', gap: 1 }}>
        {mfaToken ? (
          <Link component="button" type="button" onClick={() => { setMfaToken(null); setCode(''); setError(null); }}>
            {t('login.mfaBack')}
          </Link>
        ) : (
          <>
            <Link component={RouterLink} to="/reset-password">
              {t('login.forgot')}
            </Link>
            <Link component={RouterLink} to="/signup">
              {t('login.noAccount')}
            </Link>
          </>
        )}
      </Box>
    </PublicPage>
  );
}
