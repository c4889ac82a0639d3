import { useEffect, useRef, useState } from 'react';
import Box from '@mui/material/Box';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import FormControlLabel from '@mui/material/FormControlLabel';
import Switch from '@mui/material/Switch';
import { api } from '../../api/client';
import { readLines, sseData, type LogLine, type LogsPage } from '../../api/deploy';
import { ErrorAlert } from '../../components/ErrorAlert';
import { useI18n } from '../../i18n/I18nProvider';

/** The replicas' logs: the last 200 lines, followed live (SSE) while the switch is on. */
export function LogsPanel({ id }: { id: string }) {
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
          const r = await api.get<LogsPage>(`/api/instances/${id}/logs`, { tail: 200 }, c.signal);
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
