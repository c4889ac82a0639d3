import { useEffect, useState } from 'react';
import Box from '@mui/material/Box';
import Card from '@mui/material/Card';
import Tab from '@mui/material/Tab';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableContainer from '@mui/material/TableContainer';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import Tabs from '@mui/material/Tabs';
import Typography from '@mui/material/Typography';
import { api } from '../../api/client';
import { formatUsd, type UsageReport } from '../../api/deploy';
import { ErrorAlert } from '../../components/ErrorAlert';
import { Loading } from '../../components/Loading';
import { PageHeader } from '../../components/PageHeader';
import { useI18n } from '../../i18n/I18nProvider';
import { usePoll } from '../../lib/usePoll';

const GROUPS = ['user', 'model', 'instance'] as const;
const wide = { display: { xs: 'none', sm: 'table-cell' } } as const;

export default function UsagePage() {
  const { t } = useI18n();
  const [group, setGroup] = useState<(typeof GROUPS)[number]>('user');
  const { data, error, reload } = usePoll((signal) => api.get<UsageReport>('/api/usage', { group_by: group }, signal), 10_000);
  useEffect(() => {
    void reload();
  }, [group, reload]);
  const rows = data?.group_by === group ? data : null;
  return (
    <Box sx={{ maxWidth: 1100 }}>
      <PageHeader title={t('usage.title')} />
      <Tabs value={group} onChange={(_, v: (typeof GROUPS)[number]) => setGroup(v)} sx={{ mb: 2 }}>
        {GROUPS.map((g) => (
          <Tab key={g} value={g} label={t(`usage.by.${g}`)} data-testid={`usage-by-${g}`} />
        ))}
      </Tabs>
      <ErrorAlert error={error} />
      {!rows ? (
        !error && <Loading />
      ) : (
        <Card variant="outlined">
          <TableContainer>
            <Table size="small" data-testid="usage-table">
              <TableHead>
                <TableRow>
                  <TableCell>{t(`usage.by.${group}`)}</TableCell>
                  <TableCell align="right">{t('usage.requests')}</TableCell>
                  <TableCell align="right" sx={wide}>{t('usage.prompt')}</TableCell>
                  <TableCell align="right" sx={wide}>{t('usage.completion')}</TableCell>
                  <TableCell align="right">{t('usage.tokens')}</TableCell>
                  <TableCell align="right">{t('usage.cost')}</TableCell>
                </TableRow>
              </TableHead>
              <TableBody>
                {rows.groups.map((g) => (
                  <TableRow key={g.key} data-testid="usage-row">
                    <TableCell sx={{ wordBreak: 'break-all' }}>
                      {g.label ?? g.key}
                      {g.label && group !== 'user' && (
                        <Typography variant="caption" color="text.secondary" component="div">
                          {g.key}
                        </Typography>
                      )}
                    </TableCell>
                    <TableCell align="right">{g.requests}</TableCell>
                    <TableCell align="right" sx={wide}>{g.prompt_tokens}</TableCell>
                    <TableCell align="right" sx={wide}>{g.completion_tokens}</TableCell>
                    <TableCell align="right">{g.total_tokens}</TableCell>
                    <TableCell align="right">
                      {formatUsd(g.cost_usd)}
                      {g.cost_incomplete ? '*' : ''}
                    </TableCell>
                  </TableRow>
                ))}
                <TableRow>
                  <TableCell sx={{ fontWeight: 600 }}>{t('usage.total')}</TableCell>
                  <TableCell align="right" sx={{ fontWeight: 600 }}>{rows.total.requests}</TableCell>
                  <TableCell align="right" sx={wide}>{rows.total.prompt_tokens}</TableCell>
                  <TableCell align="right" sx={wide}>{rows.total.completion_tokens}</TableCell>
                  <TableCell align="right" sx={{ fontWeight: 600 }}>{rows.total.total_tokens}</TableCell>
                  <TableCell align="right" sx={{ fontWeight: 600 }}>{formatUsd(rows.total_cost_usd)}</TableCell>
                </TableRow>
              </TableBody>
            </Table>
          </TableContainer>
        </Card>
      )}
    </Box>
  );
}
