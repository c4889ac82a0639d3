import { Link as RouterLink } from 'react-router';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Link from '@mui/material/Link';
import Typography from '@mui/material/Typography';
import { snippets, type InstanceDetail } from '../../api/deploy';
import { CopyButton } from '../../components/CopyButton';
import { useI18n } from '../../i18n/I18nProvider';

/** How to call the instance: curl, the openai and the ollama Python clients. */
export function ConnectPanel({ inst }: { inst: InstanceDetail }) {
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
