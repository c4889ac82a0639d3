import { useCallback, useEffect, useState, type FormEvent } from 'react';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import Chip from '@mui/material/Chip';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogTitle from '@mui/material/DialogTitle';
import IconButton from '@mui/material/IconButton';
import MenuItem from '@mui/material/MenuItem';
import Stack from '@mui/material/Stack';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableContainer from '@mui/material/TableContainer';
import TableHead from '@mui/material/TableHead';
import TablePagination from '@mui/material/TablePagination';
import TableRow from '@mui/material/TableRow';
import TextField from '@mui/material/TextField';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import DeleteOutline from '@mui/icons-material/DeleteOutline';
import LockOutlined from '@mui/icons-material/LockOutlined';
import LockOpenOutlined from '@mui/icons-material/LockOpenOutlined';
import PersonAddAlt from '@mui/icons-material/PersonAddAlt';
import Refresh from '@mui/icons-material/Refresh';
import { api } from '../../api/client';
import { ROLES, type Role, type Schemas, type User, type UsersPage as Page } from '../../api/types';
import { features } from '../../auth/mode';
import { useAuthConfig } from '../../auth/useAuthConfig';
import { useAuth } from '../../auth/AuthProvider';
import { ConfirmDialog } from '../../components/ConfirmDialog';
import { ErrorAlert } from '../../components/ErrorAlert';
import { Loading } from '../../components/Loading';
import { PageHeader } from '../../components/PageHeader';
import { NewPasswordFields, useNewPassword } from '../../components/NewPasswordFields';
import { useI18n } from '../../i18n/I18nProvider';
import { visuallyHidden } from '../../lib/a11y';

const wide = { display: { xs: 'none', md: 'table-cell' } } as const;
const notPhone = { display: { xs: 'none', sm: 'table-cell' } } as const;

export default function UsersPage() {
  const { t, dateTime } = useI18n();
  const config = useAuthConfig();
  const { user: me } = useAuth();
  const [page, setPage] = useState(0);
  const [perPage, setPerPage] = useState(25);
  const [data, setData] = useState<Page | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [busyId, setBusyId] = useState<string | null>(null);
  const [deleting, setDeleting] = useState<User | null>(null);
  const [creating, setCreating] = useState(false);

  const load = useCallback(async () => {
    try {
      setData(await api.get<Page>('/api/admin/users', { offset: page * perPage, limit: perPage }));
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [page, perPage]);

  useEffect(() => {
    void load();
  }, [load]);

  const statusChips = (u: User) => (
    <Stack direction="row" spacing={0.5} useFlexGap sx={{ flexWrap: 'wrap' }}>
      {u.disabled ? (
        <Chip size="small" color="error" label={t('users.locked')} />
      ) : (
        <Chip size="small" color="success" variant="outlined" label={t('users.active')} />
      )}
      {!u.email_verified && <Chip size="small" color="warning" variant="outlined" label={t('users.unverified')} />}
      {u.mfa_enabled && <Chip size="small" variant="outlined" label={t('users.mfa')} />}
    </Stack>
  );

  const act = async (u: User, fn: () => Promise<unknown>, done: string) => {
    setBusyId(u.id);
    setError(null);
    setNotice(null);
    try {
      await fn();
      setNotice(done);
      await load();
    } catch (e) {
      setError(e);
    }
    setBusyId(null);
  };

  const setRole = (u: User, role: Role) =>
    act(u, () => api.put(`/api/admin/users/${u.id}`, { role } satisfies Schemas['UpdateUser']), t('users.updated'));
  const toggleLock = (u: User) =>
    act(u, () => api.post(`/api/admin/users/${u.id}/${u.disabled ? 'unlock' : 'lock'}`), t('users.updated'));
  const remove = async () => {
    if (!deleting) return;
    const u = deleting;
    setDeleting(null);
    await act(u, () => api.del(`/api/admin/users/${u.id}`), t('users.deleted'));
  };

  // In cognito mode roles follow the pool's groups and accounts are made in the pool.
  const cognito = config !== null && !features(config).localAccounts;

  return (
    <Box>
      <PageHeader title={t('users.title')}>
        <Tooltip title={t('common.refresh')}>
          <IconButton onClick={load} aria-label={t('common.refresh')}>
            <Refresh />
          </IconButton>
        </Tooltip>
        {config && !cognito && (
          <Button variant="contained" startIcon={<PersonAddAlt />} onClick={() => setCreating(true)}>
            {t('users.create')}
          </Button>
        )}
      </PageHeader>
      {cognito && (
        <Alert severity="info" sx={{ mb: 2 }} data-testid="users-cognito">
          {t('users.cognito')}
        </Alert>
      )}
      <ErrorAlert error={error} onRetry={data === null ? load : undefined} />
      {notice && <Alert severity="success" sx={{ mb: 2 }} onClose={() => setNotice(null)}>{notice}</Alert>}
      {data === null ? (
        !error && <Loading />
      ) : (
        <TableContainer component={Card} variant="outlined" sx={{ overflowX: 'auto' }}>
          <Table size="small" data-testid="users-table" sx={{ '& td, & th': { px: { xs: 1, sm: 2 } } }}>
            <TableHead>
              <TableRow>
                <TableCell>{t('common.email')}</TableCell>
                <TableCell>{t('users.role')}</TableCell>
                <TableCell sx={notPhone}>{t('users.status')}</TableCell>
                <TableCell sx={wide}>{t('users.lastLogin')}</TableCell>
                <TableCell align="right">
                  <Box component="span" sx={visuallyHidden}>
                    {t('common.actions')}
                  </Box>
                </TableCell>
              </TableRow>
            </TableHead>
            <TableBody>
              {data.users.map((u) => {
                const self = u.id === me?.id;
                const busy = busyId === u.id;
                return (
                  <TableRow key={u.id} data-testid="user-row" data-email={u.email}>
                    <TableCell sx={{ maxWidth: 280, minWidth: 120 }}>
                      <Typography variant="body2" sx={{ overflowWrap: 'anywhere' }}>
                        {u.email}
                        {self && <Chip size="small" label={t('users.you')} sx={{ ml: 1 }} />}
                      </Typography>
                      <Typography variant="caption" color="text.secondary">
                        {u.display_name}
                      </Typography>
                      {/* On phones the status goes under the address instead of its own column. */}
                      <Box sx={{ display: { xs: 'block', sm: 'none' }, mt: 0.5 }}>{statusChips(u)}</Box>
                    </TableCell>
                    <TableCell>
                      {self || cognito ? (
                        t(`role.${u.role}`)
                      ) : (
                        <TextField
                          select
                          size="small"
                          variant="standard"
                          value={u.role}
                          disabled={busy}
                          onChange={(e) => setRole(u, e.target.value as Role)}
                          slotProps={{
                            select: { renderValue: (v) => t(`role.${v as Role}`) },
                            htmlInput: { 'aria-label': `${t('users.role')}: ${u.email}` },
                          }}
                        >
                          {ROLES.map((r) => (
                            <MenuItem key={r} value={r}>
                              <RoleLabel role={r} />
                            </MenuItem>
                          ))}
                        </TextField>
                      )}
                    </TableCell>
                    <TableCell sx={notPhone}>{statusChips(u)}</TableCell>
                    <TableCell sx={wide}>{dateTime(u.last_login_at)}</TableCell>
                    <TableCell align="right" sx={{ whiteSpace: 'nowrap' }}>
                      {!self && (
                        <>
                          <Tooltip title={u.disabled ? t('users.unlock') : t('users.lock')}>
                            <span>
                              <IconButton
                                size="small"
                                disabled={busy}
                                onClick={() => toggleLock(u)}
                                aria-label={`${u.disabled ? t('users.unlock') : t('users.lock')}: ${u.email}`}
                              >
                                {u.disabled ? <LockOpenOutlined /> : <LockOutlined />}
                              </IconButton>
                            </span>
                          </Tooltip>
                          <Tooltip title={t('users.delete')}>
                            <span>
                              <IconButton
                                size="small"
                                color="error"
                                disabled={busy}
                                onClick={() => setDeleting(u)}
                                aria-label={`${t('users.delete')}: ${u.email}`}
                              >
                                <DeleteOutline />
                              </IconButton>
                            </span>
                          </Tooltip>
                        </>
                      )}
                    </TableCell>
                  </TableRow>
                );
              })}
            </TableBody>
          </Table>
          <TablePagination
            component="div"
            count={data.total}
            page={page}
            rowsPerPage={perPage}
            rowsPerPageOptions={[10, 25, 50, 100]}
            labelRowsPerPage={t('users.rowsPerPage')}
            onPageChange={(_, p) => setPage(p)}
            onRowsPerPageChange={(e) => {
              setPerPage(Number(e.target.value));
              setPage(0);
            }}
          />
        </TableContainer>
      )}
      <ConfirmDialog
        open={deleting !== null}
        title={t('users.deleteTitle')}
        body={t('users.deleteBody', { email: deleting?.email ?? '' })}
        confirmLabel={t('users.delete')}
        onConfirm={remove}
        onClose={() => setDeleting(null)}
      />
      {creating && (
        <CreateUserDialog
          onClose={() => setCreating(false)}
          onCreated={async () => {
            setCreating(false);
            setNotice(t('users.created'));
            await load();
          }}
        />
      )}
    </Box>
  );
}

/** A role's name, with "read-only" after the viewer's in lists. */
function RoleLabel({ role }: { role: Role }) {
  const { t } = useI18n();
  return (
    <>
      {t(`role.${role}`)}
      {role === 'viewer' && (
        <Typography component="span" variant="body2" color="text.secondary" sx={{ ml: 1 }}>
          ({t('role.viewer.hint')})
        </Typography>
      )}
    </>
  );
}

function CreateUserDialog({ onClose, onCreated }: { onClose: () => void; onCreated: () => void }) {
  const { t } = useI18n();
  const [email, setEmail] = useState('');
  const [displayName, setDisplayName] = useState('');
  const [role, setRole] = useState<Role>('user');
  const pw = useNewPassword(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body: Schemas['CreateUser'] = { email, password: pw.password, role };
      if (displayName.trim()) body.display_name = displayName.trim();
      await api.post('/api/admin/users', body);
      onCreated();
      return;
    } catch (err) {
      setError(err);
      pw.refused(err);
    }
    setBusy(false);
  };

  return (
    <Dialog open onClose={onClose} fullWidth maxWidth="xs" aria-labelledby="create-user-title">
      <Box component="form" onSubmit={submit} noValidate>
        <DialogTitle id="create-user-title">{t('users.createTitle')}</DialogTitle>
        <DialogContent>
          <Typography variant="body2" color="text.secondary">
            {t('users.createIntro')}
          </Typography>
          <TextField
            fullWidth
            margin="normal"
            type="email"
            name="email"
            label={t('common.email')}
            value={email}
            onChange={(e) => setEmail(e.target.value)}
            autoComplete="off"
            required
            autoFocus
          />
          <TextField
            fullWidth
            margin="normal"
            label={t('profile.displayName')}
            name="display_name"
            value={displayName}
            onChange={(e) => setDisplayName(e.target.value)}
            autoComplete="off"
          />
          <TextField select fullWidth margin="normal" label={t('users.role')} value={role} onChange={(e) => setRole(e.target.value as Role)}>
            {ROLES.map((r) => (
              <MenuItem key={r} value={r}>
                <RoleLabel role={r} />
              </MenuItem>
            ))}
          </TextField>
          <NewPasswordFields value={pw} withConfirm={false} />
          <ErrorAlert error={error} />
        </DialogContent>
        <DialogActions>
          <Button onClick={onClose}>{t('common.cancel')}</Button>
          <Button type="submit" variant="contained" disabled={busy || !email || !pw.ready}>
            {t('users.create')}
          </Button>
        </DialogActions>
      </Box>
    </Dialog>
  );
}
