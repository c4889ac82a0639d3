import Alert from '@mui/material/Alert';
import Button from '@mui/material/Button';
import { useI18n } from '../i18n/I18nProvider';

/** Shows an API error in the user's language; renders nothing without one. */
export function ErrorAlert({ error, onRetry }: { error: unknown; onRetry?: () => void }) {
  const { errText, t } = useI18n();
  if (!error) return null;
  return (
    <Alert
      severity="error"
      role="alert"
      sx={{ my: 2 }}
      action={
        onRetry ? (
          <Button color="inherit" size="small" onClick={onRetry}>
            {t('common.retry')}
          </Button>
        ) : undefined
      }
    >
      {errText(error)}
    </Alert>
  );
}
