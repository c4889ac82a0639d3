import { useEffect, useRef, useState, type FormEvent } from 'react';
import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { api } from '../../api/client';
import { chatChunk, readLines, type InstanceDetail } from '../../api/deploy';
import { ErrorAlert } from '../../components/ErrorAlert';
import { useI18n } from '../../i18n/I18nProvider';

interface Msg {
  role: 'user' | 'assistant';
  content: string;
}

/** The chat playground: streams the model's answer through the gateway's Ollama API. */
export function ChatPanel({ inst }: { inst: InstanceDetail }) {
  const { t } = useI18n();
  const [messages, setMessages] = useState<Msg[]>([]);
  const [input, setInput] = useState('');
  const [error, setError] = useState<unknown>(null);
  const ctrl = useRef<AbortController | null>(null);
  const [streaming, setStreaming] = useState(false);
  const end = useRef<HTMLDivElement>(null);

  useEffect(() => {
    return () => ctrl.current?.abort();
  }, []);
  useEffect(() => {
    const el = end.current?.parentElement;
    if (el) el.scrollTop = el.scrollHeight;
  }, [messages]);

  const send = async (e: FormEvent) => {
    e.preventDefault();
    const text = input.trim();
    if (!text || streaming) return;
    const history: Msg[] = [...messages, { role: 'user', content: text }];
    setMessages([...history, { role: 'assistant', content: '' }]);
    setInput('');
    setError(null);
    setStreaming(true);
    const c = new AbortController();
    ctrl.current = c;
    try {
      const res = await api.fetchAuth(`/i/${inst.id}/api/chat`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: inst.model_id, messages: history, stream: true }),
        signal: c.signal,
      });
      if (!res.body) throw new Error('no body');
      await readLines(res.body, (line) => {
        const { text: piece } = chatChunk(line);
        if (piece) {
          setMessages((m) => {
            const copy = m.slice();
            const last = copy[copy.length - 1];
            copy[copy.length - 1] = { ...last, content: last.content + piece };
            return copy;
          });
        }
      });
    } catch (err) {
      if (!(err instanceof DOMException && err.name === 'AbortError')) setError(err);
    }
    ctrl.current = null;
    setStreaming(false);
  };

  return (
    <Card variant="outlined">
      <CardContent>
        {inst.status !== 'ready' && (
          <Alert severity="info" sx={{ mb: 2 }}>
            {inst.status === 'sleeping' && inst.settings.wake_on_request
              ? t('chat.sleeping')
              : inst.status === 'stopped' || inst.status === 'failed'
                ? t('chat.stopped')
                : t('chat.notReady')}
          </Alert>
        )}
        <Box data-testid="chat-log" sx={{ display: 'grid', gap: 1, mb: 2, maxHeight: 420, overflowY: 'auto' }}>
          {messages.length === 0 && (
            <Typography variant="body2" color="text.secondary">
              {t('chat.empty')}
            </Typography>
          )}
          {messages.map((m, i) => (
            <Box
              key={i}
              data-testid={m.role === 'assistant' ? 'chat-assistant' : 'chat-user'}
              sx={{
                justifySelf: m.role === 'user' ? 'end' : 'start',
                maxWidth: '90%',
                px: 1.5,
                py: 1,
                borderRadius: 2,
                bgcolor: m.role === 'user' ? 'primary.main' : 'action.hover',
                color: m.role === 'user' ? 'primary.contrastText' : 'text.primary',
                whiteSpace: 'pre-wrap',
                wordBreak: 'break-word',
                fontSize: 14,
              }}
            >
              {m.content || (streaming && i === messages.length - 1 ? '…' : '')}
            </Box>
          ))}
          <div ref={end} />
        </Box>
        <ErrorAlert error={error} />
        <Box component="form" onSubmit={send} data-testid="chat-form" sx={{ display: 'flex', gap: 1, alignItems: 'flex-start' }}>
          <TextField
            value={input}
            onChange={(e) => setInput(e.target.value)}
            placeholder={t('chat.placeholder')}
            name="prompt"
            size="small"
            fullWidth
            multiline
            maxRows={6}
            onKeyDown={(e) => {
              if (e.key === 'Enter' && !e.shiftKey) {
                e.preventDefault();
                (e.currentTarget.closest('form') as HTMLFormElement | null)?.requestSubmit();
              }
            }}
          />
          {streaming ? (
            <Button variant="outlined" color="error" onClick={() => ctrl.current?.abort()} data-testid="chat-stop">
              {t('chat.stop')}
            </Button>
          ) : (
            <Button type="submit" variant="contained" disabled={!input.trim()} data-testid="chat-send">
              {t('chat.send')}
            </Button>
          )}
        </Box>
      </CardContent>
    </Card>
  );
}
