import { lazy } from 'react';
import { BrowserRouter, Navigate, Route, Routes } from 'react-router';
import { AppLayout } from './components/AppLayout';
import { RequireAuth } from './components/RequireAuth';
import { HOME_PATH } from './nav';
import { LoginPage } from './pages/LoginPage';
import { NotFoundPage } from './pages/NotFoundPage';
import { ResetPasswordPage } from './pages/ResetPasswordPage';
import { SetupPage } from './pages/SetupPage';
import { SignupPage } from './pages/SignupPage';
import { VerifyPage } from './pages/VerifyPage';

// Signed-in pages load on demand: the first screen (usually the login) stays small.
const ProfilePage = lazy(() => import('./pages/ProfilePage'));
const KeysPage = lazy(() => import('./pages/KeysPage'));
const UsersPage = lazy(() => import('./pages/admin/UsersPage'));
const AuditPage = lazy(() => import('./pages/admin/AuditPage'));
const OutboxPage = lazy(() => import('./pages/admin/OutboxPage'));
const loadDashboard = () => import('./pages/DashboardPage');
const DashboardPage = lazy(loadDashboard);
// The start page: when the visit opens on it, fetch its chunk while the session refreshes.
if (typeof window !== 'undefined' && ['/', '/dashboard'].includes(window.location.pathname)) void loadDashboard();
const DeployPage = lazy(() => import('./pages/DeployPage'));
const InstancePage = lazy(() => import('./pages/InstancePage'));
const ModelsPage = lazy(() => import('./pages/admin/ModelsPage'));
const UsagePage = lazy(() => import('./pages/admin/UsagePage'));

export function App() {
  return (
    <BrowserRouter>
      <Routes>
        {/* Links in e-mails and in `corral serve`'s output point at these paths. */}
        <Route path="/login" element={<LoginPage />} />
        <Route path="/signup" element={<SignupPage />} />
        <Route path="/verify" element={<VerifyPage />} />
        <Route path="/reset-password" element={<ResetPasswordPage />} />
        <Route path="/setup" element={<SetupPage />} />
        <Route
          element={
            <RequireAuth>
              <AppLayout />
            </RequireAuth>
          }
        >
          <Route index element={<Navigate to={HOME_PATH} replace />} />
          <Route path="/dashboard" element={<DashboardPage />} />
          <Route path="/deploy" element={<RequireAuth roles={['admin', 'user']}><DeployPage /></RequireAuth>} />
          <Route path="/instances/:id" element={<InstancePage />} />
          <Route path="/profile" element={<ProfilePage />} />
          <Route path="/keys" element={<KeysPage />} />
          <Route path="/admin" element={<RequireAuth roles={['admin']}><Navigate to="/admin/users" replace /></RequireAuth>} />
          <Route path="/admin/users" element={<RequireAuth roles={['admin']}><UsersPage /></RequireAuth>} />
          <Route path="/admin/audit" element={<RequireAuth roles={['admin']}><AuditPage /></RequireAuth>} />
          <Route path="/admin/models" element={<RequireAuth roles={['admin']}><ModelsPage /></RequireAuth>} />
          <Route path="/admin/usage" element={<RequireAuth roles={['admin']}><UsagePage /></RequireAuth>} />
          <Route path="/admin/outbox" element={<RequireAuth roles={['admin']}><OutboxPage /></RequireAuth>} />
          <Route path="*" element={<NotFoundPage />} />
        </Route>
      </Routes>
    </BrowserRouter>
  );
}
