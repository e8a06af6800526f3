/**
 * The systemd units in deploy/systemd start real commands: every verb and flag of each ExecStart is
 * one the CLI defines (read from the same commander definitions `cloister` builds, without starting
 * it), every mandatory option is given, and the hardening the units promise in docs/operations.md is
 * there. A renamed or removed flag fails here instead of in an operator's journal.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { registerAgent } from '../../src/cli/agent.js';
import { registerKbs } from '../../src/cli/kbs.js';
import { registerServe } from '../../src/cli/serve.js';

const DIR = 'deploy/systemd';
const UNITS = readdirSync(DIR).filter((f) => f.endsWith('.service'));

function program(): Command {
  const p = new Command('cloister');
  registerKbs(p);
  registerAgent(p);
  registerServe(p);
  return p;
}

/** `Key=value` lines of a unit (comments and section headers left out), in order. */
function directives(text: string): [string, string][] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#') && !l.startsWith('['))
    .map((l) => {
      const i = l.indexOf('=');
      return [l.slice(0, i), l.slice(i + 1)];
    });
}

/** The values of every `key=` line. */
function value(text: string, key: string): string[] {
  return directives(text)
    .filter(([k]) => k === key)
    .map(([, v]) => v);
}

/** The command an ExecStart names: its verbs resolved to a commander command, and the flags given. */
function parseExecStart(line: string, root: Command): { path: string[]; command: Command; flags: string[] } {
  const words = line.split(/\s+/).filter((w) => w !== '');
  expect(words[0], 'the installed binary').toBe('/usr/local/bin/cloister');
  let command = root;
  const path: string[] = [];
  let i = 1;
  for (; i < words.length && !words[i]!.startsWith('-'); i++) {
    const sub = command.commands.find((c) => c.name() === words[i]);
    if (!sub) throw new Error(`cloister ${[...path, words[i]].join(' ')}: no such command`);
    command = sub;
    path.push(words[i]!);
  }
  // Flags are `--name`; their values and `$VARIABLES` (flags the operator adds) are not checked.
  const flags = words.slice(i).filter((w) => w.startsWith('--'));
  return { path, command, flags };
}

describe.each(UNITS)('%s', (unit) => {
  const text = readFileSync(join(DIR, unit), 'utf8');

  it('starts a command the CLI defines, with flags it defines and every mandatory one', () => {
    const execs = value(text, 'ExecStart');
    expect(execs).toHaveLength(1);
    const { path, command, flags } = parseExecStart(execs[0]!, program());
    expect(path.length).toBeGreaterThan(0);
    const known = new Set(command.options.map((o) => o.long));
    expect(flags.filter((f) => !known.has(f))).toEqual([]);
    const mandatory = command.options.filter((o) => o.mandatory).map((o) => o.long);
    expect(mandatory.filter((f) => !flags.includes(f!))).toEqual([]);
  });

  it('is hardened and restarts on failure', () => {
    for (const [key, v] of [
      ['NoNewPrivileges', 'yes'],
      ['ProtectSystem', 'strict'],
      ['ProtectHome', 'yes'],
      ['PrivateTmp', 'yes'],
      ['Restart', 'on-failure'],
      ['LimitCORE', '0'],
      ['UMask', '0077'],
    ]) {
      expect([key, value(text, key!)]).toEqual([key, [v]]);
    }
    expect(value(text, 'User')).toHaveLength(1);
  });
});

describe('the unit set', () => {
  it('ships the agent, the broker and the inference server', () => {
    expect(UNITS.sort()).toEqual([
      'cloister-agent.service',
      'cloister-kbs.service',
      'cloister-serve@.service',
    ]);
  });

  it('the agent socket is where the docs and --help say it is', () => {
    const agent = readFileSync(join(DIR, 'cloister-agent.service'), 'utf8');
    expect(agent).toMatch(/--socket \/run\/cloister\/agent\.sock/);
    expect(value(agent, 'RuntimeDirectory')).toEqual(['cloister']);
  });

  it('the broker writes only its state and cache directories', () => {
    const kbs = readFileSync(join(DIR, 'cloister-kbs.service'), 'utf8');
    expect(value(kbs, 'StateDirectory')).toEqual(['cloister-kbs']);
    expect(value(kbs, 'CacheDirectory')).toEqual(['cloister-kbs']);
    expect(value(kbs, 'ReadWritePaths')).toEqual([]);
  });
});
