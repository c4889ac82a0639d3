import { useState, type FormEvent } from 'react';
import { Link as RouterLink, useNavigate, useSearchParams } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api } from '../api/client';
import { features } from '../auth/mode';
import { useAuthConfig } from '../auth/useAuthConfig';
import { ErrorAlert } from '../components/ErrorAlert';
import { Markup } from '../components/Markup';
import { NewPasswordFields, useNewPassword } from '../components/NewPasswordFields';
import { PublicPage } from '../components/PublicPage';
import { useI18n } from '../i18n/I18nProvider';
import { HOME_PATH } from '../nav';

/** First-admin setup from the link `corral serve` prints when no account exists. */
export function SetupPage() {
  const { t } = useI18n();
  const [params] = useSearchParams();
  const token = params.get('token');
  const navigate = useNavigate();
  const [email, setEmail] = useState('');
  const pw = useNewPassword();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const config = useAuthConfig();

  // Cognito mode has no setup: admins are the user pool's admin group.
  if (config && !features(config).setup) {
    return (
      <PublicPage title={t('setup.title')}>
        <Alert severity="info" sx={{ my: 2 }} data-testid="setup-cognito">
          {t('setup.cognito')}
        </Alert>
        <Button component={RouterLink} to="/login" variant="contained">
          {t('common.toLogin')}
        </Button>
      </PublicPage>
    );
  }

  if (!token) {
    return (
      <PublicPage title={t('setup.title')}>
        <Alert severity="warning" sx={{ my: 2 }}>
          <Markup text={t('setup.noToken')} />
        </Alert>
      </PublicPage>
    );
  }

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.setup({ setup_token: token, email, password: pw.password, confirmPassword: pw.confirm });
      navigate(HOME_PATH, { replace: true });
      return;
    } catch (err) {
      setError(err);
      pw.refused(err);
    }
    setBusy(false);
  };

  return (
    <PublicPage title={t('setup.title')}>
      <Typography variant="body2" color="text.secondary">
        {t('setup.intro')}
      </Typography>
      <Box component="form" onSubmit={submit} noValidate>
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
        <NewPasswordFields value={pw} />
        <ErrorAlert error={error} />
        <Button
          type="submit"
          variant="contained"
          size="large"
          fullWidth
          disabled={busy || !email || !pw.ready}
        >
          {t('setup.submit')}
        </Button>
      </Box>
    </PublicPage>
  );
}
