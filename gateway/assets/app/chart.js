// Clicks over time as an SVG drawn here: one bar per hour or day, gaps in
// the series filled with zeros, a few axis labels. Colours come from the
// stylesheet (classes), never from style attributes.

const SVG = 'http://www.w3.org/2000/svg';
const W = 640;
const H = 220;
const PAD = { left: 40, right: 8, top: 10, bottom: 28 };

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Every bucket from `from` to `to` (ms), with the series' counts. */
export function buckets(series, from, to, interval) {
  const step = interval === 'hour' ? 3600e3 : 86400e3;
  const start = Math.floor(from / step) * step;
  const counts = new Map();
  for (const p of series) {
    const t = Math.floor(Date.parse(p.t) / step) * step;
    counts.set(t, (counts.get(t) || 0) + Number(p.clicks));
  }
  const out = [];
  for (let t = start; t <= to; t += step) out.push({ t, clicks: counts.get(t) || 0 });
  return out;
}

function label(t, interval) {
  const d = new Date(t);
  if (interval === 'hour') return `${String(d.getHours()).padStart(2, '0')}:00`;
  return `${d.getMonth() + 1}/${d.getDate()}`;
}

/** Replaces `svg`'s content with a bar chart of `points`. */
export function drawChart(svg, points, interval) {
  svg.replaceChildren();
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  const total = points.reduce((n, p) => n + p.clicks, 0);
  const per = interval === 'hour' ? 'hour' : 'day';
  svg.setAttribute('aria-label', `${total} clicks, by ${per}, over ${points.length} ${per}s`);
  const max = Math.max(1, ...points.map((p) => p.clicks));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const bw = plotW / Math.max(1, points.length);
  for (const frac of max >= 2 ? [0, 0.5, 1] : [0, 1]) {
    const y = PAD.top + plotH * (1 - frac);
    svg.append(el('line', { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: 'grid' }));
    svg.append(el('text', { x: PAD.left - 6, y: y + 4, class: 'axis', 'text-anchor': 'end' },
      String(Math.round(max * frac))));
  }
  const every = Math.max(1, Math.ceil(points.length / 8));
  points.forEach((p, i) => {
    const h = (p.clicks / max) * plotH;
    const x = PAD.left + i * bw;
    const bar = el('rect', {
      x: x + bw * 0.1, y: PAD.top + plotH - h, width: Math.max(1, bw * 0.8), height: h,
      class: 'bar', 'data-clicks': p.clicks,
    });
    bar.append(el('title', {}, `${new Date(p.t).toLocaleString()}: ${p.clicks}`));
    svg.append(bar);
    if (i % every === 0) {
      svg.append(el('text', { x: x + bw / 2, y: H - 8, class: 'axis', 'text-anchor': 'middle' },
        label(p.t, interval)));
    }
  });
}
