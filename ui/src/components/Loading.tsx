import Box from '@mui/material/Box';
import CircularProgress from '@mui/material/CircularProgress';
import { useI18n } from '../i18n/I18nProvider';

export function Loading() {
  const { t } = useI18n();
  return (
    <Box sx={{ display: 'flex', justifyContent: 'center', py: 6 }} role="status" aria-label={t('common.loading')}>
      <CircularProgress size={32} />
    </Box>
  );
}
