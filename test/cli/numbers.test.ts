/** Numeric options: a whole number or a one-line refusal, never NaN carried into the command. */
import { describe, expect, it, vi } from 'vitest';
import { integerOption } from '../../src/cli/numbers.js';
import { cliTimeouts, cloister } from './run.js';

vi.setConfig(cliTimeouts());

describe('integerOption', () => {
  it('accepts whole numbers from the minimum up', () => {
    expect(integerOption('0', '--n', 0)).toBe(0);
    expect(integerOption(' 42 ', '--n', 1)).toBe(42);
  });
  it('refuses anything else, naming the option and the value', () => {
    for (const v of [
      'abc',
      '',
      ' ',
      '1.5',
      '2x',
      '-1',
      'NaN',
      'Infinity',
      '1e400',
      '9007199254740993',
      '0x10',
      '1e3',
      '+5',
      '0b1',
    ])
      expect(() => integerOption(v, '--n', 0)).toThrow(`--n must be an integer ≥ 0, not '${v}'`);
  });
  it('refuses a value above the maximum, naming the range', () => {
    expect(integerOption('65535', '--port', 0, 65535)).toBe(65535);
    expect(() => integerOption('65536', '--port', 0, 65535)).toThrow(
      "--port must be an integer from 0 to 65535, not '65536'",
    );
  });
});

describe('numeric options of commands that reach the network', () => {
  it('are refused before anything is sent, as usage errors (exit 64)', () => {
    for (const [args, message] of [
      [
        ['chat', '--url', 'http://127.0.0.1:9', '--max-tokens', 'abc'],
        "--max-tokens must be an integer ≥ 1, not 'abc'",
      ],
      [
        ['run', '--kbs', 'http://127.0.0.1:9', '--tee', 'sample', '--retries', 'abc', '--', 'true'],
        "--retries must be an integer ≥ 1, not 'abc'",
      ],
      [
        ['run', '--kbs', 'http://127.0.0.1:9', '--tee', 'sample', '--retry-delay-ms', '-5', '--', 'true'],
        "--retry-delay-ms must be an integer ≥ 0, not '-5'",
      ],
      [['kbs', 'serve', '--dev', '--port', 'abc'], "--port must be an integer from 0 to 65535, not 'abc'"],
      [
        ['kbs', 'serve', '--dev', '--port', '70000'],
        "--port must be an integer from 0 to 65535, not '70000'",
      ],
    ] as const) {
      const r = cloister([...args]);
      expect(r.code).toBe(64);
      expect(r.stderr).toBe(`cloister: ${message}\n`);
    }
  });
});
