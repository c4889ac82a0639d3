import type { ReactNode } from 'react';
import Box from '@mui/material/Box';
import Paper from '@mui/material/Paper';
import Typography from '@mui/material/Typography';
import { LanguageMenu } from './LanguageMenu';
import { Logo } from './Logo';
import { useI18n } from '../i18n/I18nProvider';

/** The frame of the pages used before signing in: a centred card, full width on phones. */
export function PublicPage({ title, children }: { title: string; children: ReactNode }) {
  const { t } = useI18n();
  return (
    <Box sx={{ minHeight: '100dvh', display: 'flex', flexDirection: 'column', bgcolor: 'background.default' }}>
      <Box
        component="header"
        sx={{ display: 'flex', alignItems: 'center', justifyContent: 'space-between', px: { xs: 2, sm: 3 }, py: 1.5 }}
      >
        <Box sx={{ display: 'flex', alignItems: 'center', gap: 1 }}>
          <Logo />
          <Typography variant="h6" component="span" sx={{ fontWeight: 700 }}>
            {t('app.name')}
          </Typography>
        </Box>
        <LanguageMenu color="primary" />
      </Box>
      <Box component="main" sx={{ flex: 1, display: 'flex', justifyContent: 'center', alignItems: { xs: 'stretch', sm: 'flex-start' }, px: { xs: 0, sm: 2 }, pt: { xs: 0, sm: 4 }, pb: 4 }}>
        <Paper
          elevation={0}
          sx={{
            width: '100%',
            maxWidth: 440,
            p: { xs: 2.5, sm: 4 },
            border: { xs: 'none', sm: 1 },
            borderColor: { sm: 'divider' },
            borderRadius: { xs: 0, sm: 2 },
          }}
        >
          <Typography variant="h5" component="h1" gutterBottom sx={{ fontWeight: 600 }}>
            {title}
          </Typography>
          {children}
        </Paper>
      </Box>
      <Typography variant="caption" color="text.secondary" align="center" sx={{ pb: 2, px: 2 }}>
        {t('app.tagline')}
      </Typography>
    </Box>
  );
}
