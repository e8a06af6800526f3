import { expect, it, vi } from 'vitest';
import { cliTimeouts, cloister } from './run.js';

vi.setConfig(cliTimeouts(120_000));

/** Every leaf command with its `--help` text, found by walking the command tree. */
function leaves(path: string[] = []): [string, string][] {
  const out = cloister([...path, '--help']).stdout.toString();
  const section = out.split(/\nCommands:\n/)[1];
  if (!section) return [[path.join(' '), out]];
  const names = section
    .split('\n')
    .map((l) => /^ {2}([a-z][\w-]*)/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined && n !== 'help');
  return names.flatMap((n) => leaves([...path, n]));
}

it('every command has --help with an example', () => {
  const all = leaves();
  expect(all.length).toBeGreaterThan(15);
  expect(all.filter(([, help]) => !/Example/.test(help)).map(([name]) => name)).toEqual([]);
});

it('lists the top-level verbs in their order, run among them (main.ts registers every one)', () => {
  const out = cloister(['--help']).stdout.toString();
  const verbs = (out.split(/\nCommands:\n/)[1] ?? '')
    .split('\n')
    .map((l) => /^ {2}([a-z][\w-]*)/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined);
  expect(verbs).toEqual([
    'keygen',
    'seal',
    'unseal',
    'inspect',
    'verify',
    'collateral',
    'kbs',
    'demo',
    'log',
    'agent',
    'run',
    'serve',
    'chat',
    'model',
    'receipt',
    'train',
    'lora',
    'help',
  ]);
});
