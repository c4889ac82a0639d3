import { useState, type FormEvent } from 'react';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Chip from '@mui/material/Chip';
import IconButton from '@mui/material/IconButton';
import LinearProgress from '@mui/material/LinearProgress';
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
import Download from '@mui/icons-material/Download';
import { api } from '../../api/client';
import { formatBytes, formatMiB, type CatalogModel, type ModelSource } from '../../api/deploy';
import type { Schemas } from '../../api/types';
import { ConfirmDialog } from '../../components/ConfirmDialog';
import { ErrorAlert } from '../../components/ErrorAlert';
import { Loading } from '../../components/Loading';
import { PageHeader } from '../../components/PageHeader';
import { useI18n } from '../../i18n/I18nProvider';
import { usePoll } from '../../lib/usePoll';

const wide = { display: { xs: 'none', md: 'table-cell' } } as const;

function sourceText(s: ModelSource): string {
  if (s.kind === 'ollama') return `ollama: ${s.name}`;
  if (s.kind === 'url') return `url: ${s.url}`;
  return `file: ${s.path}`;
}

export default function ModelsPage() {
  const { t } = useI18n();
  const { data: models, error, reload } = usePoll((signal) => api.get<CatalogModel[]>('/api/models', undefined, signal));
  const [actionError, setActionError] = useState<unknown>(null);
  const [deleting, setDeleting] = useState<CatalogModel | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [form, setForm] = useState({ id: '', memory: 1024, kind: 'ollama' as ModelSource['kind'], name: '', url: '', sha256: '', path: '' });
  const [busy, setBusy] = useState(false);

  const act = async (fn: () => Promise<unknown>, done?: string) => {
    setActionError(null);
    setNotice(null);
    setBusy(true);
    try {
      await fn();
      if (done) setNotice(done);
    } catch (e) {
      setActionError(e);
    }
    setBusy(false);
    void reload();
  };

  const add = (e: FormEvent) => {
    e.preventDefault();
    const source: ModelSource =
      form.kind === 'ollama'
        ? { kind: 'ollama', name: form.name.trim() }
        : form.kind === 'url'
          ? { kind: 'url', url: form.url.trim(), sha256: form.sha256.trim().toLowerCase() }
          : { kind: 'file', path: form.path.trim() };
    void act(async () => {
      await api.post('/api/models', { id: form.id.trim(), memory_required: form.memory, source } satisfies Schemas['CreateModel']);
      setForm({ ...form, id: '', name: '', url: '', sha256: '', path: '' });
    }, t('models.added'));
  };

  return (
    <Box sx={{ maxWidth: 1200 }}>
      <PageHeader title={t('models.title')} />
      <ErrorAlert error={error ?? actionError} />
      {notice && (
        <Typography color="success.main" sx={{ mb: 1 }} role="status">
          {notice}
        </Typography>
      )}
      <Card variant="outlined" sx={{ mb: 2 }}>
        <CardContent>
          <Typography variant="subtitle1" component="h2" sx={{ fontWeight: 600, mb: 1 }}>
            {t('models.add')}
          </Typography>
          <Box component="form" onSubmit={add} data-testid="model-add-form" sx={{ display: 'flex', flexWrap: 'wrap', gap: 2 }}>
            <TextField label={t('models.id')} name="id" size="small" required value={form.id} onChange={(e) => setForm({ ...form, id: e.target.value })} helperText="phi3:mini" sx={{ flex: '1 1 160px' }} />
            <TextField
              label={t('models.memoryMiB')}
              name="memory_required"
              type="number"
              size="small"
              required
              value={form.memory}
              onChange={(e) => setForm({ ...form, memory: Math.max(1, Number(e.target.value)) })}
              sx={{ flex: '1 1 120px' }}
            />
            <TextField select label={t('models.source')} size="small" value={form.kind} onChange={(e) => setForm({ ...form, kind: e.target.value as ModelSource['kind'] })} sx={{ flex: '1 1 120px' }}>
              <MenuItem value="ollama">Ollama</MenuItem>
              <MenuItem value="url">URL + sha256</MenuItem>
              <MenuItem value="file">{t('models.file')}</MenuItem>
            </TextField>
            {form.kind === 'ollama' && (
              <TextField label={t('models.ollamaName')} name="name" size="small" required value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} helperText="library/phi3:mini" sx={{ flex: '2 1 220px' }} />
            )}
            {form.kind === 'url' && (
              <>
                <TextField label="URL" name="url" size="small" required value={form.url} onChange={(e) => setForm({ ...form, url: e.target.value })} sx={{ flex: '2 1 220px' }} />
                <TextField
                  label="sha256"
                  name="sha256"
                  size="small"
                  required
                  value={form.sha256}
                  onChange={(e) => setForm({ ...form, sha256: e.target.value })}
                  slotProps={{ htmlInput: { pattern: '[0-9a-fA-F]{64}' } }}
                  sx={{ flex: '2 1 220px' }}
                />
              </>
            )}
            {form.kind === 'file' && (
              <TextField label={t('models.path')} name="path" size="small" required value={form.path} onChange={(e) => setForm({ ...form, path: e.target.value })} sx={{ flex: '2 1 220px' }} />
            )}
            <Button type="submit" variant="contained" disabled={busy}>
              {t('models.add')}
            </Button>
          </Box>
        </CardContent>
      </Card>
      {!models ? (
        !error && <Loading />
      ) : (
        <Card variant="outlined">
          <TableContainer>
            <Table size="small" data-testid="models-table">
              <TableHead>
                <TableRow>
                  <TableCell>{t('models.id')}</TableCell>
                  <TableCell>{t('models.memory')}</TableCell>
                  <TableCell sx={wide}>{t('models.source')}</TableCell>
                  <TableCell>{t('models.weights')}</TableCell>
                  <TableCell align="right">{t('common.actions')}</TableCell>
                </TableRow>
              </TableHead>
              <TableBody>
                {models.map((m) => {
                  const pulling = m.pull && m.pull.phase !== 'ready' && m.pull.phase !== 'failed';
                  return (
                    <TableRow key={m.id} data-testid="model-row" data-id={m.id}>
                      <TableCell sx={{ wordBreak: 'break-word' }}>
                        {m.id}
                        <Typography variant="caption" color="text.secondary" component="div">
                          {m.family} {m.size} · {m.cpu_supported ? 'CPU' : ''} {m.gpu_supported ? 'GPU' : ''}
                        </Typography>
                      </TableCell>
                      <TableCell>{formatMiB(m.memory_required)}</TableCell>
                      <TableCell sx={{ ...wide, wordBreak: 'break-all', fontSize: 12 }}>{sourceText(m.source)}</TableCell>
                      <TableCell sx={{ minWidth: 110 }}>
                        {m.present ? (
                          <Chip size="small" color="success" label={`${t('models.present')}${m.weights_bytes ? ` · ${formatBytes(m.weights_bytes)}` : ''}`} />
                        ) : pulling ? (
                          <Box data-testid="pull-progress">
                            <Typography variant="caption">
                              {m.pull?.phase} {m.pull?.percent !== null ? `${m.pull?.percent} %` : formatBytes(m.pull?.done_bytes)}
                            </Typography>
                            <LinearProgress variant={m.pull?.percent !== null ? 'determinate' : 'indeterminate'} value={m.pull?.percent ?? 0} />
                          </Box>
                        ) : m.pull?.phase === 'failed' ? (
                          <Chip size="small" color="error" label={m.pull.error ?? t('status.failed')} />
                        ) : (
                          <Chip size="small" variant="outlined" label={t('models.notPresent')} />
                        )}
                      </TableCell>
                      <TableCell align="right" sx={{ whiteSpace: 'nowrap' }}>
                        {!m.present && !pulling && (
                          <Tooltip title={t('models.pull')}>
                            <IconButton size="small" aria-label={`${t('models.pull')}: ${m.id}`} disabled={busy} onClick={() => void act(() => api.post(`/api/models/${encodeURIComponent(m.id)}/pull`))}>
                              <Download fontSize="small" />
                            </IconButton>
                          </Tooltip>
                        )}
                        {!m.builtin && (
                          <Tooltip title={t('models.delete')}>
                            <IconButton size="small" aria-label={`${t('models.delete')}: ${m.id}`} disabled={busy} onClick={() => setDeleting(m)}>
                              <DeleteOutline fontSize="small" />
                            </IconButton>
                          </Tooltip>
                        )}
                      </TableCell>
                    </TableRow>
                  );
                })}
              </TableBody>
            </Table>
          </TableContainer>
        </Card>
      )}
      <ConfirmDialog
        open={deleting !== null}
        title={t('models.delete')}
        body={t('models.deleteBody', { id: deleting?.id ?? '' })}
        confirmLabel={t('models.delete')}
        busy={busy}
        onClose={() => setDeleting(null)}
        onConfirm={() => {
          const d = deleting;
          setDeleting(null);
          if (d) void act(() => api.del(`/api/models/${encodeURIComponent(d.id)}`), t('models.deleted'));
        }}
      />
    </Box>
  );
}
