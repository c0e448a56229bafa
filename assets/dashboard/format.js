// Number, size, duration and time formatting for the dashboard (app.js, chart.js).
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

export const pad2 = (n) => String(n).padStart(2, '0');
export const hhmm = (d) => pad2(d.getHours()) + ':' + pad2(d.getMinutes());
export const hhmmss = (d) => hhmm(d) + ':' + pad2(d.getSeconds());
export const dayMon = (d) => d.getDate() + ' ' + MONTHS[d.getMonth()];

export function fmtTime(ms) {
  if (!Number.isFinite(ms)) return '–';
  const d = new Date(ms);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? hhmmss(d) : dayMon(d) + ' ' + hhmmss(d);
}
export function ago(ms) {
  if (!Number.isFinite(ms)) return 'never';
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 2) return 'just now';
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' d ago';
}
export function fmtCount(n) {
  if (!Number.isFinite(n)) return '–';
  const a = Math.abs(n);
  if (a < 1e5) return Math.round(n).toLocaleString('en-US');
  if (a < 1e6) return (n / 1e3).toFixed(1) + 'k';
  if (a < 1e9) return (n / 1e6).toFixed(2) + 'M';
  return (n / 1e9).toFixed(2) + 'G';
}
export function fmtNum(v) {
  if (!Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1e6) return fmtCount(v);
  if (a >= 100 || Number.isInteger(v)) return (Math.round(v * 10) / 10).toLocaleString('en-US');
  return String(Number(v.toPrecision(4)));
}
export function fmtBytes(b) {
  if (!Number.isFinite(b)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(b < 10 ? 1 : 0) : b) + ' ' + u[i];
}
export const fmtMs = (v) => (!Number.isFinite(v) ? '–' : v >= 1000 ? (v / 1000).toFixed(2) + ' s' : fmtNum(v) + ' ms');
export function fmtDuration(s) {
  if (!Number.isFinite(s)) return '–';
  s = Math.floor(s);
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' m ' + (s % 60) + ' s';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' m';
  return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
}
