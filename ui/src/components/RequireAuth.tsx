import type { ReactNode } from 'react';
import { Navigate, useLocation } from 'react-router';
import type { Role } from '../api/types';
import { useAuth } from '../auth/AuthProvider';
import { HOME_PATH, logoutIntent } from '../nav';
import { Loading } from './Loading';

/** Renders `children` for a signed-in user with one of `roles`; otherwise redirects. */
export function RequireAuth({ children, roles }: { children: ReactNode; roles?: readonly Role[] }) {
  const { status, user } = useAuth();
  const location = useLocation();
  if (status === 'loading') return <Loading />;
  if (status === 'signed_out' || !user) {
    if (logoutIntent.active) {
      logoutIntent.active = false;
      return <Navigate to="/login" replace />;
    }
    const next = location.pathname + location.search;
    return <Navigate to={`/login?next=${encodeURIComponent(next)}`} replace />;
  }
  if (roles && !roles.includes(user.role)) return <Navigate to={HOME_PATH} replace />;
  return <>{children}</>;
}
