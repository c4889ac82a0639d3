import { Fragment } from 'react';
import Box from '@mui/material/Box';

/** Text in which `backticked` parts are code, as the UI strings write commands and headers. */
export function Markup({ text }: { text: string }) {
  return (
    <>
      {text.split('`').map((part, i) =>
        i % 2 === 1 ? (
          <Box
            key={i}
            component="code"
            sx={{ fontFamily: 'monospace', fontSize: '0.92em', bgcolor: 'action.hover', px: 0.5, borderRadius: 0.5 }}
          >
            {part}
          </Box>
        ) : (
          <Fragment key={i}>{part}</Fragment>
        ),
      )}
    </>
  );
}
