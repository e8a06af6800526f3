import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

// The log library is verified in browsers too (a web console checking the broker's log): Web Crypto and
// Uint8Array only, no Node built-ins, no Buffer.
describe('src/translog is browser-safe', () => {
  it('has no node: imports and no Buffer outside node.ts', () => {
    const files = readdirSync('src/translog')
      .filter((f) => f.endsWith('.ts') && f !== 'node.ts')
      .map((f) => path.join('src/translog', f));
    expect(files.length).toBeGreaterThan(5);
    const offenders = files.filter((f) => {
      const text = readFileSync(f, 'utf8');
      return /from\s*['"]node:|import\s*\(\s*['"]node:|\bBuffer\b|\bprocess\./.test(text);
    });
    expect(offenders).toEqual([]);
  });
});
