import { useEffect, useRef, useState, type FormEvent, type ReactNode } from 'react';
import { Link as RouterLink, useLocation, useNavigate, useParams } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogTitle from '@mui/material/DialogTitle';
import FormControlLabel from '@mui/material/FormControlLabel';
import Link from '@mui/material/Link';
import Step from '@mui/material/Step';
import StepLabel from '@mui/material/StepLabel';
import Stepper from '@mui/material/Stepper';
import Switch from '@mui/material/Switch';
import Tab from '@mui/material/Tab';
import Tabs from '@mui/material/Tabs';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api } from '../api/client';
import {
  LIFECYCLE,
  isActive,
  chatChunk,
  formatBytes,
  formatDuration,
  formatMs,
  formatUsd,
  minuteSeries,
  readLines,
  snippets,
  sseData,
  type InstanceDetail,
  type InstanceMetrics,
  type InstanceSettings,
  type LogLine,
  type UsageReport,
} from '../api/deploy';
import { useAuth } from '../auth/AuthProvider';
import { CopyButton } from '../components/CopyButton';
import { ErrorAlert } from '../components/ErrorAlert';
import { Loading } from '../components/Loading';
import { PageHeader } from '../components/PageHeader';
import { Bars, Sparkline } from '../components/Sparkline';
import { StatusChip } from '../components/StatusChip';
import { useI18n } from '../i18n/I18nProvider';
import type { MessageKey } from '../i18n/messages';
import { usePoll } from '../lib/usePoll';
import { computeLabel, InstanceButtons, useInstanceActions } from './DashboardPage';

interface Sample {
  cpu: number;
  memMiB: number;
  tokens: number;
}

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

      {tab === 0 && <Chat inst={inst} />}
      {tab === 1 && (
        <Card variant="outlined">
          <CardContent>
            <Timeline events={inst.timeline} testId="timeline" />
          </CardContent>
        </Card>
      )}
      {tab === 2 && <Logs id={inst.id} />}
      {tab === 3 && <Metrics inst={inst} samples={samples} />}
      {tab === 4 && <Connect inst={inst} />}

      {settingsOpen && <SettingsDialog inst={inst} onClose={() => setSettingsOpen(false)} onSaved={() => void reload()} />}
      {actions.dialog}
    </Box>
  );
}

function Timeline({ events, testId }: { events: InstanceDetail['timeline']; testId: string }) {
  const { dateTime } = useI18n();
  return (
    <Box component="ol" data-testid={testId} sx={{ listStyle: 'none', p: 0, m: 0 }}>
      {events.map((ev) => (
        <Box
          component="li"
          key={ev.id}
          data-testid="timeline-event"
          data-to={ev.to_state ?? ''}
          sx={{ display: 'flex', flexWrap: 'wrap', gap: 1, py: 0.75, borderBottom: 1, borderColor: 'divider' }}
        >
          <Typography variant="caption" color="text.secondary" sx={{ minWidth: 150 }}>
            {dateTime(ev.at)}
          </Typography>
          {ev.to_state && <StatusChip status={ev.to_state} />}
          <Typography variant="body2" sx={{ flex: '1 1 240px', wordBreak: 'break-word' }}>
            {ev.message}
          </Typography>
        </Box>
      ))}
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

// ---- chat playground ---------------------------------------------------------------

interface Msg {
  role: 'user' | 'assistant';
  content: string;
}

function Chat({ inst }: { inst: InstanceDetail }) {
  const { t } = useI18n();
  const [messages, setMessages] = useState<Msg[]>([]);
  const [input, setInput] = useState('');
  const [error, setError] = useState<unknown>(null);
  const ctrl = useRef<AbortController | null>(null);
  const [streaming, setStreaming] = useState(false);
  const end = useRef<HTMLDivElement>(null);

  useEffect(() => {
    return () => ctrl.current?.abort();
  }, []);
  useEffect(() => {
    const el = end.current?.parentElement;
    if (el) el.scrollTop = el.scrollHeight;
  }, [messages]);

  const send = async (e: FormEvent) => {
    e.preventDefault();
    const text = input.trim();
    if (!text || streaming) return;
    const history: Msg[] = [...messages, { role: 'user', content: text }];
    setMessages([...history, { role: 'assistant', content: '' }]);
    setInput('');
    setError(null);
    setStreaming(true);
    const c = new AbortController();
    ctrl.current = c;
    try {
      const res = await api.fetchAuth(`/i/${inst.id}/api/chat`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: inst.model_id, messages: history, stream: true }),
        signal: c.signal,
      });
      if (!res.body) throw new Error('no body');
      await readLines(res.body, (line) => {
        const { text: piece } = chatChunk(line);
        if (piece) {
          setMessages((m) => {
            const copy = m.slice();
            const last = copy[copy.length - 1];
            copy[copy.length - 1] = { ...last, content: last.content + piece };
            return copy;
          });
        }
      });
    } catch (err) {
      if (!(err instanceof DOMException && err.name === 'AbortError')) setError(err);
    }
    ctrl.current = null;
    setStreaming(false);
  };

  return (
    <Card variant="outlined">
      <CardContent>
        {inst.status !== 'ready' && (
          <Alert severity="info" sx={{ mb: 2 }}>
            {inst.status === 'sleeping' && inst.settings.wake_on_request
              ? t('chat.sleeping')
              : inst.status === 'stopped' || inst.status === 'failed'
                ? t('chat.stopped')
                : t('chat.notReady')}
          </Alert>
        )}
        <Box data-testid="chat-log" sx={{ display: 'grid', gap: 1, mb: 2, maxHeight: 420, overflowY: 'auto' }}>
          {messages.length === 0 && (
            <Typography variant="body2" color="text.secondary">
              {t('chat.empty')}
            </Typography>
          )}
          {messages.map((m, i) => (
            <Box
              key={i}
              data-testid={m.role === 'assistant' ? 'chat-assistant' : 'chat-user'}
              sx={{
                justifySelf: m.role === 'user' ? 'end' : 'start',
                maxWidth: '90%',
                px: 1.5,
                py: 1,
                borderRadius: 2,
                bgcolor: m.role === 'user' ? 'primary.main' : 'action.hover',
                color: m.role === 'user' ? 'primary.contrastText' : 'text.primary',
                whiteSpace: 'pre-wrap',
                wordBreak: 'break-word',
                fontSize: 14,
              }}
            >
              {m.content || (streaming && i === messages.length - 1 ? '…' : '')}
            </Box>
          ))}
          <div ref={end} />
        </Box>
        <ErrorAlert error={error} />
        <Box component="form" onSubmit={send} data-testid="chat-form" sx={{ display: 'flex', gap: 1, alignItems: 'flex-start' }}>
          <TextField
            value={input}
            onChange={(e) => setInput(e.target.value)}
            placeholder={t('chat.placeholder')}
            name="prompt"
            size="small"
            fullWidth
            multiline
            maxRows={6}
            onKeyDown={(e) => {
              if (e.key === 'Enter' && !e.shiftKey) {
                e.preventDefault();
                (e.currentTarget.closest('form') as HTMLFormElement | null)?.requestSubmit();
              }
            }}
          />
          {streaming ? (
            <Button variant="outlined" color="error" onClick={() => ctrl.current?.abort()} data-testid="chat-stop">
              {t('chat.stop')}
            </Button>
          ) : (
            <Button type="submit" variant="contained" disabled={!input.trim()} data-testid="chat-send">
              {t('chat.send')}
            </Button>
          )}
        </Box>
      </CardContent>
    </Card>
  );
}

// ---- logs --------------------------------------------------------------------------

function Logs({ id }: { id: string }) {
  const { t } = useI18n();
  const [lines, setLines] = useState<LogLine[]>([]);
  const [follow, setFollow] = useState(true);
  const [error, setError] = useState<unknown>(null);
  const box = useRef<HTMLDivElement>(null);

  useEffect(() => {
    const c = new AbortController();
    setError(null);
    const push = (l: LogLine[]) => setLines((old) => [...old, ...l].slice(-1000));
    (async () => {
      try {
        if (follow) {
          setLines([]);
          const res = await api.fetchAuth(`/api/instances/${id}/logs?tail=200&follow=true`, {
            headers: { Accept: 'text/event-stream' },
            signal: c.signal,
          });
          if (!res.body) return;
          await readLines(res.body, (line) => {
            const d = sseData<LogLine>(line);
            if (d) push([d]);
          });
        } else {
          const r = await api.get<{ lines: LogLine[] }>(`/api/instances/${id}/logs`, { tail: 200 }, c.signal);
          setLines(r.lines);
        }
      } catch (e) {
        if (!(e instanceof DOMException && e.name === 'AbortError')) setError(e);
      }
    })();
    return () => c.abort();
  }, [id, follow]);

  useEffect(() => {
    if (follow && box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [lines, follow]);

  return (
    <Card variant="outlined">
      <CardContent>
        <FormControlLabel control={<Switch checked={follow} onChange={(e) => setFollow(e.target.checked)} data-testid="logs-follow" />} label={t('logs.follow')} />
        <ErrorAlert error={error} />
        <Box
          ref={box}
          data-testid="logs"
          sx={{
            mt: 1,
            bgcolor: '#111',
            color: '#ddd',
            fontFamily: 'monospace',
            fontSize: 12,
            p: 1,
            borderRadius: 1,
            height: 400,
            overflow: 'auto',
            whiteSpace: 'pre-wrap',
            wordBreak: 'break-all',
          }}
        >
          {lines.length === 0 ? t('logs.empty') : lines.map((l, i) => <div key={i} data-testid="log-line">{l.line}</div>)}
        </Box>
      </CardContent>
    </Card>
  );
}

// ---- charts ------------------------------------------------------------------------

function Metrics({ inst, samples }: { inst: InstanceDetail; samples: Sample[] }) {
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

// ---- how to connect ------------------------------------------------------------------

function Connect({ inst }: { inst: InstanceDetail }) {
  const { t } = useI18n();
  const s = snippets(inst.endpoint, inst.model_id);
  const blocks: [string, string][] = [
    ['curl', s.curl],
    [t('connect.openai'), s.openai],
    [t('connect.ollama'), s.ollama],
  ];
  return (
    <Card variant="outlined">
      <CardContent sx={{ display: 'grid', gap: 2 }}>
        <Alert severity="info">
          {t('connect.keyNote')}{' '}
          <Link component={RouterLink} to="/keys" data-testid="connect-keys-link">
            {t('connect.keysLink')}
          </Link>
        </Alert>
        {blocks.map(([title, code]) => (
          <Box key={title} sx={{ minWidth: 0 }}>
            <Box sx={{ display: 'flex', justifyContent: 'space-between', alignItems: 'center', mb: 0.5 }}>
              <Typography variant="subtitle2">{title}</Typography>
              <CopyButton text={code} />
            </Box>
            <Box component="pre" data-testid="snippet" sx={{ m: 0, p: 1.5, bgcolor: 'action.hover', borderRadius: 1, overflowX: 'auto', fontSize: 12 }}>
              {code}
            </Box>
          </Box>
        ))}
      </CardContent>
    </Card>
  );
}

// ---- settings ----------------------------------------------------------------------

function SettingsDialog({ inst, onClose, onSaved }: { inst: InstanceDetail; onClose: () => void; onSaved: () => void }) {
  const { t } = useI18n();
  const [s, setS] = useState<InstanceSettings>(inst.settings);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const save = async () => {
    setBusy(true);
    try {
      await api.put(`/api/instances/${inst.id}/settings`, s);
      onSaved();
      onClose();
    } catch (e) {
      setError(e);
    }
    setBusy(false);
  };
  return (
    <Dialog open onClose={onClose} fullWidth maxWidth="xs">
      <DialogTitle>{t('inst.settings')}</DialogTitle>
      <DialogContent sx={{ display: 'grid', gap: 2, pt: '8px !important' }}>
        <TextField
          type="number"
          label={t('settings.idleSeconds')}
          name="idle_timeout_seconds"
          value={s.idle_timeout_seconds}
          size="small"
          onChange={(e) => setS({ ...s, idle_timeout_seconds: Math.max(0, Number(e.target.value)) })}
        />
        <TextField type="number" label={t('deploy.minReplicas')} value={s.min_replicas} size="small" onChange={(e) => setS({ ...s, min_replicas: Math.max(0, Number(e.target.value)) })} />
        <TextField type="number" label={t('deploy.maxReplicas')} value={s.max_replicas} size="small" onChange={(e) => setS({ ...s, max_replicas: Math.max(1, Number(e.target.value)) })} />
        <FormControlLabel control={<Switch checked={s.wake_on_request} onChange={(e) => setS({ ...s, wake_on_request: e.target.checked })} />} label={t('deploy.wake')} />
        <ErrorAlert error={error} />
      </DialogContent>
      <DialogActions>
        <Button onClick={onClose}>{t('common.cancel')}</Button>
        <Button variant="contained" onClick={() => void save()} disabled={busy} data-testid="settings-save">
          {t('common.save')}
        </Button>
      </DialogActions>
    </Dialog>
  );
}

