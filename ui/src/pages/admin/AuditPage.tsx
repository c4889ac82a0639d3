import { useCallback, useEffect, useState, type FormEvent } from 'react';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Chip from '@mui/material/Chip';
import MenuItem from '@mui/material/MenuItem';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableContainer from '@mui/material/TableContainer';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api } from '../../api/client';
import type { AuditEntry, AuditPage as Page, Outcome, UsersPage } from '../../api/types';
import { ErrorAlert } from '../../components/ErrorAlert';
import { Loading } from '../../components/Loading';
import { PageHeader } from '../../components/PageHeader';
import { useI18n } from '../../i18n/I18nProvider';

const PAGE = 100;
const wide = { display: { xs: 'none', md: 'table-cell' } } as const;

interface Filters {
  action: string;
  outcome: '' | Outcome;
  actor_id: string;
  /** `datetime-local` value, local time. */
  since: string;
}

const EMPTY: Filters = { action: '', outcome: '', actor_id: '', since: '' };

export default function AuditPage() {
  const { t, dateTime } = useI18n();
  const [draft, setDraft] = useState<Filters>(EMPTY);
  const [filters, setFilters] = useState<Filters>(EMPTY);
  const [entries, setEntries] = useState<AuditEntry[] | null>(null);
  const [more, setMore] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [actors, setActors] = useState<{ id: string; email: string }[]>([]);

  const query = useCallback(
    (beforeId?: number) => ({
      action: filters.action.trim() || undefined,
      outcome: filters.outcome || undefined,
      actor_id: filters.actor_id || undefined,
      since: filters.since ? new Date(filters.since).toISOString() : undefined,
      before_id: beforeId,
      limit: PAGE,
    }),
    [filters],
  );

  const load = useCallback(async () => {
    try {
      const page = await api.get<Page>('/api/admin/audit', query());
      setEntries(page.entries);
      setMore(page.entries.length === PAGE);
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [query]);

  const loadMore = async () => {
    if (!entries?.length) return;
    try {
      const page = await api.get<Page>('/api/admin/audit', query(entries[entries.length - 1].id));
      setEntries([...entries, ...page.entries]);
      setMore(page.entries.length === PAGE);
    } catch (e) {
      setError(e);
    }
  };

  useEffect(() => {
    void load();
  }, [load]);

  useEffect(() => {
    api
      .get<UsersPage>('/api/admin/users', { limit: 500 })
      .then((p) => setActors(p.users.map((u) => ({ id: u.id, email: u.email }))))
      .catch(() => setActors([]));
  }, []);

  const apply = (e: FormEvent) => {
    e.preventDefault();
    setFilters({ ...draft });
  };

  return (
    <Box>
      <PageHeader title={t('audit.title')} />
      <Card variant="outlined" sx={{ mb: 2 }}>
        <CardContent>
          <Box component="form" onSubmit={apply} data-testid="audit-filters" sx={{ display: 'flex', flexWrap: 'wrap', gap: 2 }}>
            <TextField
              size="small"
              label={t('audit.action')}
              helperText={t('audit.actionHelp')}
              name="action"
              value={draft.action}
              onChange={(e) => setDraft({ ...draft, action: e.target.value })}
              sx={{ flex: '1 1 160px' }}
            />
            <TextField
              select
              size="small"
              label={t('audit.outcome')}
              value={draft.outcome}
              onChange={(e) => setDraft({ ...draft, outcome: e.target.value as Filters['outcome'] })}
              sx={{ flex: '0 1 150px', minWidth: 130 }}
            >
              <MenuItem value="">{t('audit.any')}</MenuItem>
              <MenuItem value="success">{t('audit.success')}</MenuItem>
              <MenuItem value="failure">{t('audit.failure')}</MenuItem>
            </TextField>
            <TextField
              select
              size="small"
              label={t('audit.actor')}
              value={draft.actor_id}
              onChange={(e) => setDraft({ ...draft, actor_id: e.target.value })}
              sx={{ flex: '1 1 200px' }}
            >
              <MenuItem value="">{t('audit.anyone')}</MenuItem>
              {actors.map((a) => (
                <MenuItem key={a.id} value={a.id}>
                  {a.email}
                </MenuItem>
              ))}
            </TextField>
            <TextField
              size="small"
              type="datetime-local"
              label={t('audit.since')}
              value={draft.since}
              onChange={(e) => setDraft({ ...draft, since: e.target.value })}
              slotProps={{ inputLabel: { shrink: true } }}
              sx={{ flex: '0 1 220px' }}
            />
            <Box sx={{ display: 'flex', gap: 1, alignItems: 'flex-start' }}>
              <Button type="submit" variant="contained">
                {t('audit.apply')}
              </Button>
              <Button
                onClick={() => {
                  setDraft(EMPTY);
                  setFilters(EMPTY);
                }}
              >
                {t('audit.clear')}
              </Button>
            </Box>
          </Box>
        </CardContent>
      </Card>
      <ErrorAlert error={error} onRetry={load} />
      {entries === null ? (
        !error && <Loading />
      ) : entries.length === 0 ? (
        <Typography color="text.secondary">{t('audit.empty')}</Typography>
      ) : (
        <TableContainer component={Card} variant="outlined">
          <Table size="small" data-testid="audit-table">
            <TableHead>
              <TableRow>
                <TableCell>{t('audit.time')}</TableCell>
                <TableCell>{t('audit.actor')}</TableCell>
                <TableCell>{t('audit.action')}</TableCell>
                <TableCell>{t('audit.outcome')}</TableCell>
                <TableCell sx={wide}>{t('audit.target')}</TableCell>
                <TableCell sx={wide}>{t('audit.ip')}</TableCell>
                <TableCell sx={wide}>{t('audit.detail')}</TableCell>
              </TableRow>
            </TableHead>
            <TableBody>
              {entries.map((e) => (
                <TableRow key={e.id} data-testid="audit-row" data-action={e.action}>
                  <TableCell sx={{ whiteSpace: 'nowrap' }}>{dateTime(e.at)}</TableCell>
                  <TableCell sx={{ overflowWrap: 'anywhere' }}>{e.actor_email ?? t('common.none')}</TableCell>
                  <TableCell sx={{ fontFamily: 'monospace', fontSize: 13 }}>{e.action}</TableCell>
                  <TableCell>
                    <Chip
                      size="small"
                      variant="outlined"
                      color={e.outcome === 'success' ? 'success' : 'error'}
                      label={e.outcome === 'success' ? t('audit.success') : t('audit.failure')}
                    />
                  </TableCell>
                  <TableCell sx={{ ...wide, fontFamily: 'monospace', fontSize: 12, overflowWrap: 'anywhere' }}>{e.target ?? ''}</TableCell>
                  <TableCell sx={{ ...wide, fontFamily: 'monospace', fontSize: 12 }}>{e.ip ?? ''}</TableCell>
                  <TableCell sx={{ ...wide, fontSize: 12 }}>{e.detail ?? ''}</TableCell>
                </TableRow>
              ))}
            </TableBody>
          </Table>
        </TableContainer>
      )}
      {more && (
        <Box sx={{ display: 'flex', justifyContent: 'center', mt: 2 }}>
          <Button onClick={loadMore}>{t('common.loadMore')}</Button>
        </Box>
      )}
    </Box>
  );
}
