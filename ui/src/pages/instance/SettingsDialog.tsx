import { useState } from 'react';
import Button from '@mui/material/Button';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogTitle from '@mui/material/DialogTitle';
import FormControlLabel from '@mui/material/FormControlLabel';
import Switch from '@mui/material/Switch';
import TextField from '@mui/material/TextField';
import { api } from '../../api/client';
import type { InstanceDetail, InstanceSettings } from '../../api/deploy';
import type { Schemas } from '../../api/types';
import { ErrorAlert } from '../../components/ErrorAlert';
import { useI18n } from '../../i18n/I18nProvider';

/** The instance's scaling and idle settings (`PUT /api/instances/{id}/settings`). */
export function SettingsDialog({ inst, onClose, onSaved }: { inst: InstanceDetail; onClose: () => void; onSaved: () => void }) {
  const { t } = useI18n();
  const [s, setS] = useState<InstanceSettings>(inst.settings);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const save = async () => {
    setBusy(true);
    try {
      await api.put(`/api/instances/${inst.id}/settings`, s satisfies Schemas['UpdateSettings']);
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
