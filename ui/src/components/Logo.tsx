/** Corral's mark: a corral fence. `inverted` draws it for a coloured background. */
export function Logo({ size = 28, inverted = false }: { size?: number; inverted?: boolean }) {
  const bg = inverted ? '#ffffff' : '#1e5aa8';
  const fg = inverted ? '#1e5aa8' : '#ffffff';
  return (
    <svg width={size} height={size} viewBox="0 0 32 32" aria-hidden focusable="false">
      <rect width="32" height="32" rx="6" fill={bg} />
      <path d="M7 9h18M7 16h18M7 23h18M10 6v20M22 6v20" stroke={fg} strokeWidth="2.5" strokeLinecap="round" />
    </svg>
  );
}
