import { useState, type FormEvent } from 'react';
import { Link as RouterLink } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Link from '@mui/material/Link';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api } from '../api/client';
import type { Schemas } from '../api/types';
import { features } from '../auth/mode';
import { useAuthConfig } from '../auth/useAuthConfig';
import { ConfirmCodeForm } from '../components/ConfirmCodeForm';
import { ErrorAlert } from '../components/ErrorAlert';
import { NewPasswordFields, useNewPassword } from '../components/NewPasswordFields';
import { PublicPage } from '../components/PublicPage';
import { useI18n } from '../i18n/I18nProvider';

export function SignupPage() {
  const { t } = useI18n();
  const [email, setEmail] = useState('');
  const pw = useNewPassword();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [sentTo, setSentTo] = useState<string | null>(null);
  const [resent, setResent] = useState(false);
  const [confirmed, setConfirmed] = useState(false);
  const config = useAuthConfig();

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.post('/api/auth/signup', { email, password: pw.password, confirmPassword: pw.confirm } satisfies Schemas['SignupRequest'], { auth: false });
      setSentTo(email.trim());
      pw.clear();
    } catch (err) {
      setError(err);
      pw.refused(err);
    }
    setBusy(false);
  };

  if (confirmed) {
    return (
      <PublicPage title={t('verify.title')}>
        <Alert severity="success" sx={{ my: 2 }} data-testid="verify-done">
          {t('verify.done')}
        </Alert>
        <Button component={RouterLink} to="/login" variant="contained" fullWidth size="large">
          {t('common.toLogin')}
        </Button>
      </PublicPage>
    );
  }

  // Cognito mails a code, not a link: it is typed in here, with the address.
  if (sentTo && config && features(config).codes) {
    return (
      <PublicPage title={t('signup.sentTitle')}>
        <Alert severity="success" sx={{ my: 2 }} data-testid="signup-sent">
          {t('signup.codeBody', { email: sentTo })}
        </Alert>
        <ConfirmCodeForm initialEmail={sentTo} onDone={() => setConfirmed(true)} />
        <Button component={RouterLink} to="/login" sx={{ mt: 2 }}>
          {t('common.backToLogin')}
        </Button>
      </PublicPage>
    );
  }

  if (sentTo) {
    return (
      <PublicPage title={t('signup.sentTitle')}>
        <Alert severity="success" sx={{ my: 2 }} data-testid="signup-sent">
          {t('signup.sentBody', { email: sentTo })}
        </Alert>
        <ErrorAlert error={error} />
        {resent && <Alert severity="info" sx={{ mb: 2 }}>{t('signup.resent')}</Alert>}
        <Box sx={{ display: 'flex', flexWrap: 'wrap', gap: 1 }}>
          <Button
            onClick={async () => {
              try {
                await api.post('/api/auth/resend-verification', { email: sentTo }, { auth: false });
                setResent(true);
              } catch (err) {
                setError(err);
              }
            }}
          >
            {t('signup.resend')}
          </Button>
          <Button component={RouterLink} to="/login" variant="contained">
            {t('common.toLogin')}
          </Button>
        </Box>
      </PublicPage>
    );
  }

  const ready = email.length > 0 && pw.ready;
  return (
    <PublicPage title={t('signup.title')}>
      <Box component="form" onSubmit={submit} noValidate data-testid="signup-form">
        <TextField
          fullWidth
          margin="normal"
          label={t('common.email')}
          name="email"
          type="email"
          autoComplete="email"
          value={email}
          onChange={(e) => setEmail(e.target.value)}
          autoFocus
          required
        />
        <NewPasswordFields value={pw} />
        <ErrorAlert error={error} />
        <Button type="submit" variant="contained" size="large" fullWidth disabled={busy || !ready} sx={{ mt: 1 }}>
          {t('signup.submit')}
        </Button>
      </Box>
      <Typography variant="body2" sx={{ mt: 3 }}>
        <Link component={RouterLink} to="/login">
          {t('signup.haveAccount')}
        </Link>
      </Typography>
    </PublicPage>
  );
}
