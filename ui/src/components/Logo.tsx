export function Logo({ size = 28 }: { size?: number }) {
  return (
    <svg width={size} height={size} viewBox="0 0 32 32" aria-hidden focusable="false">
      <rect width="32" height="32" rx="6" fill="#1e5aa8" />
      <path d="M7 9h18M7 16h18M7 23h18M10 6v20M22 6v20" stroke="#fff" strokeWidth="2.5" strokeLinecap="round" />
    </svg>
  );
}
