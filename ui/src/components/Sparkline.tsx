import Box from '@mui/material/Box';
import Typography from '@mui/material/Typography';

/** A tiny inline SVG line chart (no chart library: the bundle stays small). */
export function Sparkline({
  title,
  values,
  format,
  color = '#1976d2',
  testId,
}: {
  title: string;
  values: number[];
  format: (v: number) => string;
  color?: string;
  testId?: string;
}) {
  const w = 300;
  const h = 60;
  const max = Math.max(1e-9, ...values);
  const min = Math.min(0, ...values);
  const ys = values.map((v) => (h - ((v - min) / (max - min || 1)) * (h - 4) - 2).toFixed(1));
  // A single value (the first minute with requests) is drawn as a level line across.
  const pts =
    ys.length === 1 ? [`0,${ys[0]}`, `${w},${ys[0]}`] : ys.map((y, i) => `${((i / (ys.length - 1)) * w).toFixed(1)},${y}`);
  const last = values.length ? values[values.length - 1] : null;
  return (
    <Box data-testid={testId} sx={{ minWidth: 0 }}>
      <Box sx={{ display: 'flex', justifyContent: 'space-between', gap: 1 }}>
        <Typography variant="caption" color="text.secondary">
          {title}
        </Typography>
        <Typography variant="caption" sx={{ fontWeight: 600 }}>
          {last === null ? '—' : format(last)}
        </Typography>
      </Box>
      <svg viewBox={`0 0 ${w} ${h}`} width="100%" height={h} preserveAspectRatio="none" role="img" aria-label={title}>
        <rect x="0" y="0" width={w} height={h} fill="rgba(0,0,0,0.03)" />
        {pts.length > 1 && (
          <>
            <polygon points={`0,${h} ${pts.join(' ')} ${w},${h}`} fill={color} opacity="0.12" />
            <polyline points={pts.join(' ')} fill="none" stroke={color} strokeWidth="2" vectorEffect="non-scaling-stroke" />
          </>
        )}
      </svg>
    </Box>
  );
}

/** Bars, one per labelled bucket (requests or tokens per hour). */
export function Bars({ title, data, testId }: { title: string; data: { label: string; value: number }[]; testId?: string }) {
  const w = 300;
  const h = 60;
  const max = Math.max(1, ...data.map((d) => d.value));
  const bw = data.length ? w / data.length : w;
  return (
    <Box data-testid={testId} sx={{ minWidth: 0 }}>
      <Typography variant="caption" color="text.secondary">
        {title}
      </Typography>
      <svg viewBox={`0 0 ${w} ${h}`} width="100%" height={h} preserveAspectRatio="none" role="img" aria-label={title}>
        <rect x="0" y="0" width={w} height={h} fill="rgba(0,0,0,0.03)" />
        {data.map((d, i) => {
          const bh = (d.value / max) * (h - 4);
          return (
            <rect key={d.label} x={i * bw + 1} y={h - bh} width={Math.max(1, bw - 2)} height={bh} fill="#2e7d32">
              <title>{`${d.label}: ${d.value}`}</title>
            </rect>
          );
        })}
      </svg>
    </Box>
  );
}
