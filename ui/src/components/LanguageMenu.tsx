import { useState } from 'react';
import Button from '@mui/material/Button';
import Menu from '@mui/material/Menu';
import MenuItem from '@mui/material/MenuItem';
import Translate from '@mui/icons-material/Translate';
import { useI18n } from '../i18n/I18nProvider';
import { LANGS } from '../i18n/core';

export function LanguageMenu({ color = 'inherit' }: { color?: 'inherit' | 'primary' }) {
  const { lang, setLang, t } = useI18n();
  const [anchor, setAnchor] = useState<HTMLElement | null>(null);
  return (
    <>
      <Button
        color={color}
        startIcon={<Translate />}
        aria-label={`${t('nav.language')}: ${t(`lang.${lang}`)}`}
        aria-haspopup="menu"
        data-testid="language-switch"
        onClick={(e) => setAnchor(e.currentTarget)}
        sx={{ textTransform: 'none', minWidth: 0 }}
      >
        {lang === 'ja' ? '日本語' : 'EN'}
      </Button>
      <Menu anchorEl={anchor} open={anchor !== null} onClose={() => setAnchor(null)}>
        {LANGS.map((l) => (
          <MenuItem
            key={l}
            lang={l}
            selected={l === lang}
            data-testid={`language-${l}`}
            onClick={() => {
              setLang(l);
              setAnchor(null);
            }}
          >
            {t(`lang.${l}`)}
          </MenuItem>
        ))}
      </Menu>
    </>
  );
}
