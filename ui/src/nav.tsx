// The navigation, in one place. The dashboard is the start page for signed-in users.

import type { ComponentType } from 'react';
import PersonOutline from '@mui/icons-material/PersonOutline';
import VpnKeyOutlined from '@mui/icons-material/VpnKeyOutlined';
import PeopleOutline from '@mui/icons-material/PeopleOutline';
import ReceiptLongOutlined from '@mui/icons-material/ReceiptLongOutlined';
import MailOutline from '@mui/icons-material/MailOutline';
import DashboardOutlined from '@mui/icons-material/DashboardOutlined';
import RocketLaunchOutlined from '@mui/icons-material/RocketLaunchOutlined';
import Inventory2Outlined from '@mui/icons-material/Inventory2Outlined';
import QueryStatsOutlined from '@mui/icons-material/QueryStatsOutlined';
import type { Role } from './api/types';
import type { MessageKey } from './i18n/messages';

export const HOME_PATH = '/dashboard';

export interface NavItem {
  path: string;
  label: MessageKey;
  icon: ComponentType;
  /** Roles that see the entry; everyone signed in when absent. */
  roles?: readonly Role[];
  section: 'main' | 'admin';
}

export const NAV: readonly NavItem[] = [
  { path: '/dashboard', label: 'nav.dashboard', icon: DashboardOutlined, section: 'main' },
  { path: '/deploy', label: 'nav.deploy', icon: RocketLaunchOutlined, roles: ['admin', 'user'], section: 'main' },
  { path: '/profile', label: 'nav.profile', icon: PersonOutline, section: 'main' },
  { path: '/keys', label: 'nav.keys', icon: VpnKeyOutlined, section: 'main' },
  { path: '/admin/users', label: 'nav.adminUsers', icon: PeopleOutline, roles: ['admin'], section: 'admin' },
  { path: '/admin/models', label: 'nav.adminModels', icon: Inventory2Outlined, roles: ['admin'], section: 'admin' },
  { path: '/admin/usage', label: 'nav.adminUsage', icon: QueryStatsOutlined, roles: ['admin'], section: 'admin' },
  { path: '/admin/audit', label: 'nav.adminAudit', icon: ReceiptLongOutlined, roles: ['admin'], section: 'admin' },
  { path: '/admin/outbox', label: 'nav.adminOutbox', icon: MailOutline, roles: ['admin'], section: 'admin' },
];

export function navFor(role: Role | undefined): NavItem[] {
  return NAV.filter((item) => !item.roles || (role !== undefined && item.roles.includes(role)));
}

/** A post-login destination from `?next=`, only if it is a path on this site. */
export function safeNext(next: string | null): string {
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return HOME_PATH;
  if (next.startsWith('/login') || next.startsWith('/api/')) return HOME_PATH;
  return next;
}

/**
 * Set while the user logs out on purpose: the login page then opens without `?next=`,
 * so logging in again lands on the start page rather than the page left.
 */
export const logoutIntent = { active: false };
