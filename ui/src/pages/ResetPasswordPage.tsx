import { useState, type FormEvent } from 'react';
import { Link as RouterLink, useSearchParams } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api } from '../api/client';
import { codeError, features, looksLikeCode, resetConfirmBody, type AuthMode } from '../auth/mode';
import { useAuthConfig } from '../auth/useAuthConfig';
import { ErrorAlert } from '../components/ErrorAlert';
import { NewPasswordFields, useNewPassword } from '../components/NewPasswordFields';
import { PublicPage } from '../components/PublicPage';
import { useI18n } from '../i18n/I18nProvider';

/**
 * `/reset-password` asks for the mail; `/reset-password?token=…` (its link) sets the
 * password. In cognito mode the mail carries a code instead, typed in on the same page
 * with the address and the new password.
 */
export function ResetPasswordPage() {
  const [params] = useSearchParams();
  const token = params.get('token');
  const config = useAuthConfig();
  if (token) return <ConfirmReset mode="builtin" token={token} />;
  return <RequestReset codes={config ? features(config).codes : false} />;
}

function RequestReset({ codes }: { codes: boolean }) {
  const { t } = useI18n();
  const [email, setEmail] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [sent, setSent] = useState<string | null>(null);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.post('/api/auth/reset-password', { email }, { auth: false });
      setSent(email.trim());
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  };

  if (sent && codes) {
    return (
      <ConfirmReset mode="cognito" email={sent}>
        <Alert severity="success" sx={{ my: 2 }} data-testid="reset-sent">
          {t('reset.sentCode', { email: sent })}
        </Alert>
      </ConfirmReset>
    );
  }

  return (
    <PublicPage title={t('reset.title')}>
      {sent ? (
        <Alert severity="success" sx={{ my: 2 }} data-testid="reset-sent">
          {t('reset.sent', { email: sent })}
        </Alert>
      ) : (
        <Box component="form" onSubmit={submit} noValidate>
          <Typography variant="body2" color="text.secondary">
            {t(codes ? 'reset.promptCode' : 'reset.prompt')}
          </Typography>
          <TextField
            fullWidth
            margin="normal"
            type="email"
            name="email"
            label={t('common.email')}
            value={email}
            onChange={(e) => setEmail(e.target.value)}
            autoComplete="email"
            autoFocus
            required
          />
          <ErrorAlert error={error} />
          <Button type="submit" variant="contained" size="large" fullWidth disabled={busy || !email}>
            {t(codes ? 'reset.submitCode' : 'reset.submit')}
          </Button>
        </Box>
      )}
      <Button component={RouterLink} to="/login" sx={{ mt: 2 }}>
        {t('common.backToLogin')}
      </Button>
    </PublicPage>
  );
}

/** The new password, with the mailed link's token (builtin) or the address and code (cognito). */
function ConfirmReset({
  mode,
  token,
  email: initialEmail = '',
  children,
}: {
  mode: AuthMode;
  token?: string;
  email?: string;
  children?: React.ReactNode;
}) {
  const { t } = useI18n();
  const [email, setEmail] = useState(initialEmail);
  const [code, setCode] = useState('');
  const pw = useNewPassword();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [done, setDone] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.post(
        '/api/auth/reset-password/confirm',
        resetConfirmBody(mode, { token, email, code, password: pw.password, confirm: pw.confirm }),
        { auth: false },
      );
      setDone(true);
      if (token) window.history.replaceState(null, '', '/reset-password');
    } catch (err) {
      setError(codeError(err));
      pw.refused(err);
    }
    setBusy(false);
  };

  if (done) {
    return (
      <PublicPage title={t('reset.confirmTitle')}>
        <Alert severity="success" sx={{ my: 2 }} data-testid="reset-done">
          {t('reset.done')}
        </Alert>
        <Button component={RouterLink} to="/login" variant="contained" fullWidth size="large">
          {t('common.toLogin')}
        </Button>
      </PublicPage>
    );
  }

  return (
    <PublicPage title={t('reset.confirmTitle')}>
      {children}
      <Box component="form" onSubmit={submit} noValidate data-testid="reset-confirm-form">
        {mode === 'cognito' && (
          <>
            <TextField
              fullWidth
              margin="normal"
              type="email"
              name="email"
              label={t('common.email')}
              value={email}
              onChange={(e) => setEmail(e.target.value)}
              autoComplete="email"
              required
            />
            <TextField
              fullWidth
              margin="normal"
              name="code"
              label={t('code.label')}
              value={code}
              onChange={(e) => setCode(e.target.value)}
              autoComplete="one-time-code"
              autoFocus
              required
              slotProps={{ htmlInput: { inputMode: 'numeric', maxLength: 6 } }}
            />
          </>
        )}
        <NewPasswordFields value={pw} label={t('reset.newPassword')} autoFocus={mode !== 'cognito'} />
        <ErrorAlert error={error} />
        <Button
          type="submit"
          variant="contained"
          size="large"
          fullWidth
          disabled={
            busy ||
            !pw.ready ||
            (mode === 'cognito' && (!email || !looksLikeCode(code)))
          }
        >
          {t('reset.confirmSubmit')}
        </Button>
      </Box>
    </PublicPage>
  );
}
