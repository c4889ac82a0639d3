import { useState } from 'react';
import { Link as RouterLink } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import IconButton from '@mui/material/IconButton';
import Link from '@mui/material/Link';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableContainer from '@mui/material/TableContainer';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import Add from '@mui/icons-material/Add';
import DeleteOutline from '@mui/icons-material/DeleteOutline';
import PlayArrow from '@mui/icons-material/PlayArrow';
import Stop from '@mui/icons-material/Stop';
import { api } from '../api/client';
import { canStart, canStop, formatDuration, formatMiB, formatUsd, type Instance, type InstanceDetail, type UsageReport } from '../api/deploy';
import { useAuth } from '../auth/AuthProvider';
import { ConfirmDialog } from '../components/ConfirmDialog';
import { ErrorAlert } from '../components/ErrorAlert';
import { Loading } from '../components/Loading';
import { PageHeader } from '../components/PageHeader';
import { StatusChip } from '../components/StatusChip';
import { useI18n } from '../i18n/I18nProvider';
import type { MessageKey } from '../i18n/messages';
import { usePoll } from '../lib/usePoll';

const wide = { display: { xs: 'none', md: 'table-cell' } } as const;

export function computeLabel(t: (k: MessageKey) => string, i: Instance): string {
  const c = i.compute;
  const kind = t(`compute.${c.compute_type}` as MessageKey);
  if (c.compute_type === 'gpu') return `${kind} ${c.instance_type ?? ''} ×${c.gpu_count}${c.spot ? ' spot' : ''}`;
  return `${kind} · ${c.cpu} vCPU · ${formatMiB(c.memory)}${c.spot ? ' · spot' : ''}`;
}

/** Stop / start / delete for one instance, for users who may change it. */
export function useInstanceActions(onDone: () => void) {
  const { t } = useI18n();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [deleting, setDeleting] = useState<Instance | null>(null);
  const act = async (fn: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await fn();
    } catch (e) {
      setError(e);
    }
    setBusy(false);
    onDone();
  };
  const stop = (i: Instance) => act(() => api.del(`/api/models/${i.id}/stop`));
  const start = (i: Instance) => act(() => api.post(`/api/instances/${i.id}/start`));
  const dialog = (
    <ConfirmDialog
      open={deleting !== null}
      title={t('inst.deleteTitle')}
      body={t('inst.deleteBody', { model: deleting?.model_id ?? '' })}
      confirmLabel={t('inst.delete')}
      busy={busy}
      onClose={() => setDeleting(null)}
      onConfirm={() => {
        const d = deleting;
        setDeleting(null);
        if (d) void act(() => api.del(`/api/instances/${d.id}`));
      }}
    />
  );
  return { busy, error, stop, start, askDelete: setDeleting, dialog };
}

export function InstanceButtons({ inst, actions }: { inst: Instance; actions: ReturnType<typeof useInstanceActions> }) {
  const { t } = useI18n();
  return (
    <Box sx={{ display: 'flex', flexWrap: 'nowrap' }}>
      {canStop(inst) && (
        <Tooltip title={t('inst.stop')}>
          <IconButton size="small" aria-label={t('inst.stop')} data-testid="instance-stop" disabled={actions.busy} onClick={() => void actions.stop(inst)}>
            <Stop fontSize="small" />
          </IconButton>
        </Tooltip>
      )}
      {canStart(inst) && (
        <Tooltip title={t('inst.start')}>
          <IconButton size="small" aria-label={t('inst.start')} data-testid="instance-start" disabled={actions.busy} onClick={() => void actions.start(inst)}>
            <PlayArrow fontSize="small" />
          </IconButton>
        </Tooltip>
      )}
      <Tooltip title={t('inst.delete')}>
        <IconButton size="small" aria-label={t('inst.delete')} data-testid="instance-delete" disabled={actions.busy} onClick={() => actions.askDelete(inst)}>
          <DeleteOutline fontSize="small" />
        </IconButton>
      </Tooltip>
    </Box>
  );
}

export default function DashboardPage() {
  const { t, lang } = useI18n();
  const { user } = useAuth();
  const isAdmin = user?.role === 'admin';
  const canManage = user?.role === 'admin' || user?.role === 'user';
  const { data, error, reload } = usePoll((signal) => api.get<Instance[]>('/api/instances', undefined, signal));
  const actions = useInstanceActions(() => void reload());
  // Cost so far of every instance in one request (the API scopes it to the caller).
  const { data: usage, error: usageError } = usePoll((signal) => api.get<UsageReport>('/api/usage', { group_by: 'instance' }, signal), 10_000);
  const costs = new Map(usage?.groups.map((g) => [g.key, g.cost_usd]) ?? []);
  const list = data?.filter((i) => i.desired !== 'deleted') ?? null;

  return (
    <Box sx={{ maxWidth: 1200 }}>
      <PageHeader title={t('dash.title')}>
        {canManage && (
          <Button component={RouterLink} to="/deploy" variant="contained" startIcon={<Add />} data-testid="dash-deploy">
            {t('dash.deploy')}
          </Button>
        )}
      </PageHeader>
      <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }}>
        {isAdmin ? t('dash.introAdmin') : user?.role === 'viewer' ? t('dash.introViewer') : t('dash.intro')}
      </Typography>
      <ErrorAlert error={error ?? actions.error} />
      {list === null ? (
        !error && <Loading />
      ) : list.length === 0 ? (
        <Alert severity="info" data-testid="dash-empty">
          {canManage ? t('dash.emptyUser') : t('dash.empty')}
        </Alert>
      ) : (
        <Card variant="outlined">
          <CardContent sx={{ p: 0, '&:last-child': { pb: 0 } }}>
            <TableContainer>
              <Table size="small" data-testid="instances-table">
                <TableHead>
                  <TableRow>
                    <TableCell>{t('inst.model')}</TableCell>
                    <TableCell>{t('inst.status')}</TableCell>
                    <TableCell sx={wide}>{t('inst.compute')}</TableCell>
                    {isAdmin && <TableCell sx={wide}>{t('inst.owner')}</TableCell>}
                    <TableCell sx={wide}>{t('inst.endpoint')}</TableCell>
                    <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>{t('inst.uptime')}</TableCell>
                    <TableCell sx={wide}>{t('inst.cost')}</TableCell>
                    {canManage && <TableCell align="right">{t('common.actions')}</TableCell>}
                  </TableRow>
                </TableHead>
                <TableBody>
                  {list.map((i) => (
                    <TableRow key={i.id} data-testid="instance-row" data-id={i.id} data-status={i.status}>
                      <TableCell sx={{ wordBreak: 'break-word', minWidth: 110 }}>
                        <Link component={RouterLink} to={`/instances/${i.id}`} data-testid="instance-link">
                          {i.model_id}
                        </Link>
                        <Typography variant="caption" color="text.secondary" sx={{ display: { xs: 'block', md: 'none' } }}>
                          {computeLabel(t, i)}
                        </Typography>
                      </TableCell>
                      <TableCell>
                        <StatusChip status={i.status} />
                      </TableCell>
                      <TableCell sx={wide}>{computeLabel(t, i)}</TableCell>
                      {isAdmin && <TableCell sx={{ ...wide, wordBreak: 'break-all' }}>{i.owner_email ?? '—'}</TableCell>}
                      <TableCell sx={{ ...wide, fontFamily: 'monospace', fontSize: 12, wordBreak: 'break-all', maxWidth: 260 }}>{i.endpoint}</TableCell>
                      <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>{i.uptime_seconds > 0 ? formatDuration(i.uptime_seconds, lang) : '—'}</TableCell>
                      <TableCell sx={wide}>
                        {!usage && !usageError ? '—' : costs.has(i.id) ? formatUsd(costs.get(i.id)) : <InstanceCost id={i.id} status={i.status} />}
                      </TableCell>
                      {canManage && (
                        <TableCell align="right">
                          <InstanceButtons inst={i} actions={actions} />
                        </TableCell>
                      )}
                    </TableRow>
                  ))}
                </TableBody>
              </Table>
            </TableContainer>
          </CardContent>
        </Card>
      )}
      {actions.dialog}
    </Box>
  );
}

/** Instances the usage report leaves out (a viewer's view of others'): cost from the detail. */
function InstanceCost({ id, status }: { id: string; status: string }) {
  const { data } = usePoll(
    (signal) => api.get<Pick<InstanceDetail, 'cost'>>(`/api/instances/${id}`, undefined, signal),
    status === 'ready' ? 10_000 : 30_000,
  );
  return <>{data ? formatUsd(data.cost.usd) : '—'}</>;
}
