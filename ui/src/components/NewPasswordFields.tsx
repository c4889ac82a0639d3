import { useState } from 'react';
import { ApiError } from '../api/client';
import { useI18n } from '../i18n/I18nProvider';
import { newPasswordReady, rulesFromDetails, type Rule } from '../lib/password';
import { PasswordChecklist } from './PasswordChecklist';
import { PasswordField } from './PasswordField';

/** The state of a new-password group: the password, its repetition and the server's verdict. */
export interface NewPassword {
  password: string;
  confirm: string;
  /** Rules the server's last 400 `weak_password` named (shown in red until the password changes). */
  serverFailed: Rule[];
  setPassword: (v: string) => void;
  setConfirm: (v: string) => void;
  /** Reads a failed request: a `weak_password` marks the rules it names, anything else none. */
  refused: (err: unknown) => void;
  clear: () => void;
  /** Acceptable to the policy and, where asked twice, repeated. */
  ready: boolean;
}

/** State for `NewPasswordFields`; `withConfirm: false` when the password is typed once. */
export function useNewPassword(withConfirm = true): NewPassword {
  const [password, setPassword] = useState('');
  const [confirm, setConfirm] = useState('');
  const [serverFailed, setServerFailed] = useState<Rule[]>([]);
  return {
    password,
    confirm,
    serverFailed,
    setPassword: (v) => {
      setPassword(v);
      // The server's verdict was about the previous password.
      setServerFailed([]);
    },
    setConfirm,
    refused: (err) => setServerFailed(err instanceof ApiError && err.code === 'weak_password' ? rulesFromDetails(err.details) : []),
    clear: () => {
      setPassword('');
      setConfirm('');
      setServerFailed([]);
    },
    ready: newPasswordReady(password, withConfirm ? confirm : undefined),
  };
}

/**
 * A new password with the policy's live checklist: the sign-up, reset, setup, profile and
 * create-user forms. `withConfirm` adds the repeat field; `checklistWhenTyped` hides the
 * checklist until something is typed (the profile page, where the form is secondary).
 */
export function NewPasswordFields({
  value,
  label,
  name = 'password',
  withConfirm = true,
  autoFocus,
  checklistWhenTyped = false,
}: {
  value: NewPassword;
  label?: string;
  name?: string;
  withConfirm?: boolean;
  autoFocus?: boolean;
  checklistWhenTyped?: boolean;
}) {
  const { t } = useI18n();
  const { password, confirm, serverFailed } = value;
  return (
    <>
      <PasswordField
        label={label ?? t('common.password')}
        name={name}
        autoComplete="new-password"
        value={password}
        onChange={(e) => value.setPassword(e.target.value)}
        autoFocus={autoFocus}
        required
      />
      {withConfirm && (
        <PasswordField
          label={t('common.confirmPassword')}
          name="confirmPassword"
          autoComplete="new-password"
          value={confirm}
          onChange={(e) => value.setConfirm(e.target.value)}
          error={confirm.length > 0 && confirm !== password}
          required
        />
      )}
      {(!checklistWhenTyped || password.length > 0) && (
        <PasswordChecklist password={password} confirm={withConfirm ? confirm : undefined} serverFailed={serverFailed} />
      )}
    </>
  );
}
