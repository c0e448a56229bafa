// Drawing on <canvas>: a time-series chart with axes, gaps and a hover
// read-out, and the message-rate sparkline. Knows nothing about the API.
import { dayMon, fmtCount, fmtNum, fmtTime, hhmm, hhmmss } from './format.js';

export function niceTicks(lo, hi, n) {
  const raw = (hi - lo) / Math.max(1, n);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag;
  const a = Math.floor(lo / step) * step;
  const b = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let i = 0, v = a; v <= b + step / 1e6 && i < 50; i++, v = a + i * step) ticks.push(v);
  let decimals = 0;
  while (decimals < 8 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) decimals++;
  return { lo: a, hi: b, ticks, decimals };
}
function fmtTick(v, decimals) {
  if (Math.abs(v) >= 1e6) return fmtCount(v);
  return v.toLocaleString('en-US', { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
  .map((s) => s * 1000);
export function timeTicks(x0, x1, n) {
  const step = TIME_STEPS.find((s) => (x1 - x0) / s <= n) || 86400e3 * Math.ceil((x1 - x0) / n / 86400e3);
  const off = new Date(x0).getTimezoneOffset() * 60e3; // align ticks to local time
  const ticks = [];
  for (let t = Math.ceil((x0 - off) / step) * step + off; t <= x1 && ticks.length < 100; t += step) ticks.push(t);
  const label = (t) => {
    const d = new Date(t);
    if (step >= 3600e3 && d.getHours() === 0 && d.getMinutes() === 0) return dayMon(d);
    return step < 60e3 ? hhmmss(d) : hhmm(d);
  };
  return { ticks, label };
}

/**
 * Draw one field into `c.canvas` at its CSS size and the device pixel ratio.
 * c: { canvas, color, pts: [[ms, value]] sorted, finite; from, to: the window
 * (ms); bucket: the server's bucket width (ms), for telling gaps; hover: x in
 * CSS px or null }. Returns null when the canvas is not laid out, else
 * { points, last, min, max } (points drawn).
 */
export function drawChart(c) {
  const cv = c.canvas;
  const w = cv.clientWidth;
  const ht = cv.clientHeight;
  const pts = c.pts;
  if (!w || !ht) return null;
  const dpr = window.devicePixelRatio || 1;
  if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(ht * dpr)) {
    cv.width = Math.round(w * dpr);
    cv.height = Math.round(ht * dpr);
  }
  const ctx = cv.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, ht);
  ctx.font = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  ctx.textBaseline = 'middle';

  // Domains: x is the requested window, y the data padded to nice ticks.
  let x0 = c.from;
  let x1 = c.to;
  if (!(x1 > x0)) { x1 = Date.now(); x0 = x1 - 300 * c.bucket; }
  let lo = Infinity;
  let hi = -Infinity;
  for (const p of pts) { if (p[1] < lo) lo = p[1]; if (p[1] > hi) hi = p[1]; }
  const min = lo;
  const max = hi;
  if (!pts.length) { lo = 0; hi = 1; }
  if (lo === hi) { const d = Math.abs(lo) * 0.05 || 1; lo -= d; hi += d; }
  const padT = 8;
  const padB = 20;
  const yt = niceTicks(lo, hi, Math.max(2, Math.floor((ht - padT - padB) / 34)));
  const labels = yt.ticks.map((v) => fmtTick(v, yt.decimals));
  const padL = Math.min(w * 0.4, Math.ceil(Math.max(...labels.map((l) => ctx.measureText(l).width))) + 10);
  const padR = 12;
  const pw = w - padL - padR;
  const ph = ht - padT - padB;
  const X = (t) => padL + ((t - x0) / (x1 - x0)) * pw;
  const Y = (v) => padT + (1 - (v - yt.lo) / (yt.hi - yt.lo)) * ph;

  ctx.lineWidth = 1;
  ctx.strokeStyle = '#edf0f4';
  ctx.fillStyle = '#6b7280';
  ctx.textAlign = 'right';
  yt.ticks.forEach((v, i) => {
    const y = Math.round(Y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(padL + pw, y); ctx.stroke();
    ctx.fillText(labels[i], padL - 6, y);
  });
  const xt = timeTicks(x0, x1, Math.max(2, Math.floor(pw / 80)));
  ctx.textAlign = 'center';
  for (const t of xt.ticks) {
    const x = Math.round(X(t)) + 0.5;
    ctx.strokeStyle = '#f3f5f8';
    ctx.beginPath(); ctx.moveTo(x, padT); ctx.lineTo(x, padT + ph); ctx.stroke();
    ctx.strokeStyle = '#c5ccd8';
    ctx.beginPath(); ctx.moveTo(x, padT + ph); ctx.lineTo(x, padT + ph + 4); ctx.stroke();
    const text = xt.label(t);
    const half = ctx.measureText(text).width / 2;
    ctx.fillText(text, Math.min(Math.max(x, half), w - half), padT + ph + 12);
  }
  ctx.strokeStyle = '#c5ccd8';
  ctx.beginPath(); ctx.moveTo(padL, padT + ph + 0.5); ctx.lineTo(padL + pw, padT + ph + 0.5); ctx.stroke();

  if (!pts.length) {
    ctx.fillStyle = '#9ca3af';
    ctx.font = '13px system-ui, sans-serif';
    ctx.fillText('No data in this range', padL + pw / 2, padT + ph / 2);
    return { points: 0 };
  }

  // Split into runs where consecutive points are close; a wider step is a gap.
  const bucket = c.bucket || 1000;
  const steps = [];
  for (let i = 1; i < pts.length; i++) steps.push(pts[i][0] - pts[i - 1][0]);
  steps.sort((a, b) => a - b);
  const gap = Math.max(2 * bucket, 3 * (steps.length ? steps[steps.length >> 1] : bucket));
  const runs = [];
  let run = [pts[0]];
  for (let i = 1; i < pts.length; i++) {
    if (pts[i][0] - pts[i - 1][0] > gap) { runs.push(run); run = []; }
    run.push(pts[i]);
  }
  runs.push(run);

  ctx.save();
  ctx.beginPath(); ctx.rect(padL, padT - 4, pw + 4, ph + 8); ctx.clip();
  ctx.lineJoin = 'round';
  for (const r of runs) {
    if (r.length === 1) {
      ctx.fillStyle = c.color;
      ctx.beginPath(); ctx.arc(X(r[0][0]), Y(r[0][1]), 2.5, 0, 2 * Math.PI); ctx.fill();
      continue;
    }
    ctx.beginPath();
    r.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
    ctx.strokeStyle = c.color;
    ctx.lineWidth = 1.6;
    ctx.stroke();
    ctx.lineTo(X(r[r.length - 1][0]), padT + ph);
    ctx.lineTo(X(r[0][0]), padT + ph);
    ctx.closePath();
    ctx.globalAlpha = 0.08;
    ctx.fillStyle = c.color;
    ctx.fill();
    ctx.globalAlpha = 1;
  }
  const lastP = pts[pts.length - 1];
  ctx.fillStyle = c.color;
  ctx.beginPath(); ctx.arc(X(lastP[0]), Y(lastP[1]), 3, 0, 2 * Math.PI); ctx.fill();
  ctx.restore();

  if (c.hover != null && c.hover >= padL && c.hover <= padL + pw) {
    const t = x0 + ((c.hover - padL) / pw) * (x1 - x0);
    let lo2 = 0;
    let hi2 = pts.length - 1;
    while (hi2 - lo2 > 1) { const mid = (lo2 + hi2) >> 1; if (pts[mid][0] < t) lo2 = mid; else hi2 = mid; }
    const p = Math.abs(pts[lo2][0] - t) <= Math.abs(pts[hi2][0] - t) ? pts[lo2] : pts[hi2];
    const x = X(p[0]);
    const y = Y(p[1]);
    ctx.strokeStyle = '#9ca3af';
    ctx.setLineDash([3, 3]);
    ctx.beginPath(); ctx.moveTo(Math.round(x) + 0.5, padT); ctx.lineTo(Math.round(x) + 0.5, padT + ph); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = c.color;
    ctx.beginPath(); ctx.arc(x, y, 4, 0, 2 * Math.PI); ctx.fill();
    const text = `${fmtNum(p[1])}  ${fmtTime(p[0])}`;
    ctx.font = '12px system-ui, sans-serif';
    const tw = ctx.measureText(text).width + 12;
    const bx = Math.min(Math.max(x - tw / 2, padL), padL + pw - tw);
    ctx.fillStyle = 'rgba(31, 41, 55, 0.9)';
    ctx.fillRect(bx, padT, tw, 20);
    ctx.fillStyle = '#fff';
    ctx.textAlign = 'left';
    ctx.fillText(text, bx + 6, padT + 10);
  }
  return { points: pts.length, last: lastP[1], min, max };
}

/** Draw samples [{t, v}] (oldest first) as a filled line scaled to the canvas. */
export function drawSparkline(cv, r) {
  const w = cv.clientWidth;
  const ht = cv.clientHeight;
  if (!w || !ht) return;
  const dpr = window.devicePixelRatio || 1;
  cv.width = Math.round(w * dpr);
  cv.height = Math.round(ht * dpr);
  const ctx = cv.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  if (r.length < 2) return;
  const max = Math.max(1, ...r.map((p) => p.v));
  const t1 = r[r.length - 1].t;
  const span = Math.max(20e3, t1 - r[0].t);
  const X = (t) => w - ((t1 - t) / span) * w;
  const Y = (v) => ht - 2 - (v / max) * (ht - 4);
  ctx.beginPath();
  r.forEach((p, i) => (i ? ctx.lineTo(X(p.t), Y(p.v)) : ctx.moveTo(X(p.t), Y(p.v))));
  ctx.strokeStyle = '#2563eb';
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.lineTo(X(t1), ht);
  ctx.lineTo(X(r[0].t), ht);
  ctx.fillStyle = 'rgba(37, 99, 235, 0.1)';
  ctx.fill();
}
