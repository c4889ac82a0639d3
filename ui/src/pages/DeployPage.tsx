import { useEffect, useMemo, useState, type FormEvent } from 'react';
import { useNavigate } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Chip from '@mui/material/Chip';
import FormControlLabel from '@mui/material/FormControlLabel';
import MenuItem from '@mui/material/MenuItem';
import Switch from '@mui/material/Switch';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api } from '../api/client';
import {
  fits,
  formatBytes,
  formatMiB,
  smallestFit,
  type CatalogModel,
  type ComputeOffer,
  type ComputeType,
  type Instance,
  type StartRequest,
} from '../api/deploy';
import { ErrorAlert } from '../components/ErrorAlert';
import { Loading } from '../components/Loading';
import { PageHeader } from '../components/PageHeader';
import { useI18n } from '../i18n/I18nProvider';
import type { MessageKey } from '../i18n/messages';

const IDLE_CHOICES = [0, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600] as const;

export default function DeployPage() {
  const { t } = useI18n();
  const navigate = useNavigate();
  const [models, setModels] = useState<CatalogModel[] | null>(null);
  const [offers, setOffers] = useState<ComputeOffer[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [modelId, setModelId] = useState('');
  const [kind, setKind] = useState<ComputeType | ''>('');
  const [cpu, setCpu] = useState<number | ''>('');
  const [memory, setMemory] = useState<number | ''>('');
  const [instanceType, setInstanceType] = useState('');
  const [spot, setSpot] = useState(false);
  const [idle, setIdle] = useState<number>(1800);
  const [minR, setMinR] = useState(1);
  const [maxR, setMaxR] = useState(1);
  const [wake, setWake] = useState(true);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    Promise.all([api.get<CatalogModel[]>('/api/models'), api.get<ComputeOffer[]>('/api/compute')])
      .then(([m, c]) => {
        setModels(m);
        setOffers(c);
        const first = m.find((x) => x.present) ?? m[0];
        if (first) setModelId(first.id);
        if (c[0]) setKind(c[0].compute_type);
      })
      .catch(setError);
  }, []);

  const model = models?.find((m) => m.id === modelId);
  const offer = offers?.find((o) => o.compute_type === kind);
  const gpuType = offer?.gpu_instance_types.find((g) => g.name === instanceType);
  const chosenMemory = kind === 'gpu' ? gpuType?.memory : memory === '' ? undefined : memory;
  const ok = fits(model, chosenMemory);
  const supported = !model || (kind === 'gpu' ? model.gpu_supported : model.cpu_supported);

  // Choosing a model or compute type picks the smallest size that fits.
  useEffect(() => {
    if (!offer || !model) return;
    if (offer.compute_type === 'gpu') {
      const g = [...offer.gpu_instance_types].sort((a, b) => a.hourly_usd - b.hourly_usd).find((x) => x.memory >= model.memory_required);
      setInstanceType((g ?? offer.gpu_instance_types[0])?.name ?? '');
    } else {
      const s = smallestFit(offer, model.memory_required) ?? (offer.sizes[0] ? { cpu: offer.sizes[0].cpu, memory: offer.sizes[0].memory[0] } : null);
      if (s) {
        setCpu(s.cpu);
        setMemory(s.memory);
      }
    }
    if (!offer.spot) setSpot(false);
  }, [offer, model]);

  const memChoices = useMemo(() => offer?.sizes.find((s) => s.cpu === cpu)?.memory ?? [], [offer, cpu]);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!model || !offer) return;
    setBusy(true);
    setError(null);
    const body: StartRequest = {
      model_id: model.id,
      compute_type: offer.compute_type,
      idle_timeout_seconds: idle,
      min_replicas: minR,
      max_replicas: Math.max(minR, maxR),
      wake_on_request: wake,
    };
    if (offer.compute_type === 'gpu') {
      body.instance_type = instanceType;
      body.gpu_count = gpuType?.gpus ?? 1;
    } else {
      body.cpu = cpu === '' ? undefined : cpu;
      body.memory = memory === '' ? undefined : memory;
    }
    if (offer.spot) body.spot = spot;
    try {
      const inst = await api.post<Instance>('/api/models/start', body);
      navigate(`/instances/${inst.id}`, { state: { deployed: true } });
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };

  if (!models || !offers) {
    return (
      <Box sx={{ maxWidth: 900 }}>
        <PageHeader title={t('deploy.title')} />
        {error ? <ErrorAlert error={error} /> : <Loading />}
      </Box>
    );
  }

  return (
    <Box sx={{ maxWidth: 900 }}>
      <PageHeader title={t('deploy.title')} />
      <Box component="form" onSubmit={submit} data-testid="deploy-form" sx={{ display: 'grid', gap: 2 }}>
        <Card variant="outlined">
          <CardContent sx={{ display: 'grid', gap: 2 }}>
            <Typography variant="subtitle1" component="h2" sx={{ fontWeight: 600 }}>
              {t('deploy.model')}
            </Typography>
            <TextField
              select
              label={t('deploy.model')}
              value={modelId}
              onChange={(e) => setModelId(e.target.value)}
              size="small"
              name="model"
              slotProps={{ select: { SelectDisplayProps: { 'data-testid': 'deploy-model' } as object } }}
            >
              {models.map((m) => (
                <MenuItem key={m.id} value={m.id} data-testid={`model-option-${m.id}`}>
                  <Box sx={{ display: 'flex', flexWrap: 'wrap', gap: 1, alignItems: 'center' }}>
                    <span>{m.id}</span>
                    <Typography variant="caption" color="text.secondary">
                      {m.family} {m.size} · {formatMiB(m.memory_required)}
                    </Typography>
                    {m.present && <Chip size="small" color="success" variant="outlined" label={t('models.present')} />}
                  </Box>
                </MenuItem>
              ))}
            </TextField>
            {model && (
              <Box sx={{ display: 'flex', flexWrap: 'wrap', gap: 1 }} data-testid="model-facts">
                <Chip size="small" label={`${t('models.size')}: ${model.size}`} />
                <Chip size="small" label={`${t('models.memory')}: ${formatMiB(model.memory_required)}`} />
                {model.weights_bytes !== null && <Chip size="small" label={`${t('models.weights')}: ${formatBytes(model.weights_bytes)}`} />}
                <Chip size="small" color={model.cpu_supported ? 'success' : 'default'} variant="outlined" label={`CPU ${model.cpu_supported ? '✓' : '✗'}`} />
                <Chip size="small" color={model.gpu_supported ? 'success' : 'default'} variant="outlined" label={`GPU ${model.gpu_supported ? '✓' : '✗'}`} />
                <Chip
                  size="small"
                  color={model.present ? 'success' : 'warning'}
                  label={model.present ? t('models.present') : t('models.willDownload')}
                  data-testid="model-present"
                />
                <Chip size="small" variant="outlined" label={t('deploy.expected', { s: model.expected_deploy_seconds })} />
              </Box>
            )}
          </CardContent>
        </Card>

        <Card variant="outlined">
          <CardContent sx={{ display: 'grid', gap: 2 }}>
            <Typography variant="subtitle1" component="h2" sx={{ fontWeight: 600 }}>
              {t('deploy.compute')}
            </Typography>
            <TextField select label={t('deploy.computeType')} value={kind} onChange={(e) => setKind(e.target.value as ComputeType)} size="small" name="compute_type">
              {offers.map((o) => (
                <MenuItem key={o.compute_type} value={o.compute_type}>
                  {t(`compute.${o.compute_type}` as MessageKey)}
                </MenuItem>
              ))}
            </TextField>
            {offer && offer.compute_type !== 'gpu' && (
              <Box sx={{ display: 'grid', gridTemplateColumns: { xs: '1fr', sm: '1fr 1fr' }, gap: 2 }}>
                <TextField
                  select
                  label="vCPU"
                  value={cpu}
                  size="small"
                  name="cpu"
                  onChange={(e) => {
                    const c = Number(e.target.value);
                    setCpu(c);
                    const mem = offer.sizes.find((s) => s.cpu === c)?.memory ?? [];
                    if (memory === '' || !mem.includes(memory)) setMemory(mem.find((m) => m >= (model?.memory_required ?? 0)) ?? mem[0] ?? '');
                  }}
                >
                  {offer.sizes.map((s) => (
                    <MenuItem key={s.cpu} value={s.cpu}>
                      {s.cpu} vCPU
                    </MenuItem>
                  ))}
                </TextField>
                <TextField select label={t('deploy.memory')} value={memory} size="small" name="memory" onChange={(e) => setMemory(Number(e.target.value))}>
                  {memChoices.map((m) => (
                    <MenuItem key={m} value={m}>
                      {formatMiB(m)}
                      {model && m < model.memory_required ? ` — ${t('deploy.tooSmall')}` : ''}
                    </MenuItem>
                  ))}
                </TextField>
              </Box>
            )}
            {offer && offer.compute_type === 'gpu' && (
              <TextField select label={t('deploy.instanceType')} value={instanceType} size="small" name="instance_type" onChange={(e) => setInstanceType(e.target.value)}>
                {offer.gpu_instance_types.map((g) => (
                  <MenuItem key={g.name} value={g.name}>
                    {g.name} — {g.gpus}× {g.gpu_model}, {g.cpu} vCPU, {formatMiB(g.memory)}, ${g.hourly_usd.toFixed(3)}/h
                  </MenuItem>
                ))}
              </TextField>
            )}
            {offer?.spot && <FormControlLabel control={<Switch checked={spot} onChange={(e) => setSpot(e.target.checked)} name="spot" />} label={t('deploy.spot')} />}
            {model && chosenMemory !== undefined && (
              <Alert severity={ok && supported ? 'success' : 'error'} data-testid="deploy-fit" data-fits={ok && supported ? 'true' : 'false'}>
                {!supported
                  ? t('deploy.unsupported', { kind: t(`compute.${kind || 'local'}` as MessageKey) })
                  : ok
                    ? t('deploy.fits', { have: formatMiB(chosenMemory), need: formatMiB(model.memory_required) })
                    : t('deploy.noFit', { have: formatMiB(chosenMemory), need: formatMiB(model.memory_required) })}
              </Alert>
            )}
          </CardContent>
        </Card>

        <Card variant="outlined">
          <CardContent sx={{ display: 'grid', gap: 2 }}>
            <Typography variant="subtitle1" component="h2" sx={{ fontWeight: 600 }}>
              {t('deploy.scaling')}
            </Typography>
            <TextField select label={t('deploy.idle')} value={idle} size="small" name="idle" onChange={(e) => setIdle(Number(e.target.value))} helperText={t('deploy.idleHelp')}>
              {IDLE_CHOICES.map((s) => (
                <MenuItem key={s} value={s}>
                  {s === 0 ? t('deploy.idleNever') : s < 3600 ? t('deploy.minutes', { n: s / 60 }) : t('deploy.hours', { n: s / 3600 })}
                </MenuItem>
              ))}
            </TextField>
            <Box sx={{ display: 'grid', gridTemplateColumns: '1fr 1fr', gap: 2 }}>
              <TextField
                type="number"
                label={t('deploy.minReplicas')}
                value={minR}
                size="small"
                name="min_replicas"
                slotProps={{ htmlInput: { min: 0, max: 8 } }}
                onChange={(e) => {
                  const v = Math.max(0, Math.min(8, Number(e.target.value)));
                  setMinR(v);
                  if (maxR < v) setMaxR(Math.max(1, v));
                }}
              />
              <TextField
                type="number"
                label={t('deploy.maxReplicas')}
                value={maxR}
                size="small"
                name="max_replicas"
                slotProps={{ htmlInput: { min: 1, max: 8 } }}
                onChange={(e) => setMaxR(Math.max(1, Math.min(8, Number(e.target.value))))}
              />
            </Box>
            <FormControlLabel control={<Switch checked={wake} onChange={(e) => setWake(e.target.checked)} name="wake_on_request" />} label={t('deploy.wake')} />
          </CardContent>
        </Card>

        <ErrorAlert error={error} />
        <Box>
          <Button type="submit" variant="contained" size="large" disabled={busy || !model || !offer || !ok || !supported} data-testid="deploy-submit">
            {busy ? t('deploy.deploying') : t('deploy.submit')}
          </Button>
        </Box>
      </Box>
    </Box>
  );
}
