/**
 * A minimal Prometheus registry (text exposition format 0.0.4): counters and one latency histogram,
 * enough for release rates, refusals by reason and attestation latency without a dependency.
 *
 * Every metric is declared before use, with the label sets known up front: /metrics then shows each
 * one (HELP, TYPE and zeros) from the start, so dashboards and `rate()` work before the first event
 * and a scrape can tell "nothing happened" from "not exported".
 */
type Labels = Record<string, string>;

const key = (l: Labels) =>
  Object.entries(l)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, '_')}"`)
    .join(',');

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

interface Histogram {
  help: string;
  counts: Map<string, number[]>;
  sums: Map<string, number>;
}

export class Metrics {
  private readonly counters = new Map<string, { help: string; values: Map<string, number> }>();
  private readonly hist = new Map<string, Histogram>();

  /** Declares a counter; each of `zeros` (default: the one without labels) is shown as 0 until counted. */
  counter(name: string, help: string, zeros: Labels[] = [{}]): void {
    this.counters.set(name, { help, values: new Map(zeros.map((l) => [key(l), 0])) });
  }

  histogram(name: string, help: string, zeros: Labels[] = [{}]): void {
    const h: Histogram = { help, counts: new Map(), sums: new Map() };
    for (const l of zeros) {
      h.counts.set(key(l), new Array(BUCKETS.length + 1).fill(0));
      h.sums.set(key(l), 0);
    }
    this.hist.set(name, h);
  }

  inc(name: string, labels: Labels = {}, by = 1): void {
    const c = this.counters.get(name);
    if (!c) throw new Error(`metric ${name} was not declared`);
    const k = key(labels);
    c.values.set(k, (c.values.get(k) ?? 0) + by);
  }

  observe(name: string, seconds: number, labels: Labels = {}): void {
    const h = this.hist.get(name);
    if (!h) throw new Error(`metric ${name} was not declared`);
    const k = key(labels);
    const counts = h.counts.get(k) ?? new Array(BUCKETS.length + 1).fill(0);
    const i = BUCKETS.findIndex((b) => seconds <= b);
    counts[i < 0 ? BUCKETS.length : i]++;
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
        BUCKETS.forEach((b, i) => {
          acc += counts[i]!;
          out.push(`${name}_bucket{${sep}le="${b}"} ${acc}`);
        });
        acc += counts[BUCKETS.length]!;
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
