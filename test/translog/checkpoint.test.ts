import { describe, expect, it } from 'vitest';
import {
  checkpointText,
  parseCheckpoint,
  signCheckpoint,
  verifyCheckpoint,
} from '../../src/translog/checkpoint.js';
import { TranslogError } from '../../src/translog/errors.js';
import {
  ed25519KeyId,
  generateNoteSigner,
  parseNote,
  parseVerifierKey,
  signerFromJwk,
  signNote,
  toBase64,
  verifyNote,
  vkeyOf,
} from '../../src/translog/note.js';
import { fromBase64 } from '../../src/util/bytes.js';

// The example of c2sp.org/signed-note ("Verifier keys / Example").
const SPEC_VKEY = 'example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k';
const SPEC_NOTE =
  'This is an example message.\n\n' +
  '\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n';

async function code(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).toBeInstanceOf(TranslogError);
    return (e as TranslogError).code;
  }
  throw new Error('expected a TranslogError');
}

describe('C2SP signed notes', () => {
  it('verifies the example of the spec with its vkey, and recomputes its key id', async () => {
    const v = await parseVerifierKey(SPEC_VKEY);
    expect(v.name).toBe('example.com/foo');
    expect(v.keyId).toBe(0x530d903a);
    expect(await ed25519KeyId(v.name, v.publicKey)).toBe(0x530d903a);
    expect(await verifyNote(SPEC_NOTE, [v])).toEqual({
      text: 'This is an example message.\n',
      signedBy: ['example.com/foo'],
    });
  });

  it('refuses the spec example once its text or signature is changed', async () => {
    const v = await parseVerifierKey(SPEC_VKEY);
    expect(await code(verifyNote(SPEC_NOTE.replace('example message', 'example massage'), [v]))).toBe(
      'bad-signature',
    );
    const sig = SPEC_NOTE.split(' ').pop()!.trim();
    const raw = fromBase64(sig);
    raw[10]! ^= 1;
    expect(await code(verifyNote(SPEC_NOTE.replace(sig, toBase64(raw)), [v]))).toBe('bad-signature');
  });

  it('ignores signatures of other keys, and refuses a note no trusted key signed', async () => {
    const a = await generateNoteSigner('a.example/log');
    const b = await generateNoteSigner('b.example/log');
    const note = await signNote('hello\n', [b.signer, a.signer]);
    expect((await verifyNote(note, [await parseVerifierKey(a.vkey)])).signedBy).toEqual(['a.example/log']);
    expect(
      await code(verifyNote(await signNote('hello\n', [b.signer]), [await parseVerifierKey(a.vkey)])),
    ).toBe('unknown-key');
    // Same name, other key: a different key id, so it is not "the" key and does not count.
    const impostor = await generateNoteSigner('a.example/log');
    expect(
      await code(verifyNote(await signNote('hello\n', [impostor.signer]), [await parseVerifierKey(a.vkey)])),
    ).toBe('unknown-key');
  });

  it('refuses malformed notes and keys', async () => {
    const a = await generateNoteSigner('a.example/log');
    const note = await signNote('hello\n', [a.signer]);
    expect(await code(() => parseNote(note.replace('\n\n', '\n')))).toBe('bad-note');
    expect(await code(() => parseNote(note.slice(0, -1)))).toBe('bad-note');
    expect(await code(() => parseNote(note.replace('hello', 'he\tllo')))).toBe('bad-note');
    expect(await code(() => parseNote(note.replace('\u2014', '-')))).toBe('bad-note');
    expect(await code(() => parseNote(note.replace(/ (\S+)\n$/, ' $1!\n')))).toBe('bad-note');
    expect(await code(() => parseNote(new Uint8Array([0x68, 0xff, 0x0a, 0x0a])))).toBe('bad-note');
    expect(await code(parseVerifierKey('a.example/log+00000000+' + a.vkey.split('+')[2]))).toBe('bad-key');
    expect(await code(parseVerifierKey(a.vkey.replace('+A', '+B')))).toBe('bad-key');
    expect(await code(parseVerifierKey('no-plus'))).toBe('bad-key');
    expect(await code(generateNoteSigner('has space'))).toBe('bad-key');
    expect(await code(generateNoteSigner('has+plus'))).toBe('bad-key');
    expect(await code(signerFromJwk({ kty: 'EC', crv: 'P-256' }, 'x'))).toBe('bad-key');
  });

  it('a signer read back from its JWK signs notes its vkey verifies', async () => {
    const g = await generateNoteSigner('broker.example/log');
    const s = await signerFromJwk(JSON.parse(JSON.stringify(g.jwk)));
    expect(vkeyOf(s)).toBe(g.vkey);
    const note = await signNote('x\n', [s]);
    await verifyNote(note, [await parseVerifierKey(g.vkey)]);
  });
});

describe('C2SP checkpoints', () => {
  const root = new Uint8Array(32).map((_, i) => i);

  it('has the three-line text and round-trips through sign, parse and verify', async () => {
    const g = await generateNoteSigner('broker.example/log');
    const cp = { origin: 'broker.example/log', size: 1234, root };
    expect(checkpointText(cp)).toBe(`broker.example/log\n1234\n${toBase64(root)}\n`);
    const note = await signCheckpoint(cp, g.signer);
    expect(note.startsWith(checkpointText(cp) + '\n\u2014 broker.example/log ')).toBe(true);
    expect(parseCheckpoint(note)).toEqual(cp);
    expect(await verifyCheckpoint(note, g.vkey)).toEqual(cp);
  });

  it('refuses every tampered field: origin, size, root, extension, key id, signature', async () => {
    const g = await generateNoteSigner('broker.example/log');
    const note = await signCheckpoint({ origin: 'broker.example/log', size: 77, root }, g.signer);
    const [o, size, r, , sigLine] = note.split('\n') as [string, string, string, string, string];
    const b64 = sigLine.split(' ')[2]!;
    const sig = fromBase64(b64);
    const swap = (i: number) => {
      const s = sig.slice();
      s[i]! ^= 0x80;
      return note.replace(b64, toBase64(s));
    };
    expect(await code(verifyCheckpoint(note.replace(o, 'broker.example/log2'), g.vkey))).toBe(
      'bad-signature',
    );
    expect(await code(verifyCheckpoint(note.replace(`\n${size}\n`, '\n78\n'), g.vkey))).toBe('bad-signature');
    const other = toBase64(root.map((x) => x ^ 1));
    expect(await code(verifyCheckpoint(note.replace(r, other), g.vkey))).toBe('bad-signature');
    expect(await code(verifyCheckpoint(note.replace(`${r}\n`, `${r}\nextra\n`), g.vkey))).toBe(
      'bad-signature',
    );
    expect(await code(verifyCheckpoint(swap(0), g.vkey))).toBe('unknown-key');
    expect(await code(verifyCheckpoint(swap(30), g.vkey))).toBe('bad-signature');
    expect(
      await code(verifyCheckpoint(note.replace(sigLine, `${sigLine.slice(0, -8)}AAAAAAA=`), g.vkey)),
    ).toBe('bad-signature');
  });

  it('refuses a correctly signed checkpoint of another origin, and malformed bodies', async () => {
    const g = await generateNoteSigner('broker.example/log');
    const foreign = await signCheckpoint({ origin: 'other.example/log', size: 1, root }, g.signer);
    expect(await code(verifyCheckpoint(foreign, g.vkey))).toBe('bad-checkpoint');
    expect((await verifyCheckpoint(foreign, g.vkey, { origin: 'other.example/log' })).size).toBe(1);
    for (const text of [
      `broker.example/log\n01\n${toBase64(root)}\n`,
      `broker.example/log\n-1\n${toBase64(root)}\n`,
      `broker.example/log\n1\n${toBase64(root.slice(1))}\n`,
      `broker.example/log\n1\n`,
      `\n1\n${toBase64(root)}\n`,
    ]) {
      const note = await signNote(text, [g.signer]);
      expect(await code(verifyCheckpoint(note, g.vkey)), JSON.stringify(text)).toBe('bad-checkpoint');
    }
  });
});
