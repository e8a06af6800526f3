/**
 * `cloister demo`: the trust core end to end on embedded defaults, in a temporary directory.
 * Today it shows the sealed container; the key broker and agent steps join it as they land.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { generateHpkeKeyPair, generateKek } from '../seal/keys.js';
import { openSealedFile, readHeader, sealFile, unsealToMemory } from '../seal/node.js';

/** A small but real safetensors file (8-byte header length, JSON header, little-endian f32 data). */
export function tinySafetensors(rows: number, cols: number): Uint8Array {
  const data = new Float32Array(rows * cols).map((_, i) => Math.sin(i) * 0.02);
  const header = JSON.stringify({
    __metadata__: { format: 'pt', made_by: 'cloister demo' },
    'layer.0.weight': { dtype: 'F32', shape: [rows, cols], data_offsets: [0, data.byteLength] },
  });
  const h = new TextEncoder().encode(header.padEnd(Math.ceil(header.length / 8) * 8, ' '));
  const out = new Uint8Array(8 + h.length + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(new Uint8Array(data.buffer), 8 + h.length);
  return out;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex').slice(0, 16);

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('run the trust core end to end on embedded defaults, in a temporary directory')
    .option('--keep', 'keep the temporary directory and print its path')
    .addHelpText('after', '\nExample:\n  npx cloister demo')
    .action(async (o: { keep?: boolean }) => {
      const say = (s: string) => process.stdout.write(`${s}\n`);
      const dir = await mkdtemp(join(tmpdir(), 'cloister-demo-'));
      try {
        const model = tinySafetensors(512, 512);
        await writeFile(join(dir, 'model.safetensors'), model);
        say(`1. made a model: model.safetensors, ${model.length} bytes, sha256 ${sha(model)}…`);

        const kek = generateKek('kbs:///owner/models/kek1');
        const broker = await generateHpkeKeyPair();
        say('2. owner key kbs:///owner/models/kek1 (AES-256 KEK) and a broker HPKE key (X25519) generated');

        await sealFile(join(dir, 'model.safetensors'), join(dir, 'model.sealed'), {
          recipients: [
            { type: 'kbs', uri: 'kbs:///owner/models/kek1', kek: kek.secret },
            { type: 'hpke', publicKey: broker.publicKey },
          ],
          contentType: 'application/vnd.safetensors',
          chunkSize: 64 * 1024,
        });
        const { header, fileSize } = await readHeader(join(dir, 'model.sealed'));
        say(
          `3. sealed: model.sealed, ${fileSize} bytes, ${header.recipients.length} recipients, chunks of ${header.chunkSize} bytes`,
        );
        for (const r of header.recipients) say(`     recipient ${r.type}: ${r.keyId}`);

        const reader = await openSealedFile(join(dir, 'model.sealed'), broker);
        const headLen = Number(new DataView((await reader.read(0, 8)).slice().buffer).getBigUint64(0, true));
        const meta = JSON.parse(new TextDecoder().decode(await reader.read(8, 8 + headLen)));
        await reader.close();
        say(
          `4. random access with the broker key: read only the safetensors header → tensors ${Object.keys(
            meta,
          )
            .filter((k) => k !== '__metadata__')
            .join(', ')}`,
        );

        const tampered = await readFile(join(dir, 'model.sealed'));
        const at = tampered.length - 1000;
        tampered[at] = tampered[at]! ^ 1;
        await writeFile(join(dir, 'tampered.sealed'), tampered);
        try {
          await unsealToMemory(join(dir, 'tampered.sealed'), kek);
          throw new Error('a tampered file was accepted');
        } catch (e) {
          say(`5. one flipped bit is refused: ${(e as Error).message}`);
        }

        const wrong = generateKek();
        try {
          await unsealToMemory(join(dir, 'model.sealed'), wrong);
          throw new Error('a wrong key was accepted');
        } catch (e) {
          say(`6. a key that is not a recipient is refused: ${(e as Error).message}`);
        }

        const plain = await unsealToMemory(join(dir, 'model.sealed'), kek);
        const same = sha(plain) === sha(model);
        say(
          `7. unsealed into memory only (never to disk) with the owner key: sha256 ${sha(plain)}… ${same ? 'matches' : 'DIFFERS'}`,
        );
        if (!same) throw new Error('round trip mismatch');
        say('demo complete: sealed container verified end to end');
      } finally {
        if (o.keep) say(`files kept in ${dir}`);
        else await rm(dir, { recursive: true, force: true });
      }
    });
}
