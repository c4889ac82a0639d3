import { useEffect, useState, type ReactNode } from 'react';
import { useLocation, useNavigate, useParams } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Step from '@mui/material/Step';
import StepLabel from '@mui/material/StepLabel';
import Stepper from '@mui/material/Stepper';
import Tab from '@mui/material/Tab';
import Tabs from '@mui/material/Tabs';
import Typography from '@mui/material/Typography';
import { api } from '../api/client';
import { LIFECYCLE, isActive, formatDuration, formatUsd, type InstanceDetail } from '../api/deploy';
import { useAuth } from '../auth/AuthProvider';
import { CopyButton } from '../components/CopyButton';
import { ErrorAlert } from '../components/ErrorAlert';
import { Loading } from '../components/Loading';
import { PageHeader } from '../components/PageHeader';
import { StatusChip } from '../components/StatusChip';
import { useI18n } from '../i18n/I18nProvider';
import type { MessageKey } from '../i18n/messages';
import { usePoll } from '../lib/usePoll';
import { computeLabel, InstanceButtons, useInstanceActions } from './DashboardPage';
import { ChatPanel } from './instance/ChatPanel';
import { ConnectPanel } from './instance/ConnectPanel';
import { LogsPanel } from './instance/LogsPanel';
import { MetricsPanel, type Sample } from './instance/MetricsPanel';
import { SettingsDialog } from './instance/SettingsDialog';
import { Timeline, TimelinePanel } from './instance/Timeline';

export default function InstancePage() {
  const { id = '' } = useParams();
  const { t, lang } = useI18n();
  const { user } = useAuth();
  const navigate = useNavigate();
  const location = useLocation();
  // Arrived from the deploy form: the progress stays in view until ready (or failed).
  const deployed = (location.state as { deployed?: boolean } | null)?.deployed === true;
  const canManage = user?.role === 'admin' || user?.role === 'user';
  const { data: inst, error, reload } = usePoll((signal) => api.get<InstanceDetail>(`/api/instances/${id}`, undefined, signal));
  const actions = useInstanceActions(() => void reload());
  const [samples, setSamples] = useState<Sample[]>([]);
  const [tab, setTab] = useState(0);
  const [settingsOpen, setSettingsOpen] = useState(false);

  // Replica CPU and memory, sampled from the instance view as it is polled.
  useEffect(() => {
    if (!inst) return;
    const cpu = inst.replicas.reduce((a, r) => a + (r.cpu_percent ?? 0), 0);
    const mem = inst.replicas.reduce((a, r) => a + (r.memory_bytes ?? 0), 0) / 1024 / 1024;
    setSamples((s) => [...s.slice(-89), { cpu, memMiB: mem, tokens: inst.usage.total_tokens }]);
  }, [inst]);

  // After a delete the instance is gone: back to the dashboard.
  useEffect(() => {
    if (inst?.desired === 'deleted' && inst.status === 'stopped') navigate('/dashboard');
  }, [inst, navigate]);

  if (!inst) {
    return (
      <Box>
        <PageHeader title={t('inst.title')} />
        {error ? <ErrorAlert error={error} onRetry={() => void reload()} /> : <Loading />}
      </Box>
    );
  }

  const stepIndex = inst.status === 'ready' ? LIFECYCLE.length : LIFECYCLE.indexOf(inst.status);
  const failed = inst.status === 'failed';

  return (
    <Box sx={{ maxWidth: 1200, minWidth: 0 }} data-testid="instance-page" data-status={inst.status}>
      <PageHeader title={inst.model_id}>
        <StatusChip status={inst.status} />
        {canManage && (
          <>
            <InstanceButtons inst={inst} actions={actions} />
            <Button size="small" variant="outlined" onClick={() => setSettingsOpen(true)} data-testid="instance-settings">
              {t('inst.settings')}
            </Button>
          </>
        )}
      </PageHeader>
      <ErrorAlert error={actions.error ?? error} />
      {failed && (
        <Alert severity="error" sx={{ mb: 2 }} data-testid="instance-failed">
          {t('inst.failed', { reason: inst.status_reason ?? '' })}
        </Alert>
      )}

      <Card variant="outlined" sx={{ mb: 2 }}>
        <CardContent>
          {(stepIndex >= 0 || failed) && (
            <Stepper activeStep={failed ? LIFECYCLE.indexOf('ready') : stepIndex} alternativeLabel sx={{ mb: 2, overflowX: 'auto' }}>
              {LIFECYCLE.map((s) => (
                <Step key={s}>
                  <StepLabel error={failed && s === 'ready'}>{t(`status.${s}` as MessageKey)}</StepLabel>
                </Step>
              ))}
            </Stepper>
          )}
          {(deployed || (isActive(inst.status) && inst.status !== 'ready')) && inst.timeline.length > 0 && (
            <Box sx={{ mb: 2 }} data-testid="deploy-progress">
              <Typography variant="subtitle2" sx={{ mb: 0.5 }}>
                {inst.status === 'ready'
                  ? t('inst.deployedIn', { s: deploySeconds(inst) })
                  : t('inst.deploying', { s: Math.round((Date.now() - Date.parse(inst.created_at)) / 1000) })}
              </Typography>
              <Timeline events={inst.timeline.slice(-6)} testId="progress-timeline" />
            </Box>
          )}
          <Box sx={{ display: 'grid', gridTemplateColumns: { xs: '1fr', md: '1fr 1fr' }, gap: 1.5 }}>
            <Fact label={t('inst.endpoint')}>
              <Box sx={{ display: 'flex', flexWrap: 'wrap', gap: 1, alignItems: 'center' }}>
                <Box component="code" data-testid="instance-endpoint" sx={{ wordBreak: 'break-all', fontSize: 13 }}>
                  {inst.endpoint}
                </Box>
                <CopyButton text={inst.endpoint} />
              </Box>
            </Fact>
            <Fact label={t('inst.compute')}>{computeLabel(t, inst)}</Fact>
            {inst.owner_email && <Fact label={t('inst.owner')}>{inst.owner_email}</Fact>}
            <Fact label={t('inst.uptime')}>{inst.uptime_seconds > 0 ? formatDuration(inst.uptime_seconds, lang) : '—'}</Fact>
            <Fact label={t('inst.cost')}>
              {formatUsd(inst.cost.usd)}
              {inst.cost.hourly_usd !== null ? ` (${formatUsd(inst.cost.hourly_usd)}/h)` : ''}
            </Fact>
            <Fact label={t('inst.replicas')}>
              {inst.replicas.filter((r) => r.state === 'ready').length} / {inst.target_replicas} ({inst.settings.min_replicas}..{inst.settings.max_replicas})
            </Fact>
            <Fact label={t('inst.usage')}>{t('inst.usageText', { r: inst.usage.requests, tok: inst.usage.total_tokens })}</Fact>
            <Fact label={t('deploy.idle')} testId="fact-idle">
              {inst.settings.idle_timeout_seconds === 0 ? t('deploy.idleNever') : formatDuration(inst.settings.idle_timeout_seconds, lang)}
              {inst.settings.wake_on_request ? ` · ${t('deploy.wake')}` : ''}
            </Fact>
          </Box>
        </CardContent>
      </Card>

      <Tabs value={tab} onChange={(_, v: number) => setTab(v)} variant="scrollable" allowScrollButtonsMobile sx={{ mb: 2 }}>
        <Tab label={t('inst.tabChat')} data-testid="tab-chat" />
        <Tab label={t('inst.tabTimeline')} data-testid="tab-timeline" />
        <Tab label={t('inst.tabLogs')} data-testid="tab-logs" />
        <Tab label={t('inst.tabMetrics')} data-testid="tab-metrics" />
        <Tab label={t('inst.tabConnect')} data-testid="tab-connect" />
      </Tabs>

      {tab === 0 && <ChatPanel inst={inst} />}
      {tab === 1 && <TimelinePanel inst={inst} />}
      {tab === 2 && <LogsPanel id={inst.id} />}
      {tab === 3 && <MetricsPanel inst={inst} samples={samples} />}
      {tab === 4 && <ConnectPanel inst={inst} />}

      {settingsOpen && <SettingsDialog inst={inst} onClose={() => setSettingsOpen(false)} onSaved={() => void reload()} />}
      {actions.dialog}
    </Box>
  );
}

/** Seconds from the deploy to the first ready event. */
function deploySeconds(inst: InstanceDetail): string {
  const ready = inst.timeline.find((e) => e.to_state === 'ready');
  if (!ready) return '—';
  return ((Date.parse(ready.at) - Date.parse(inst.created_at)) / 1000).toFixed(1);
}

function Fact({ label, children, testId }: { label: string; children: ReactNode; testId?: string }) {
  return (
    <Box sx={{ minWidth: 0 }} data-testid={testId}>
      <Typography variant="caption" color="text.secondary" component="div">
        {label}
      </Typography>
      <Typography variant="body2" component="div" sx={{ wordBreak: 'break-word' }}>
        {children}
      </Typography>
    </Box>
  );
}
