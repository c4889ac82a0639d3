import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Typography from '@mui/material/Typography';
import { api } from '../../api/client';
import { formatBytes, formatMs, minuteSeries, type InstanceDetail, type InstanceMetrics, type UsageReport } from '../../api/deploy';
import { Bars, Sparkline } from '../../components/Sparkline';
import { useI18n } from '../../i18n/I18nProvider';
import { usePoll } from '../../lib/usePoll';

/** One poll of the instance view: its replicas' CPU and memory and its token count. */
export interface Sample {
  cpu: number;
  memMiB: number;
  tokens: number;
}

/** Charts: replica resources sampled by the page, the gateway's per-minute statistics, hourly usage. */
export function MetricsPanel({ inst, samples }: { inst: InstanceDetail; samples: Sample[] }) {
  const { t } = useI18n();
  const HOURS = 12;
  // Requests and tokens per hour: one usage query per hour of the last 12, once a minute.
  const { data: hours } = usePoll(async (signal) => {
    const now = new Date();
    now.setUTCMinutes(0, 0, 0);
    const starts = Array.from({ length: HOURS }, (_, i) => new Date(now.getTime() - (HOURS - 1 - i) * 3600_000));
    return Promise.all(
      starts.map(async (s) => {
        const r = await api.get<UsageReport>(
          '/api/usage',
          { group_by: 'instance', since: s.toISOString(), until: new Date(s.getTime() + 3600_000).toISOString() },
          signal,
        );
        const g = r.groups.find((x) => x.key === inst.id);
        return { label: `${String(s.getHours()).padStart(2, '0')}:00`, requests: g?.requests ?? 0, tokens: g?.total_tokens ?? 0 };
      }),
    );
  }, 60_000);
  // The gateway's per-minute request statistics of the last hour.
  const { data: stats } = usePoll((signal) => api.get<InstanceMetrics>(`/api/instances/${inst.id}/metrics`, undefined, signal), 5000);
  const minutes = stats?.minutes ?? [];
  // Tokens per second between polls (2 s apart).
  const tps = samples.map((s, i) => (i === 0 ? 0 : Math.max(0, s.tokens - samples[i - 1].tokens) / 2));
  return (
    <Card variant="outlined">
      <CardContent sx={{ display: 'grid', gridTemplateColumns: { xs: '1fr', md: '1fr 1fr' }, gap: 3 }} data-testid="metrics">
        <Sparkline title={t('metrics.cpu')} values={samples.map((s) => s.cpu)} format={(v) => `${v.toFixed(1)} %`} testId="chart-cpu" />
        <Sparkline title={t('metrics.memory')} values={samples.map((s) => s.memMiB)} format={(v) => formatBytes(v * 1024 * 1024)} color="#9c27b0" testId="chart-memory" />
        <Sparkline title={t('metrics.tps')} values={tps} format={(v) => `${v.toFixed(1)} tok/s`} color="#ed6c02" testId="chart-tps" />
        <Sparkline title={t('metrics.latency')} values={minuteSeries(minutes, (m) => m.latency_p50_ms)} format={formatMs} color="#d32f2f" testId="chart-latency" />
        <Sparkline title={t('metrics.ttft')} values={minuteSeries(minutes, (m) => m.first_token_p50_ms)} format={formatMs} color="#0288d1" testId="chart-ttft" />
        <Bars
          title={t('metrics.requestsMinute')}
          data={minutes.map((m) => {
            const d = new Date(m.start);
            return { label: `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`, value: m.requests };
          })}
          testId="chart-requests-minute"
        />
        <Bars title={t('metrics.requestsHour')} data={(hours ?? []).map((h) => ({ label: h.label, value: h.requests }))} testId="chart-requests" />
        <Bars title={t('metrics.tokensHour')} data={(hours ?? []).map((h) => ({ label: h.label, value: h.tokens }))} testId="chart-tokens" />
        <Typography variant="caption" color="text.secondary">
          {t('metrics.note')}
        </Typography>
      </CardContent>
    </Card>
  );
}
