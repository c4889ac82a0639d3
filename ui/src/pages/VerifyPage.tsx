import { useEffect, useState, type FormEvent } from 'react';
import { Link as RouterLink, useSearchParams } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api } from '../api/client';
import { features, verifyBody } from '../auth/mode';
import { useAuthConfig } from '../auth/useAuthConfig';
import { ConfirmCodeForm } from '../components/ConfirmCodeForm';
import { ErrorAlert } from '../components/ErrorAlert';
import { Loading } from '../components/Loading';
import { PublicPage } from '../components/PublicPage';
import { useI18n } from '../i18n/I18nProvider';

// One request per token even if the effect runs twice (React's development checks): the
// token is single-use, so a second request would report a failure.
const attempts = new Map<string, Promise<unknown>>();

export function VerifyPage() {
  const config = useAuthConfig();
  const [params] = useSearchParams();
  const token = params.get('token');
  if (!config && !token) return <Loading />;
  // Cognito mails a code to type in here; a link with a token is the built-in mode's.
  if (config && features(config).codes && !token) return <VerifyWithCode initialEmail={params.get('email') ?? ''} />;
  return <VerifyWithLink token={token} />;
}

function VerifyWithCode({ initialEmail }: { initialEmail: string }) {
  const { t } = useI18n();
  const [done, setDone] = useState(false);
  return (
    <PublicPage title={t('verify.title')}>
      {done ? (
        <>
          <Alert severity="success" sx={{ my: 2 }} data-testid="verify-done">
            {t('verify.done')}
          </Alert>
          <Button component={RouterLink} to="/login" variant="contained" fullWidth size="large">
            {t('common.toLogin')}
          </Button>
        </>
      ) : (
        <>
          <Typography variant="body2" color="text.secondary">
            {t('verify.codePrompt')}
          </Typography>
          <ConfirmCodeForm initialEmail={initialEmail} onDone={() => setDone(true)} />
          <Button component={RouterLink} to="/login" sx={{ mt: 2 }}>
            {t('common.backToLogin')}
          </Button>
        </>
      )}
    </PublicPage>
  );
}

function VerifyWithLink({ token }: { token: string | null }) {
  const { t } = useI18n();
  const [state, setState] = useState<'working' | 'done' | 'failed'>(token ? 'working' : 'failed');
  const [error, setError] = useState<unknown>(null);
  const [email, setEmail] = useState('');
  const [resent, setResent] = useState(false);

  useEffect(() => {
    if (!token) return;
    let attempt = attempts.get(token);
    if (!attempt) {
      attempt = api.post('/api/auth/verify', verifyBody('builtin', { token }), { auth: false });
      attempts.set(token, attempt);
    }
    let live = true;
    attempt.then(
      () => {
        if (!live) return;
        setState('done');
        // The token is spent; keep it out of the history and of screenshots.
        window.history.replaceState(null, '', '/verify');
      },
      (e: unknown) => {
        if (!live) return;
        setError(e);
        setState('failed');
      },
    );
    return () => {
      live = false;
    };
  }, [token]);

  const resend = async (e: FormEvent) => {
    e.preventDefault();
    try {
      await api.post('/api/auth/resend-verification', { email }, { auth: false });
      setResent(true);
    } catch (err) {
      setError(err);
    }
  };

  return (
    <PublicPage title={t('verify.title')}>
      {state === 'working' && (
        <>
          <Typography>{t('verify.working')}</Typography>
          <Loading />
        </>
      )}
      {state === 'done' && (
        <>
          <Alert severity="success" sx={{ my: 2 }} data-testid="verify-done">
            {t('verify.done')}
          </Alert>
          <Button component={RouterLink} to="/login" variant="contained" fullWidth size="large">
            {t('common.toLogin')}
          </Button>
        </>
      )}
      {state === 'failed' && (
        <>
          {token ? <ErrorAlert error={error} /> : <Alert severity="warning" sx={{ my: 2 }}>{t('verify.noToken')}</Alert>}
          {resent ? (
            <Alert severity="info">{t('signup.resent')}</Alert>
          ) : (
            <Box component="form" onSubmit={resend}>
              <Typography variant="body2" sx={{ mt: 2 }}>
                {t('verify.resendPrompt')}
              </Typography>
              <TextField
                fullWidth
                margin="normal"
                type="email"
                label={t('common.email')}
                value={email}
                onChange={(e) => setEmail(e.target.value)}
                autoComplete="email"
              />
              <Button type="submit" variant="contained" disabled={!email}>
                {t('verify.resend')}
              </Button>
            </Box>
          )}
          <Button component={RouterLink} to="/login" sx={{ mt: 2 }}>
            {t('common.backToLogin')}
          </Button>
        </>
      )}
    </PublicPage>
  );
}
