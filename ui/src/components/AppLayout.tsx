import { Suspense, useState, type ReactNode } from 'react';
import { NavLink, Outlet, useLocation, useNavigate } from 'react-router';
import AppBar from '@mui/material/AppBar';
import Box from '@mui/material/Box';
import Divider from '@mui/material/Divider';
import Drawer from '@mui/material/Drawer';
import IconButton from '@mui/material/IconButton';
import List from '@mui/material/List';
import ListItemButton from '@mui/material/ListItemButton';
import ListItemIcon from '@mui/material/ListItemIcon';
import ListItemText from '@mui/material/ListItemText';
import ListSubheader from '@mui/material/ListSubheader';
import Toolbar from '@mui/material/Toolbar';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import MenuIcon from '@mui/icons-material/Menu';
import Logout from '@mui/icons-material/Logout';
import { api } from '../api/client';
import { useAuth } from '../auth/AuthProvider';
import { useI18n } from '../i18n/I18nProvider';
import { logoutIntent, navFor, type NavItem } from '../nav';
import { LanguageMenu } from './LanguageMenu';
import { Loading } from './Loading';
import { Logo } from './Logo';

const DRAWER = 240;

/** The signed-in frame: app bar, navigation (a drawer that slides in on phones). */
export function AppLayout() {
  const { t } = useI18n();
  const { user } = useAuth();
  const [open, setOpen] = useState(false);
  const navigate = useNavigate();
  const location = useLocation();
  const items = navFor(user?.role);

  const logout = async () => {
    logoutIntent.active = true;
    await api.logout();
    navigate('/login', { replace: true });
  };

  const list = (section: NavItem['section'], header?: ReactNode) => {
    const entries = items.filter((i) => i.section === section);
    if (entries.length === 0) return null;
    return (
      <List subheader={header ? <ListSubheader>{header}</ListSubheader> : undefined} dense>
        {entries.map((item) => {
          const Icon = item.icon;
          return (
            <ListItemButton
              key={item.path}
              component={NavLink}
              to={item.path}
              selected={location.pathname.startsWith(item.path)}
              onClick={() => setOpen(false)}
            >
              <ListItemIcon sx={{ minWidth: 40 }}>
                <Icon />
              </ListItemIcon>
              <ListItemText primary={t(item.label)} />
            </ListItemButton>
          );
        })}
      </List>
    );
  };

  const drawer = (
    <Box component="nav" aria-label="main" sx={{ pt: 1 }}>
      {list('main')}
      {items.some((i) => i.section === 'admin') && <Divider />}
      {list('admin', t('nav.admin'))}
    </Box>
  );

  return (
    <Box sx={{ display: 'flex', minHeight: '100dvh' }}>
      <AppBar position="fixed" elevation={0} sx={{ zIndex: (th) => th.zIndex.drawer + 1 }}>
        <Toolbar sx={{ gap: 1 }}>
          <IconButton
            color="inherit"
            edge="start"
            aria-label={t('nav.menu')}
            onClick={() => setOpen(true)}
            sx={{ display: { md: 'none' } }}
            data-testid="nav-open"
          >
            <MenuIcon />
          </IconButton>
          <Logo size={26} inverted />
          <Typography variant="h6" component="span" noWrap sx={{ fontWeight: 700, flexShrink: 0 }}>
            {t('app.name')}
          </Typography>
          <Box sx={{ flex: 1 }} />
          <LanguageMenu />
          <Typography
            variant="body2"
            noWrap
            sx={{ display: { xs: 'none', sm: 'block' }, maxWidth: 220, opacity: 0.9 }}
            data-testid="current-user"
          >
            {user?.display_name || user?.email}
          </Typography>
          <Tooltip title={t('nav.logout')}>
            <IconButton color="inherit" onClick={logout} aria-label={t('nav.logout')} data-testid="logout" edge="end">
              <Logout />
            </IconButton>
          </Tooltip>
        </Toolbar>
      </AppBar>
      <Drawer
        variant="temporary"
        open={open}
        onClose={() => setOpen(false)}
        ModalProps={{ keepMounted: true }}
        sx={{ display: { xs: 'block', md: 'none' }, '& .MuiDrawer-paper': { width: DRAWER } }}
      >
        <Toolbar />
        {drawer}
      </Drawer>
      <Drawer
        variant="permanent"
        sx={{
          display: { xs: 'none', md: 'block' },
          width: DRAWER,
          flexShrink: 0,
          '& .MuiDrawer-paper': { width: DRAWER, boxSizing: 'border-box' },
        }}
        open
      >
        <Toolbar />
        {drawer}
      </Drawer>
      <Box component="main" sx={{ flex: 1, minWidth: 0, p: { xs: 2, sm: 3 } }}>
        <Toolbar />
        <Suspense fallback={<Loading />}>
          <Outlet />
        </Suspense>
      </Box>
    </Box>
  );
}
