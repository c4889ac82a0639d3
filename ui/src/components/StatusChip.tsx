import Chip from '@mui/material/Chip';
import CircularProgress from '@mui/material/CircularProgress';
import { isActive, statusColor, type Observed } from '../api/deploy';
import { useI18n } from '../i18n/I18nProvider';
import type { MessageKey } from '../i18n/messages';

export function StatusChip({ status }: { status: Observed }) {
  const { t } = useI18n();
  const busy = isActive(status) && status !== 'ready';
  return (
    <Chip
      size="small"
      color={statusColor(status)}
      variant={status === 'ready' ? 'filled' : 'outlined'}
      label={t(`status.${status}` as MessageKey)}
      icon={busy ? <CircularProgress size={12} color="inherit" /> : undefined}
      data-testid="instance-status"
      data-status={status}
    />
  );
}
