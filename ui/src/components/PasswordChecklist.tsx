import Box from '@mui/material/Box';
import Typography from '@mui/material/Typography';
import CheckCircle from '@mui/icons-material/CheckCircle';
import RadioButtonUnchecked from '@mui/icons-material/RadioButtonUnchecked';
import Cancel from '@mui/icons-material/Cancel';
import { failedRules, RULES, type Rule } from '../lib/password';
import { useI18n } from '../i18n/I18nProvider';
import { visuallyHidden } from '../lib/a11y';

/**
 * Live feedback on the password policy: one line per rule, ticked as the user types.
 * `serverFailed` marks rules the server reported (400 weak_password) in red.
 */
export function PasswordChecklist({
  password,
  confirm,
  serverFailed = [],
}: {
  password: string;
  confirm?: string;
  serverFailed?: readonly Rule[];
}) {
  const { t } = useI18n();
  const failed = new Set(failedRules(password));
  const rules: Rule[] = failed.has('max_length') ? [...RULES, 'max_length'] : [...RULES];
  return (
    <Box component="section" aria-label={t('pw.title')} data-testid="password-checklist" sx={{ mt: 1, mb: 1 }}>
      <Typography variant="body2" color="text.secondary" sx={{ mb: 0.5 }}>
        {t('pw.title')}
      </Typography>
      <Box component="ul" sx={{ listStyle: 'none', p: 0, m: 0 }}>
        {rules.map((rule) => {
          const ok = !failed.has(rule);
          const flagged = !ok && (serverFailed.includes(rule) || password.length > 0);
          return (
            <Box
              component="li"
              key={rule}
              data-rule={rule}
              data-met={ok}
              sx={{ display: 'flex', alignItems: 'center', gap: 1, py: 0.25 }}
            >
              {ok ? (
                <CheckCircle fontSize="small" color="success" aria-hidden />
              ) : flagged ? (
                <Cancel fontSize="small" color="error" aria-hidden />
              ) : (
                <RadioButtonUnchecked fontSize="small" color="disabled" aria-hidden />
              )}
              <Typography variant="body2" color={ok ? 'success.main' : flagged ? 'error.main' : 'text.secondary'}>
                {t(`pw.rule.${rule}`)}
                <Box component="span" sx={visuallyHidden}>
                  {' '}
                  ({ok ? t('pw.met') : t('pw.unmet')})
                </Box>
              </Typography>
            </Box>
          );
        })}
        {confirm !== undefined && confirm.length > 0 && (
          <Box component="li" data-rule="match" data-met={confirm === password} sx={{ display: 'flex', alignItems: 'center', gap: 1, py: 0.25 }}>
            {confirm === password ? (
              <CheckCircle fontSize="small" color="success" aria-hidden />
            ) : (
              <Cancel fontSize="small" color="error" aria-hidden />
            )}
            <Typography variant="body2" color={confirm === password ? 'success.main' : 'error.main'}>
              {confirm === password ? t('pw.match') : t('pw.mismatch')}
            </Typography>
          </Box>
        )}
      </Box>
    </Box>
  );
}
