/**
 * A training report: one self-contained HTML page (no scripts, no external assets, so it can be mailed
 * or archived beside the receipt) with the loss curve as inline SVG next to a table of the receipt's
 * facts. Every string from the receipt or the metrics is escaped: a job name is data, never markup.
 * The page is well-formed XML as well as HTML, so XML tools can read it too. Web-standard.
 */
import type { TrainingFacts } from '../tee/training-receipt.js';

/** One line of metrics.jsonl: the step and whatever was measured at it. */
export interface MetricPoint {
  step: number;
  loss?: number;
  heldout_loss?: number;
}

/** What verifying the receipt found, shown as a banner above the facts. */
export interface ReportVerdict {
  /** "affirming", "warning", "contraindicated", "none". */
  status: string;
  insecure: boolean;
  /** E.g. "signature and key binding verify; TEE evidence sample, warning; EAR not checked". */
  summary: string;
}

/** At most this many points per series are drawn; longer series keep every k-th point and the last. */
export const MAX_SERIES_POINTS = 2000;

const W = 640;
const H = 360;
const M = { left: 64, right: 16, top: 16, bottom: 48 };

const ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Control characters other than tab and newline, and the non-characters: not allowed in XML 1.0 at all. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point.
const NOT_XML = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g;

/** Text or an attribute value, escaped for HTML and XML alike (characters XML forbids become U+FFFD). */
export function escapeText(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ESC[c]!).replace(NOT_XML, '\ufffd');
}

/** The points of a series that get drawn (see MAX_SERIES_POINTS). */
export function decimate<T>(points: T[], max = MAX_SERIES_POINTS): T[] {
  if (points.length <= max) return points;
  const k = Math.ceil(points.length / max);
  const out = points.filter((_, i) => i % k === 0);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]!);
  return out;
}

/** Round tick values covering [lo, hi]: steps of 1, 2 or 5 × 10^k, about `count` of them. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
    out.push(Number(v.toPrecision(12)));
  return out;
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

const xy = (v: number) => v.toFixed(1);

function range(values: number[]): [number, number] {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi === lo) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  return [lo, hi];
}

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** The loss curve: training loss as a line, held-out loss as points, with axes, ticks and labels. */
export function renderLossSvg(metrics: MetricPoint[]): string {
  const train = decimate(metrics.filter((m) => finite(m.step) && finite(m.loss)));
  const held = decimate(metrics.filter((m) => finite(m.step) && finite(m.heldout_loss)));
  const head =
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" ` +
    `role="img" aria-labelledby="loss-title"><title id="loss-title">Loss by optimizer step</title>`;
  if (train.length === 0 && held.length === 0)
    return `${head}<text x="${W / 2}" y="${H / 2}" text-anchor="middle" class="empty">no metrics recorded</text></svg>`;
  const [x0, x1] = range([...train, ...held].map((m) => m.step));
  const [y0, y1] = range([...train.map((m) => m.loss!), ...held.map((m) => m.heldout_loss!)]);
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const sx = (v: number) => M.left + ((v - x0) / (x1 - x0)) * pw;
  const sy = (v: number) => M.top + ph - ((v - y0) / (y1 - y0)) * ph;
  const parts: string[] = [head];
  const bottom = M.top + ph;
  parts.push(
    `<g class="axes"><line x1="${M.left}" y1="${bottom}" x2="${M.left + pw}" y2="${bottom}"/>`,
    `<line x1="${M.left}" y1="${M.top}" x2="${M.left}" y2="${bottom}"/></g>`,
  );
  parts.push('<g class="ticks x">');
  for (const t of niceTicks(x0, x1, 6)) {
    const x = xy(sx(t));
    parts.push(
      `<line x1="${x}" y1="${bottom}" x2="${x}" y2="${bottom + 5}"/>`,
      `<text x="${x}" y="${bottom + 18}" text-anchor="middle">${escapeText(fmt(t))}</text>`,
    );
  }
  parts.push('</g><g class="ticks y">');
  for (const t of niceTicks(y0, y1, 5)) {
    const y = xy(sy(t));
    parts.push(
      `<line class="grid" x1="${M.left}" y1="${y}" x2="${M.left + pw}" y2="${y}"/>`,
      `<line x1="${M.left - 5}" y1="${y}" x2="${M.left}" y2="${y}"/>`,
      `<text x="${M.left - 8}" y="${y}" text-anchor="end" dominant-baseline="middle">${escapeText(fmt(t))}</text>`,
    );
  }
  parts.push('</g>');
  parts.push(
    `<text class="label" x="${M.left + pw / 2}" y="${H - 8}" text-anchor="middle">step</text>`,
    `<text class="label" x="14" y="${M.top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 ${M.top + ph / 2})">loss</text>`,
  );
  if (train.length > 0)
    parts.push(
      `<polyline class="train" fill="none" points="${train.map((m) => `${xy(sx(m.step))},${xy(sy(m.loss!))}`).join(' ')}"/>`,
    );
  if (held.length > 0) {
    parts.push('<g class="heldout">');
    for (const m of held)
      parts.push(`<circle cx="${xy(sx(m.step))}" cy="${xy(sy(m.heldout_loss!))}" r="3"/>`);
    parts.push('</g>');
  }
  // Legend, top right.
  const lx = M.left + pw - 150;
  parts.push(
    `<g class="legend"><line class="train" x1="${lx}" y1="${M.top + 10}" x2="${lx + 20}" y2="${M.top + 10}"/>`,
    `<text x="${lx + 26}" y="${M.top + 10}" dominant-baseline="middle">training loss</text>`,
    `<circle class="heldout" cx="${lx + 10}" cy="${M.top + 28}" r="3"/>`,
    `<text x="${lx + 26}" y="${M.top + 28}" dominant-baseline="middle">held-out loss</text></g>`,
  );
  parts.push('</svg>');
  return parts.join('');
}

function row(name: string, valueHtml: string): string {
  return `<tr><th scope="row">${escapeText(name)}</th><td>${valueHtml}</td></tr>`;
}

const code = (s: string) => `<code>${escapeText(s)}</code>`;
const list = (items: string[]) =>
  items.length === 0
    ? '<span class="none">none</span>'
    : `<ul>${items.map((i) => `<li>${i}</li>`).join('')}</ul>`;

/** At most this many checkpoints are listed one by one; the rest are counted. */
const MAX_CHECKPOINT_ROWS = 50;

function duration(start: string, end: string): string {
  const ms = Date.parse(end) - Date.parse(start);
  if (!Number.isFinite(ms) || ms < 0) return '';
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return ` (${h > 0 ? `${h} h ` : ''}${h > 0 || m > 0 ? `${m} min ` : ''}${s % 60} s)`;
}

/** The receipt's facts as table rows. */
function factRows(p: TrainingFacts & { attestation?: { kind: string; ear: string | null } }): string[] {
  const t = p.trainer;
  const trainer =
    t.kind === 'builtin'
      ? `built-in ${code(t.name)} — ${escapeText(t.software.name)} ${escapeText(t.software.version)}, digest ${code(t.software.digest)}`
      : `command ${code(t.argv.join(' '))}<br/>program ${code(t.program.path)} sha256 ${code(t.program.sha256)}${list(
          t.files.map((f) => `${code(f.path)} sha256 ${code(f.sha256)}`),
        )}`;
  const input = (i: { name: string; kbs: string; sealedSha256: string }) =>
    `${escapeText(i.name)} — key ${code(i.kbs)}, sealed sha256 ${code(i.sealedSha256)}`;
  const cps = p.checkpoints;
  const cpItems = cps
    .slice(0, MAX_CHECKPOINT_ROWS)
    .map((c) => `#${c.number} at step ${c.step}, sealed sha256 ${code(c.sealedSha256)}`);
  if (cps.length > MAX_CHECKPOINT_ROWS) {
    const last = cps[cps.length - 1]!;
    cpItems.push(
      `… ${cps.length - MAX_CHECKPOINT_ROWS - 1} more …`,
      `#${last.number} at step ${last.step}, sealed sha256 ${code(last.sealedSha256)}`,
    );
  }
  const metrics = Object.entries(p.metrics).map(([k, v]) => `${escapeText(k)} = ${escapeText(fmt(v))}`);
  return [
    row('job', escapeText(p.manifest.name)),
    row('manifest sha256', code(p.manifest.sha256)),
    row('trainer', trainer),
    row('hyperparameters', code(JSON.stringify(p.hyperparameters))),
    row('seed', escapeText(String(p.seed))),
    row('inputs', list(p.inputs.map(input))),
    ...(p.startModel ? [row('start model', input(p.startModel))] : []),
    row(
      'outputs',
      list(
        p.outputs.map(
          (o) =>
            `${escapeText(o.file)} — sealed sha256 ${code(o.sealedSha256)}, sealed to ${o.recipients.map(code).join(', ') || 'nobody'}`,
        ),
      ),
    ),
    row('checkpoints', `${cps.length} in a hash chain${list(cpItems)}`),
    row('final metrics', list(metrics)),
    row(
      'TEE',
      `${escapeText(p.tee.kind)}${p.tee.insecure ? ' <strong class="insecure">INSECURE sample TEE: proves nothing</strong>' : ''}`,
    ),
    row('started', escapeText(p.startedAt)),
    row('ended', `${escapeText(p.endedAt)}${escapeText(duration(p.startedAt, p.endedAt))}`),
    ...(p.attestation
      ? [
          row(
            'attestation',
            `${escapeText(p.attestation.kind)} evidence binds the receipt key; ${p.attestation.ear ? "the key broker's EAR token is included" : 'no EAR token'}`,
          ),
        ]
      : []),
  ];
}

const STYLE = `
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1f24; }
h1 { font-size: 1.4rem; }
.layout { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
.verdict { padding: 0.5rem 0.8rem; border-radius: 4px; background: #e6f4ea; }
.verdict.warning, .verdict.none { background: #fff4e0; }
.verdict.contraindicated { background: #fde7e9; }
table { border-collapse: collapse; max-width: 60rem; }
th, td { text-align: left; vertical-align: top; padding: 0.3rem 0.6rem; border-bottom: 1px solid #d0d7de; }
th { white-space: nowrap; }
code { font-size: 0.85em; word-break: break-all; }
ul { margin: 0; padding-left: 1.2rem; }
.insecure { color: #b3261e; }
.none { color: #57606a; }
svg { font-size: 11px; }
svg .axes line, svg .ticks line { stroke: #57606a; }
svg .ticks line.grid { stroke: #eaeef2; }
svg polyline.train, svg .legend line.train { stroke: #0969da; stroke-width: 1.5; fill: none; }
svg .heldout circle, svg circle.heldout { fill: #cf222e; }
svg text { fill: #1b1f24; }
`;

/**
 * The report page for a training receipt's predicate and its metrics (metrics.jsonl lines: `step`,
 * `loss`, `heldout_loss`); `verdict`, when the receipt was verified, heads the page.
 */
export function renderReport(
  predicate: TrainingFacts & { attestation?: { kind: string; ear: string | null } },
  metrics: MetricPoint[],
  verdict?: ReportVerdict,
): string {
  const name = escapeText(predicate.manifest.name);
  const banner = verdict
    ? `<p class="verdict ${escapeText(verdict.status)}">${escapeText(verdict.summary)}${
        verdict.insecure ? ' <strong class="insecure">(INSECURE sample TEE)</strong>' : ''
      }</p>`
    : '<p class="verdict none">This report was made without verifying the receipt.</p>';
  return [
    '<!DOCTYPE html>',
    '<html xmlns="http://www.w3.org/1999/xhtml" lang="en">',
    `<head><meta charset="utf-8"/><title>Training receipt: ${name}</title><style>${STYLE}</style></head>`,
    '<body>',
    `<h1>Training receipt: ${name}</h1>`,
    banner,
    '<div class="layout">',
    `<figure>${renderLossSvg(metrics)}<figcaption>Loss by optimizer step (${metrics.filter((m) => finite(m.loss)).length} training, ${metrics.filter((m) => finite(m.heldout_loss)).length} held-out measurements)</figcaption></figure>`,
    `<table><tbody>${factRows(predicate).join('')}</tbody></table>`,
    '</div>',
    '</body>',
    '</html>',
    '',
  ].join('\n');
}

/** Reads metrics.jsonl: one JSON object per line with a numeric `step`; other lines are skipped. */
export function parseMetricsJsonl(text: string): MetricPoint[] {
  const out: MetricPoint[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      continue;
    }
    if (typeof v !== 'object' || v === null || !finite((v as MetricPoint).step)) continue;
    const m = v as Record<string, unknown>;
    out.push({
      step: m.step as number,
      ...(finite(m.loss) ? { loss: m.loss } : {}),
      ...(finite(m.heldout_loss) ? { heldout_loss: m.heldout_loss } : {}),
    });
  }
  return out;
}
