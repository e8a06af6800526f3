/**
 * A minimal Prometheus registry (text exposition format 0.0.4): counters and one latency histogram,
 * enough for release rates, refusals by reason and attestation latency without a dependency.
 */
type Labels = Record<string, string>;

const key = (l: Labels) =>
  Object.entries(l)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, '_')}"`)
    .join(',');

export class Metrics {
  private readonly counters = new Map<string, { help: string; values: Map<string, number> }>();
  private readonly hist = new Map<
    string,
    { help: string; buckets: number[]; counts: Map<string, number[]>; sums: Map<string, number> }
  >();

  inc(name: string, help: string, labels: Labels = {}, by = 1): void {
    let c = this.counters.get(name);
    if (!c) {
      c = { help, values: new Map() };
      this.counters.set(name, c);
    }
    const k = key(labels);
    c.values.set(k, (c.values.get(k) ?? 0) + by);
  }

  observe(name: string, help: string, seconds: number, labels: Labels = {}): void {
    let h = this.hist.get(name);
    if (!h) {
      h = {
        help,
        buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
        counts: new Map(),
        sums: new Map(),
      };
      this.hist.set(name, h);
    }
    const k = key(labels);
    const counts = h.counts.get(k) ?? new Array(h.buckets.length + 1).fill(0);
    const i = h.buckets.findIndex((b) => seconds <= b);
    counts[i < 0 ? h.buckets.length : i]++;
    h.counts.set(k, counts);
    h.sums.set(k, (h.sums.get(k) ?? 0) + seconds);
  }

  render(): string {
    const out: string[] = [];
    for (const [name, c] of this.counters) {
      out.push(`# HELP ${name} ${c.help}`, `# TYPE ${name} counter`);
      for (const [k, v] of c.values) out.push(`${name}${k ? `{${k}}` : ''} ${v}`);
    }
    for (const [name, h] of this.hist) {
      out.push(`# HELP ${name} ${h.help}`, `# TYPE ${name} histogram`);
      for (const [k, counts] of h.counts) {
        let acc = 0;
        const sep = k ? `${k},` : '';
        h.buckets.forEach((b, i) => {
          acc += counts[i]!;
          out.push(`${name}_bucket{${sep}le="${b}"} ${acc}`);
        });
        acc += counts[h.buckets.length]!;
        out.push(
          `${name}_bucket{${sep}le="+Inf"} ${acc}`,
          `${name}_sum${k ? `{${k}}` : ''} ${h.sums.get(k)}`,
          `${name}_count${k ? `{${k}}` : ''} ${acc}`,
        );
      }
    }
    return `${out.join('\n')}\n`;
  }
}
