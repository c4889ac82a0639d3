import { Fragment, useCallback, useEffect, useState, type FormEvent } from 'react';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import IconButton from '@mui/material/IconButton';
import Link from '@mui/material/Link';
import Stack from '@mui/material/Stack';
import TextField from '@mui/material/TextField';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import Refresh from '@mui/icons-material/Refresh';
import { api } from '../../api/client';
import type { OutboxMessage, OutboxPage as Page } from '../../api/types';
import { ErrorAlert } from '../../components/ErrorAlert';
import { Loading } from '../../components/Loading';
import { PageHeader } from '../../components/PageHeader';
import { useI18n } from '../../i18n/I18nProvider';

/** Plain text with its http(s) URLs as links; everything else stays text (no HTML). */
function Linkified({ text }: { text: string }) {
  const parts = text.split(/(https?:\/\/[^\s<>"']+)/g);
  return (
    <>
      {parts.map((p, i) =>
        i % 2 === 1 ? (
          <Link key={i} href={p} rel="noreferrer" sx={{ overflowWrap: 'anywhere' }}>
            {p}
          </Link>
        ) : (
          <Fragment key={i}>{p}</Fragment>
        ),
      )}
    </>
  );
}

export default function OutboxPage() {
  const { t, dateTime } = useI18n();
  const [to, setTo] = useState('');
  const [filter, setFilter] = useState('');
  const [messages, setMessages] = useState<OutboxMessage[] | null>(null);
  const [error, setError] = useState<unknown>(null);

  const load = useCallback(async () => {
    try {
      const page = await api.get<Page>('/api/admin/outbox', { to: filter || undefined, limit: 50 });
      setMessages(page.messages);
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [filter]);

  useEffect(() => {
    void load();
  }, [load]);

  const apply = (e: FormEvent) => {
    e.preventDefault();
    setFilter(to.trim());
  };

  return (
    <Box sx={{ maxWidth: 900 }}>
      <PageHeader title={t('outbox.title')}>
        <Tooltip title={t('common.refresh')}>
          <IconButton onClick={load} aria-label={t('common.refresh')}>
            <Refresh />
          </IconButton>
        </Tooltip>
      </PageHeader>
      <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }}>
        {t('outbox.intro')}
      </Typography>
      <Box component="form" onSubmit={apply} sx={{ display: 'flex', gap: 1, mb: 2, flexWrap: 'wrap' }}>
        <TextField size="small" type="email" label={t('outbox.to')} value={to} onChange={(e) => setTo(e.target.value)} sx={{ flex: '1 1 240px' }} />
        <Button type="submit" variant="outlined">
          {t('outbox.filter')}
        </Button>
      </Box>
      <ErrorAlert error={error} onRetry={load} />
      {messages === null ? (
        !error && <Loading />
      ) : messages.length === 0 ? (
        <Typography color="text.secondary">{t('outbox.empty')}</Typography>
      ) : (
        <Stack spacing={1.5}>
          {messages.map((m) => (
            <Card key={m.id} variant="outlined" data-testid="outbox-message">
              <CardContent>
                <Typography variant="subtitle1" component="h2" sx={{ fontWeight: 600 }}>
                  {m.subject}
                </Typography>
                <Typography variant="body2" color="text.secondary" sx={{ mb: 1, overflowWrap: 'anywhere' }}>
                  {m.to} · {t('outbox.sentAt', { time: dateTime(m.created_at) })}
                </Typography>
                <Typography component="pre" variant="body2" sx={{ whiteSpace: 'pre-wrap', fontFamily: 'inherit', m: 0 }}>
                  <Linkified text={m.body} />
                </Typography>
              </CardContent>
            </Card>
          ))}
        </Stack>
      )}
    </Box>
  );
}
