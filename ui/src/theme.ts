import { createTheme } from '@mui/material/styles';

// System fonts only: nothing is fetched from a font CDN, and Japanese text uses the
// platform's Japanese fonts.
const fontFamily = [
  'system-ui',
  '-apple-system',
  '"Segoe UI"',
  'Roboto',
  '"Helvetica Neue"',
  '"Hiragino Sans"',
  '"Hiragino Kaku Gothic ProN"',
  '"Noto Sans JP"',
  '"Noto Sans CJK JP"',
  'Meiryo',
  'sans-serif',
].join(',');

export const theme = createTheme({
  palette: {
    primary: { main: '#1e5aa8' },
    secondary: { main: '#7b4bb7' },
    background: { default: '#f5f7fa' },
  },
  shape: { borderRadius: 8 },
  typography: { fontFamily, button: { textTransform: 'none', fontWeight: 600 } },
  components: {
    MuiTableCell: { styleOverrides: { head: { fontWeight: 600 } } },
  },
});
