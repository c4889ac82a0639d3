import Box from '@mui/material/Box';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import Typography from '@mui/material/Typography';
import type { InstanceDetail } from '../../api/deploy';
import { StatusChip } from '../../components/StatusChip';
import { useI18n } from '../../i18n/I18nProvider';

/** An instance's state changes, oldest first (the timeline tab and the deploy progress). */
export function Timeline({ events, testId }: { events: InstanceDetail['timeline']; testId: string }) {
  const { dateTime } = useI18n();
  return (
    <Box component="ol" data-testid={testId} sx={{ listStyle: 'none', p: 0, m: 0 }}>
      {events.map((ev) => (
        <Box
          component="li"
          key={ev.id}
          data-testid="timeline-event"
          data-to={ev.to_state ?? ''}
          sx={{ display: 'flex', flexWrap: 'wrap', gap: 1, py: 0.75, borderBottom: 1, borderColor: 'divider' }}
        >
          <Typography variant="caption" color="text.secondary" sx={{ minWidth: 150 }}>
            {dateTime(ev.at)}
          </Typography>
          {ev.to_state && <StatusChip status={ev.to_state} />}
          <Typography variant="body2" sx={{ flex: '1 1 240px', wordBreak: 'break-word' }}>
            {ev.message}
          </Typography>
        </Box>
      ))}
    </Box>
  );
}

/** The timeline tab: every event the instance has. */
export function TimelinePanel({ inst }: { inst: InstanceDetail }) {
  return (
    <Card variant="outlined">
      <CardContent>
        <Timeline events={inst.timeline} testId="timeline" />
      </CardContent>
    </Card>
  );
}
