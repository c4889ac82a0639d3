import { useState, type FormEvent } from 'react';
import { Link as RouterLink, useSearchParams } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api, ApiError } from '../api/client';
import { ErrorAlert } from '../components/ErrorAlert';
import { PasswordChecklist } from '../components/PasswordChecklist';
import { PasswordField } from '../components/PasswordField';
import { PublicPage } from '../components/PublicPage';
import { useI18n } from '../i18n/I18nProvider';
import { isAcceptable, rulesFromDetails, type Rule } from '../lib/password';

/** `/reset-password` asks for the mail; `/reset-password?token=…` (its link) sets the password. */
export function ResetPasswordPage() {
  const [params] = useSearchParams();
  const token = params.get('token');
  return token ? <ConfirmReset token={token} /> : <RequestReset />;
}

function RequestReset() {
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

  return (
    <PublicPage title={t('reset.title')}>
      {sent ? (
        <Alert severity="success" sx={{ my: 2 }} data-testid="reset-sent">
          {t('reset.sent', { email: sent })}
        </Alert>
      ) : (
        <Box component="form" onSubmit={submit} noValidate>
          <Typography variant="body2" color="text.secondary">
            {t('reset.prompt')}
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
            {t('reset.submit')}
          </Button>
        </Box>
      )}
      <Button component={RouterLink} to="/login" sx={{ mt: 2 }}>
        {t('common.backToLogin')}
      </Button>
    </PublicPage>
  );
}

function ConfirmReset({ token }: { token: string }) {
  const { t } = useI18n();
  const [password, setPassword] = useState('');
  const [confirm, setConfirm] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [serverFailed, setServerFailed] = useState<Rule[]>([]);
  const [done, setDone] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.post('/api/auth/reset-password/confirm', { token, password, confirmPassword: confirm }, { auth: false });
      setDone(true);
      window.history.replaceState(null, '', '/reset-password');
    } catch (err) {
      setError(err);
      setServerFailed(err instanceof ApiError && err.code === 'weak_password' ? rulesFromDetails(err.details) : []);
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
      <Box component="form" onSubmit={submit} noValidate>
        <PasswordField
          label={t('reset.newPassword')}
          name="password"
          autoComplete="new-password"
          value={password}
          onChange={(e) => setPassword(e.target.value)}
          autoFocus
          required
        />
        <PasswordField
          label={t('common.confirmPassword')}
          name="confirmPassword"
          autoComplete="new-password"
          value={confirm}
          onChange={(e) => setConfirm(e.target.value)}
          error={confirm.length > 0 && confirm !== password}
          required
        />
        <PasswordChecklist password={password} confirm={confirm} serverFailed={serverFailed} />
        <ErrorAlert error={error} />
        <Button
          type="submit"
          variant="contained"
          size="large"
          fullWidth
          disabled={busy || !isAcceptable(password) || password !== confirm}
        >
          {t('reset.confirmSubmit')}
        </Button>
      </Box>
    </PublicPage>
  );
}
