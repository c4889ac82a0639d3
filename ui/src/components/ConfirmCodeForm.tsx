import { useState, type FormEvent } from 'react';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import TextField from '@mui/material/TextField';
import { api } from '../api/client';
import { codeError, looksLikeCode, verifyBody } from '../auth/mode';
import { useI18n } from '../i18n/I18nProvider';
import { ErrorAlert } from './ErrorAlert';

/**
 * Cognito mode's e-mail confirmation: the address and the code Cognito e-mailed, sent to
 * POST /api/auth/verify, with a way to have the code sent again.
 */
export function ConfirmCodeForm({ initialEmail = '', onDone }: { initialEmail?: string; onDone: () => void }) {
  const { t } = useI18n();
  const [email, setEmail] = useState(initialEmail);
  const [code, setCode] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [resent, setResent] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.post('/api/auth/verify', verifyBody('cognito', { email, code }), { auth: false });
      onDone();
    } catch (err) {
      setError(codeError(err));
    }
    setBusy(false);
  };

  const resend = async () => {
    setError(null);
    try {
      await api.post('/api/auth/resend-verification', { email: email.trim() }, { auth: false });
      setResent(true);
    } catch (err) {
      setError(err);
    }
  };

  return (
    <Box component="form" onSubmit={submit} noValidate data-testid="confirm-code-form">
      <TextField
        fullWidth
        margin="normal"
        type="email"
        name="email"
        label={t('common.email')}
        value={email}
        onChange={(e) => setEmail(e.target.value)}
        autoComplete="email"
        autoFocus={!initialEmail}
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
        autoFocus={Boolean(initialEmail)}
        required
        slotProps={{ htmlInput: { inputMode: 'numeric', maxLength: 6 } }}
      />
      <ErrorAlert error={error} />
      {resent && <Alert severity="info" sx={{ mb: 2 }}>{t('code.resent')}</Alert>}
      <Box sx={{ display: 'flex', flexWrap: 'wrap', gap: 1 }}>
        <Button type="submit" variant="contained" size="large" disabled={busy || !email || !looksLikeCode(code)}>
          {t('code.submit')}
        </Button>
        <Button onClick={resend} disabled={!email}>
          {t('code.resend')}
        </Button>
      </Box>
    </Box>
  );
}
