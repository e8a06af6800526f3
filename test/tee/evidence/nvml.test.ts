import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { detectKind } from '../../../src/attest/registry.js';
import type { CommandRunner } from '../../../src/tee/evidence/fs.js';
import { nodeFs } from '../../../src/tee/evidence/node.js';
import {
  detectGpus,
  NvattestGpuAttester,
  NvmlUnavailableGpuAttester,
  parseNvattestOutput,
} from '../../../src/tee/evidence/nvml.js';
import { toHex, utf8 } from '../../../src/util/bytes.js';
import { devDir, tempDir, VECTOR_ENTRY } from './helpers.js';

/** A PATH folder holding (empty) programs with these names: detection only checks they exist. */
function binDir(...names: string[]): string {
  const dir = path.join(tempDir(), 'bin');
  mkdirSync(dir);
  for (const n of names) writeFileSync(path.join(dir, n), '');
  return dir;
}

/**
 * Answers like nvidia-smi and nvattest would: `cc` is what conf-compute -f reports, and nvattest returns
 * `gpus` entries all answering the nonce it was given (nvattest takes one nonce for all GPUs).
 */
function fakeRunner(cc: 'ON' | 'OFF', gpus: number, calls: string[][] = []): CommandRunner {
  return async (file, args) => {
    calls.push([path.basename(file), ...args]);
    if (file.endsWith('nvidia-smi')) {
      if (args[1] === '-f') return { code: 0, stdout: `CC status: ${cc}\n`, stderr: '' };
      if (args[1] === '-grs') return { code: 0, stdout: 'CC GPUs Ready State: Ready\n', stderr: '' };
    }
    if (file.endsWith('nvattest')) {
      const nonce = args[args.indexOf('--nonce') + 1]!;
      const evidences = Array.from({ length: gpus }, () => ({ ...VECTOR_ENTRY, nonce }));
      return {
        code: 0,
        stdout: JSON.stringify({ result_code: 0, result_message: 'Ok', evidences }),
        stderr: '',
      };
    }
    return { code: 1, stdout: '', stderr: 'unexpected' };
  };
}

const nonce = (b: number) => new Uint8Array(32).fill(b);

describe('detectGpus', () => {
  it('no /dev/nvidia<N>: no GPU, with the reason', async () => {
    const devRoot = devDir('nvidiactl', 'null');
    const d = await detectGpus({ fs: nodeFs, devRoot });
    expect(d.devices).toEqual([]);
    expect(d.attester).toBeUndefined();
    expect(d.reasons).toEqual([`GPU: no ${devRoot}/nvidia<N> device nodes: no NVIDIA GPU`]);
  });

  it('GPUs without nvidia-smi or nvattest: found, CC mode unknown, collection unavailable', async () => {
    const devRoot = devDir('nvidia1', 'nvidia0', 'nvidiactl', 'nvidia-uvm');
    const d = await detectGpus({ fs: nodeFs, devRoot, run: fakeRunner('ON', 2), path: binDir() });
    expect(d.devices.map((g) => g.path)).toEqual([`${devRoot}/nvidia0`, `${devRoot}/nvidia1`]);
    expect(d.ccEnabled).toBeUndefined();
    expect(d.reasons.join('\n')).toMatch(/nvidia-smi not found on PATH/);
    expect(d.reasons.at(-1)).toMatch(/nvattest not found on PATH.*nvml-unavailable/);
    expect(d.attester).toBeInstanceOf(NvmlUnavailableGpuAttester);
    await expect(d.attester!.collect([nonce(1), nonce(2)])).rejects.toMatchObject({
      code: 'nvml-unavailable',
      message: expect.stringMatching(/2 GPU\(s\).*nvattest/),
    });
  });

  it('CC off (nvidia-smi conf-compute -f): GPUs found but not attestable', async () => {
    const calls: string[][] = [];
    const d = await detectGpus({
      fs: nodeFs,
      devRoot: devDir('nvidia0'),
      run: fakeRunner('OFF', 1, calls),
      path: binDir('nvidia-smi', 'nvattest'),
    });
    expect(d.ccEnabled).toBe(false);
    expect(d.attester).toBeUndefined();
    expect(d.reasons.join('\n')).toMatch(/CC status OFF[\s\S]*confidential computing is off/);
    expect(calls).toEqual([['nvidia-smi', 'conf-compute', '-f']]);
  });

  it('CC on with nvattest: collects one evidence per GPU, each answering its own nonce', async () => {
    const calls: string[][] = [];
    const d = await detectGpus({
      fs: nodeFs,
      devRoot: devDir('nvidia0', 'nvidia1'),
      run: fakeRunner('ON', 2, calls),
      path: `/nonexistent:${binDir('nvidia-smi', 'nvattest')}`,
    });
    expect(d).toMatchObject({ ccEnabled: true, ready: true });
    expect(d.attester).toBeInstanceOf(NvattestGpuAttester);
    const ev = await d.attester!.collect([nonce(1), nonce(2)]);
    expect(ev).toHaveLength(2);
    for (const [i, e] of ev.entries()) {
      expect(detectKind(e)).toBe('nvidia');
      const [entry] = JSON.parse(utf8.decode(e));
      expect(entry).toEqual({ ...VECTOR_ENTRY, nonce: toHex(nonce(i + 1)) });
    }
    expect(calls.filter((c) => c[0] === 'nvattest').map((c) => c[c.indexOf('--nonce') + 1])).toEqual([
      toHex(nonce(1)),
      toHex(nonce(2)),
    ]);
  });
});

describe('NvattestGpuAttester', () => {
  it('refuses evidence for another nonce, a wrong GPU count and bad nonces', async () => {
    const wrongNonce: CommandRunner = async () => ({
      code: 0,
      stdout: JSON.stringify({ result_code: 0, evidences: [{ ...VECTOR_ENTRY, nonce: toHex(nonce(9)) }] }),
      stderr: '',
    });
    await expect(new NvattestGpuAttester(wrongNonce, 1).collect([nonce(1)])).rejects.toMatchObject({
      code: 'gpu-nonce-mismatch',
    });
    await expect(
      new NvattestGpuAttester(fakeRunner('ON', 1), 2).collect([nonce(1), nonce(2)]),
    ).rejects.toMatchObject({ code: 'gpu-count-mismatch' });
    await expect(
      new NvattestGpuAttester(fakeRunner('ON', 1), 1).collect([new Uint8Array(16)]),
    ).rejects.toMatchObject({
      code: 'bad-gpu-nonce',
    });
  });

  it('reports nvattest failures and unparsable output', () => {
    expect(() => parseNvattestOutput('{"result_code": 14, "result_message": "NVML error"}')).toThrow(
      /nvattest collect-evidence failed: NVML error/,
    );
    expect(() => parseNvattestOutput('not json')).toThrow(/no JSON/);
    expect(() => parseNvattestOutput('{"result_code": 0, "evidences": [{"arch": 1}]}')).toThrow(
      /no list of \{arch, nonce, evidence, certificate\}/,
    );
  });
});
