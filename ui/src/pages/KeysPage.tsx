import { useCallback, useEffect, useState, type FormEvent } from 'react';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Chip from '@mui/material/Chip';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogTitle from '@mui/material/DialogTitle';
import IconButton from '@mui/material/IconButton';
import MenuItem from '@mui/material/MenuItem';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableContainer from '@mui/material/TableContainer';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import TextField from '@mui/material/TextField';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import DeleteOutline from '@mui/icons-material/DeleteOutline';
import { api } from '../api/client';
import type { ApiKey, CreatedKey, Schemas } from '../api/types';
import { ConfirmDialog } from '../components/ConfirmDialog';
import { CopyButton } from '../components/CopyButton';
import { ErrorAlert } from '../components/ErrorAlert';
import { Loading } from '../components/Loading';
import { Markup } from '../components/Markup';
import { PageHeader } from '../components/PageHeader';
import { PasswordField } from '../components/PasswordField';
import { useAuth } from '../auth/AuthProvider';
import { useI18n } from '../i18n/I18nProvider';
import { visuallyHidden } from '../lib/a11y';

const EXPIRY_CHOICES = [0, 30, 90, 365] as const;
const wide = { display: { xs: 'none', sm: 'table-cell' } } as const;

export default function KeysPage() {
  const { t, dateTime } = useI18n();
  const { user } = useAuth();
  const mfa = user?.mfa_enabled ?? false;
  const [keys, setKeys] = useState<ApiKey[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [name, setName] = useState('');
  const [days, setDays] = useState<number>(90);
  // A key outlives a login: creating one asks for the password (and a code with MFA),
  // so that a stolen session alone cannot mint one.
  const [password, setPassword] = useState('');
  const [code, setCode] = useState('');
  const [busy, setBusy] = useState(false);
  const [created, setCreated] = useState<CreatedKey | null>(null);
  const [revoking, setRevoking] = useState<ApiKey | null>(null);
  const [notice, setNotice] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      setKeys(await api.get<ApiKey[]>('/api/keys'));
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, []);

  useEffect(() => {
    void load();
  }, [load]);

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setNotice(null);
    try {
      const body: Schemas['CreateKey'] = { name: name.trim(), password };
      if (days > 0) body.expires_in_days = days;
      else body.never_expires = true;
      if (mfa) body.code = code;
      setCreated(await api.post<CreatedKey>('/api/keys', body));
      setName('');
      setPassword('');
      setCode('');
      await load();
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  };

  const revoke = async () => {
    if (!revoking) return;
    setBusy(true);
    try {
      await api.del(`/api/keys/${revoking.id}`);
      setNotice(t('keys.revoked'));
      await load();
    } catch (err) {
      setError(err);
    }
    setRevoking(null);
    setBusy(false);
  };

  return (
    <Box sx={{ maxWidth: 1000 }}>
      <PageHeader title={t('keys.title')} />
      <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }}>
        <Markup text={t('keys.intro')} />
      </Typography>
      <Card variant="outlined" sx={{ mb: 2 }}>
        <CardContent>
          <Box
            component="form"
            onSubmit={create}
            data-testid="key-create-form"
            sx={{ display: 'flex', flexWrap: 'wrap', gap: 2, alignItems: 'flex-start' }}
          >
            <TextField
              label={t('keys.name')}
              helperText={t('keys.nameHelp')}
              name="name"
              value={name}
              onChange={(e) => setName(e.target.value)}
              size="small"
              sx={{ flex: '1 1 220px' }}
              slotProps={{ htmlInput: { maxLength: 64 } }}
            />
            <TextField
              select
              label={t('keys.expiresIn')}
              value={days}
              onChange={(e) => setDays(Number(e.target.value))}
              size="small"
              sx={{ flex: '0 1 180px', minWidth: 150 }}
              data-testid="key-expiry"
            >
              {EXPIRY_CHOICES.map((d) => (
                <MenuItem key={d} value={d}>
                  {d === 0 ? t('keys.never') : t('keys.days', { n: d })}
                </MenuItem>
              ))}
            </TextField>
            <input type="text" name="username" autoComplete="username" value={user?.email ?? ''} readOnly hidden />
            <PasswordField
              label={t('common.password')}
              helperText={t('keys.passwordHelp')}
              name="password"
              autoComplete="current-password"
              value={password}
              onChange={(e) => setPassword(e.target.value)}
              size="small"
              margin="none"
              sx={{ flex: '1 1 220px' }}
            />
            {mfa && (
              <TextField
                label={t('mfa.code')}
                name="code"
                value={code}
                onChange={(e) => setCode(e.target.value.replace(/[^0-9]/g, '').slice(0, 6))}
                autoComplete="one-time-code"
                size="small"
                sx={{ flex: '0 1 150px' }}
                slotProps={{ htmlInput: { inputMode: 'numeric', pattern: '[0-9]*', maxLength: 6 } }}
              />
            )}
            <Button
              type="submit"
              variant="contained"
              disabled={busy || !name.trim() || !password || (mfa && code.length !== 6)}
            >
              {t('keys.create')}
            </Button>
          </Box>
        </CardContent>
      </Card>
      <ErrorAlert error={error} onRetry={keys === null ? load : undefined} />
      {notice && <Alert severity="success" sx={{ mb: 2 }} onClose={() => setNotice(null)}>{notice}</Alert>}
      {keys === null ? (
        !error && <Loading />
      ) : keys.length === 0 ? (
        <Typography color="text.secondary" data-testid="keys-empty">
          {t('keys.empty')}
        </Typography>
      ) : (
        <TableContainer component={Card} variant="outlined">
          <Table size="small" data-testid="keys-table">
            <TableHead>
              <TableRow>
                <TableCell>{t('keys.name')}</TableCell>
                <TableCell>{t('keys.key')}</TableCell>
                <TableCell sx={wide}>{t('keys.created')}</TableCell>
                <TableCell>{t('keys.expires')}</TableCell>
                <TableCell sx={wide}>{t('keys.lastUsed')}</TableCell>
                <TableCell align="right">
                  <Box component="span" sx={visuallyHidden}>
                    {t('common.actions')}
                  </Box>
                </TableCell>
              </TableRow>
            </TableHead>
            <TableBody>
              {keys.map((k) => (
                <TableRow key={k.id} data-testid="key-row" data-key-id={k.id}>
                  <TableCell sx={{ overflowWrap: 'anywhere' }}>{k.name}</TableCell>
                  <TableCell sx={{ fontFamily: 'monospace', whiteSpace: 'nowrap' }}>{k.prefix}…</TableCell>
                  <TableCell sx={wide}>{dateTime(k.created_at)}</TableCell>
                  <TableCell>
                    {k.expired ? <Chip size="small" color="warning" label={t('keys.expired')} /> : k.expires_at ? dateTime(k.expires_at) : t('keys.never')}
                  </TableCell>
                  <TableCell sx={wide}>{dateTime(k.last_used_at)}</TableCell>
                  <TableCell align="right">
                    <Tooltip title={t('keys.revoke')}>
                      <IconButton aria-label={`${t('keys.revoke')}: ${k.name}`} onClick={() => setRevoking(k)} color="error" size="small">
                        <DeleteOutline />
                      </IconButton>
                    </Tooltip>
                  </TableCell>
                </TableRow>
              ))}
            </TableBody>
          </Table>
        </TableContainer>
      )}

      <Dialog open={created !== null} aria-labelledby="created-key-title" fullWidth maxWidth="sm">
        <DialogTitle id="created-key-title">{t('keys.createdTitle')}</DialogTitle>
        <DialogContent>
          <Alert severity="warning" sx={{ mb: 2 }}>
            {t('keys.createdWarn')}
          </Alert>
          <TextField
            fullWidth
            value={created?.key ?? ''}
            label={created?.name}
            slotProps={{ htmlInput: { readOnly: true, 'data-testid': 'created-key', style: { fontFamily: 'monospace' } } }}
            onFocus={(e) => e.target.select()}
          />
          <Box sx={{ mt: 1 }}>{created && <CopyButton text={created.key} />}</Box>
        </DialogContent>
        <DialogActions>
          <Button variant="contained" onClick={() => setCreated(null)} data-testid="created-key-done">
            {t('keys.done')}
          </Button>
        </DialogActions>
      </Dialog>

      <ConfirmDialog
        open={revoking !== null}
        title={t('keys.revokeTitle')}
        body={t('keys.revokeBody', { name: revoking?.name ?? '' })}
        confirmLabel={t('keys.revoke')}
        busy={busy}
        onConfirm={revoke}
        onClose={() => setRevoking(null)}
      />
    </Box>
  );
}
