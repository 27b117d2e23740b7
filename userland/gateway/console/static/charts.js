// A line chart on a canvas: values over the last minutes, the y axis from 0 to the largest value.
// Small on purpose: the console draws three of these a second and needs nothing more.

const COLORS = { line: "#1f6feb", grid: "#d0d7de", text: "#57606a" };

export class History {
  // Keeps (time, value) pairs of the last `seconds`.
  constructor(seconds = 300) { this.seconds = seconds; this.points = []; }
  add(t, value) {
    this.points.push([t, value]);
    while (this.points.length && this.points[0][0] < t - this.seconds) this.points.shift();
  }
}

export function draw(canvas, points, { format = (v) => v.toFixed(1), span = null } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = COLORS.text;
  const pad = { left: 44, right: 8, top: 8, bottom: 18 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const values = points.map((p) => p[1]).filter((v) => v !== null && Number.isFinite(v));
  const top = Math.max(1e-9, ...values) * 1.1 || 1;
  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const y = pad.top + h * (1 - f);
    ctx.beginPath(); ctx.moveTo(pad.left, y); ctx.lineTo(pad.left + w, y); ctx.stroke();
    ctx.fillText(format(top * f), 2, y + 4);
  }
  if (!points.length) { ctx.fillText("no data yet", pad.left + 8, pad.top + h / 2); return; }
  const end = points[points.length - 1][0];
  const start = span ? end - span : points[0][0];
  const x = (t) => pad.left + (end === start ? w : (w * (t - start)) / (end - start));
  const y = (v) => pad.top + h * (1 - v / top);
  ctx.strokeStyle = COLORS.line;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let drawing = false;
  for (const [t, v] of points) {
    if (v === null || !Number.isFinite(v) || t < start) { drawing = false; continue; }
    if (drawing) ctx.lineTo(x(t), y(v)); else ctx.moveTo(x(t), y(v));
    drawing = true;
  }
  ctx.stroke();
  ctx.fillText(span ? `last ${Math.round(span / 60)} min` : "", pad.left, height - 4);
  const lastValue = values.length ? values[values.length - 1] : null;
  if (lastValue !== null) ctx.fillText(`now ${format(lastValue)}`, pad.left + w - 70, height - 4);
}
