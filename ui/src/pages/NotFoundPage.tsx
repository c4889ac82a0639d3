import { Link as RouterLink } from 'react-router';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Typography from '@mui/material/Typography';
import { useI18n } from '../i18n/I18nProvider';
import { HOME_PATH } from '../nav';

export function NotFoundPage() {
  const { t } = useI18n();
  return (
    <Box sx={{ textAlign: 'center', py: 8, px: 2 }}>
      <Typography variant="h4" component="h1" gutterBottom>
        404
      </Typography>
      <Typography color="text.secondary" sx={{ mb: 3 }}>
        {t('common.notFound')}
      </Typography>
      <Button component={RouterLink} to={HOME_PATH} variant="contained">
        {t('common.home')}
      </Button>
    </Box>
  );
}
