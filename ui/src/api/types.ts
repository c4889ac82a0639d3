// Shapes of the management API's JSON (see /api/openapi.json).

export type Role = 'admin' | 'user' | 'viewer';
export const ROLES: readonly Role[] = ['admin', 'user', 'viewer'];

export interface User {
  id: string;
  email: string;
  display_name: string;
  role: Role;
  email_verified: boolean;
  mfa_enabled: boolean;
  /** Locked by an administrator. */
  disabled: boolean;
  created_at: string;
  last_login_at: string | null;
}

export interface TokenPair {
  access_token: string;
  refresh_token: string;
  token_type: 'Bearer';
  expires_in: number;
  user: User;
}

export interface MfaChallenge {
  mfa_required: true;
  mfa_token: string;
  token_type: 'Bearer';
  expires_in: number;
}

export type LoginResponse = TokenPair | MfaChallenge;

export interface Accepted {
  status: string;
  message?: string;
}

export interface MfaEnrollment {
  secret: string;
  otpauth_uri: string;
}

export interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
  expired: boolean;
}

export interface CreatedKey {
  id: string;
  name: string;
  key: string;
  prefix: string;
  created_at: string;
  expires_at: string | null;
}

export interface UsersPage {
  users: User[];
  total: number;
}

export type Outcome = 'success' | 'failure';

export interface AuditEntry {
  id: number;
  actor_id: string | null;
  actor_email: string | null;
  action: string;
  target: string | null;
  ip: string | null;
  outcome: Outcome;
  detail: string | null;
  at: string;
}

export interface OutboxMessage {
  id: string;
  to: string;
  subject: string;
  body: string;
  created_at: string;
}

export interface Health {
  status: string;
  version: string;
}
